"""What keeps the garbage collector and the GIL from stopping the event loop: the freeze of
long-lived objects, and a reload's reading of the config in a worker thread.

Both exist for measured stalls at 10,000 accounts (the figures are in the docstrings, from
bench/gc_pauses.py and bench/live.py's phases), and both use only the documented APIs of
gc and sys: no slicing of the engine's own work helps against a full collection or a
thread that holds the GIL, since either stops the loop whatever it is doing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sys
import time

from ..core.config import load_config
from ..core.settings import Config

# See keep_frozen.
REFREEZE_EVERY = 1.0
FULL_COLLECTION_EVERY = 3600.0
# The GIL's switch interval while a reload reads the config in a worker thread (see
# read_config).
RELOAD_SWITCH_INTERVAL = 0.0005


def read_config(path: str, frozen: bool, current: Config) -> Config:
    """load_config, for a reload in a worker thread, keeping the current objects of the
    accounts that did not change.

    A reload's cost on the loop is what it allocates and frees there. Accounts that did not
    change keep their current config objects, so the poller, the state and the exposition
    see the same object and keep what they built for it; the duplicates parsed here are
    released one at a time (a release in one piece is one long deallocation holding the GIL,
    and the loop with it, ~10 ms for 10,000 accounts). And a 10,000-account file makes
    ~100,000 objects, over which the collector ran full collections in this thread: 50-220
    ms each with the GIL held (1.2 s to load, the loop stalled up to 221 ms). In a process
    that keeps its collector view frozen (keep_frozen) the collector is paused while the
    file is read and what it made frozen at once, as the next re-freeze would have; garbage
    cycles the reading left are then frozen too, until the hourly full collection.

    Reading is pure Python beside the loop: each time the loop lets go of the GIL for a
    system call, several a turn, it waits a whole switch interval (5 ms by default) to get
    it back, which kept a probe waiting 25-45 ms over a 10,000-account reload (bench/live.py
    phases). A switch interval of RELOAD_SWITCH_INTERVAL while the reading runs hands it
    back ten times sooner."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
    if frozen:
        gc.disable()
    try:
        config = load_config(path)
        known = {account.name: account for account in current.accounts}
        parsed = list(config.accounts)
        accounts = tuple(known.get(a.name, a) if known.get(a.name) == a else a for a in parsed)
        config = dataclasses.replace(config, accounts=accounts)
        while parsed:
            parsed.pop()
        if frozen:
            gc.freeze()
        return config
    finally:
        sys.setswitchinterval(switch)
        if frozen:
            gc.enable()


def freeze() -> None:
    """Collect once, then freeze what survived: before the first poll, nothing of it is
    garbage yet."""
    gc.collect()
    gc.freeze()


async def keep_frozen(
    refreeze: float = REFREEZE_EVERY, full: float = FULL_COLLECTION_EVERY
) -> None:
    """Keep what lives long out of the garbage collector's view, so that no collection has
    to walk it with the loop stopped.

    At 10,000 accounts a full collection walks ~180,000 objects (configs, states,
    snapshots, the heap): 87 ms with the loop stopped, about once a minute as snapshots
    replace snapshots (bench/gc_pauses.py, 20 s interval); no slicing of the engine's own
    work helps against it. So the server freezes what exists before the first poll, and every
    `refreeze` seconds the young generations are collected (a few ms: a second's worth of
    objects) and what survived is frozen too; with that, the longest pause was 2.7 ms.
    Acyclic garbage is still freed by reference counting, frozen or not. A cycle frozen
    while alive that dies later would never be collected, so every `full` seconds
    everything is unfrozen and collected once: one full collection an hour."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(refreeze)
        if not gc.isenabled():
            continue  # a reload is reading its file (read_config): its objects are not to be walked
        if time.monotonic() - last_full >= full:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        else:
            gc.collect(1)
        gc.freeze()
