"""Process signals, handled by one set of handlers from the first moment to the last.

asyncio's `loop.add_signal_handler` is not used: `asyncio.run` removes such handlers on its
way out and so restores SIG_DFL, and before the loop runs nothing is installed at all; a
SIGTERM in either window killed the process by signal instead of a clean exit 0. These
handlers stay installed for the life of the process. Before the event loop runs, SIGTERM
and SIGINT end the process with status 0 (nothing is running that needs a graceful stop);
while it runs, they set its stop event and SIGHUP asks for a reload. Once shutdown has
begun they are ignored outright (SIG_IGN): Python resets its own handlers to SIG_DFL while
the interpreter finalizes, so a second SIGTERM during the last milliseconds would still
kill the process by signal if it were merely recorded.

An early stop ends the process with `os._exit`, not by raising SystemExit: an exception
raised by a signal handler appears wherever the main thread happens to be, and inside a
finalizer or a weakref callback (the garbage collector runs them at any time during the
imports) it is printed and swallowed, which left a process that had already ignored further
stop signals running on. Nothing needs cleaning up that early; the output written so far is
flushed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType


class Signals:
    """The process's SIGTERM, SIGINT and SIGHUP handlers; `attach` hands them to a loop."""

    __slots__ = ("_loop", "_reload", "_stop", "serving", "stopping")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._reload: Callable[[], None] | None = None
        self.stopping = False
        # False for one-shot commands (--config.check): a check cut short must not report
        # success, so a signal then exits 128 + its number, as the shell would show it.
        self.serving = True

    def install(self) -> Signals:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        return self

    def attach(self, stop: asyncio.Event, reload: Callable[[], None] | None = None) -> None:
        """Route signals to the running loop: stop sets `stop`, SIGHUP calls `reload`."""
        self._loop = asyncio.get_running_loop()
        self._stop, self._reload = stop, reload

    def ignore_from_now(self) -> None:
        """The process is on its way out: further stop signals must not cut it short."""
        self.stopping = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.ignore_from_now()
        if not self.serving:
            _exit_now(128 + signum)
        if self._loop is None or self._stop is None or self._loop.is_closed():
            _exit_now(0)  # start-up: nothing to stop gracefully yet
        self._loop.call_soon_threadsafe(self._stop.set)

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        loop, reload = self._loop, self._reload
        if self.stopping or loop is None or reload is None or loop.is_closed():
            return  # a reload before the config is loaded, or after, has nothing to do
        loop.call_soon_threadsafe(reload)


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a write in progress makes flush reentrant
            stream.flush()
    os._exit(status)
