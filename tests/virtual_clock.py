"""Virtual time for scheduler tests: an event loop whose clock jumps to the next timer.

Two designs were weighed. A `Clock` object injected into the poller (monotonic, wall,
sleep, timeout) would make the poller's own waits virtual, but not those of what it awaits:
the scripted upstream (support.FakeSource) stamps calls with `loop.time()` and simulates
slow and hung requests with `asyncio.sleep`, and the poller bounds requests with
`asyncio.timeout` and a semaphore, which all run on the loop's clock. Mixing a virtual
clock with the loop's real one gives tests that are neither exact nor fast. So the clock
that is replaced is the event loop's: production keeps plain `loop.time()`,
`asyncio.sleep` and `asyncio.timeout`, and only the readings that are not the loop's
(a poll's duration and wall-clock timestamp) are injected into the poller.

`VirtualTimeLoop` is a selector loop whose `time()` is a number it owns. When every task
is waiting and the loop would block until its next timer, the selector does not sleep:
it moves the clock to exactly that timer's due time and returns. Real I/O (the loop's own
self-pipe) is still polled without blocking at each step, and when nothing at all is
scheduled the loop blocks for real, so a thread handing work back still wakes it. Time does
not pass while callbacks run, so a test sees the schedule the code asked for, to the bit.

Not for code that waits on threads or sockets (`asyncio.to_thread`, DNS, real servers):
virtual time would leap ahead while the real work is still under way.

Tests use it through `on_virtual_time`, which turns an async test into a sync one that runs
on a fresh `VirtualTimeLoop`. A decorator rather than a loop-factory hook because the hook
pytest-asyncio offers must live in conftest.py, and only these tests want virtual time;
as a consequence a virtual test may use sync fixtures only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import selectors
from collections.abc import Awaitable, Callable
from typing import ParamSpec

P = ParamSpec("P")


class _ClockSkippingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that, instead of blocking until the next timer, tells its loop to jump."""

    def __init__(self, jump: Callable[[float], None]) -> None:
        super().__init__()
        self._jump = jump

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only a thread or real I/O can wake the loop
            return super().select(None)
        self._jump(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, starting at `start` (seconds)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(selector=_ClockSkippingSelector(self._jump))

    def time(self) -> float:
        return self._now

    def _jump(self, timeout: float) -> None:
        """Land exactly on the due timer: `now + (when - now)` may miss `when` by an ulp,
        and a timer that is not yet due would cost a second, futile turn of the loop."""
        target = self._now + timeout
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled and scheduled[0].when() <= target + 1e-9:
            target = scheduled[0].when()
        self._now = max(self._now, target)


def on_virtual_time(test: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test to completion on a new `VirtualTimeLoop`.

    The wrapper is a plain function, so pytest-asyncio leaves it alone; it keeps the test's
    name, marks and signature, so parametrize and (sync) fixtures work as before.
    """

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        async def main() -> None:
            await test(*args, **kwargs)

        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(main())

    run.__signature__ = inspect.signature(test)  # type: ignore[attr-defined]
    return run
