"""The real Poller and KooDriveClient against the real Simulator, when things turn hostile.

An upstream sending absurd `Date`s or `Retry-After`s, or JSON with duplicate keys, and an
operator's file system handing over a FIFO or /dev/zero as a secret: each must cost at most
the poll it happened in, never wedge an account or the event loop, and heal by itself.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import itertools
import os
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
import trustme
from support import APP_ID, APP_SECRET, TOKEN, LogCapture, polls

from exporter.core.files import SECRET_FILE_LIMIT
from exporter.core.model import Reason, Snapshot
from exporter.core.poller import Poller
from exporter.core.settings import AccountConfig, AppAuth, Config, SecretRef, TokenAuth
from exporter.core.state import ExporterState
from exporter.sim.simulator import Fault, FaultKind, Simulator, start_simulator
from exporter.upstream.client import KooDriveClient
from exporter.upstream.credentials import CredentialStore

INTERVAL = 0.2
SANE_SKEW = 5.0  # loopback: the simulator shares our clock


class StoreClock:
    """Monotonic time that a test can move on, so the once-a-second re-stat comes at once."""

    def __init__(self) -> None:
        self.extra = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.extra

    def skip(self) -> None:
        self.extra += 10.0


def accounts(directory: Path, endpoint: str, **settings: object) -> tuple[AccountConfig, ...]:
    """acme signs with an AppSecret from a file, beta sends a token from a file."""
    directory.mkdir(exist_ok=True)
    (directory / "acme.secret").write_text(APP_SECRET + "\n", encoding="utf-8")
    (directory / "beta.token").write_text(TOKEN + "\n", encoding="utf-8")
    common: dict[str, object] = {
        "endpoint": endpoint,
        "interval": INTERVAL,
        "timeout": INTERVAL,
        "retries": 0,
        "language": "en-US",
    } | settings
    acme = AppAuth(
        app_id=APP_ID, secret=SecretRef("app_secret_file", path=directory / "acme.secret")
    )
    beta = TokenAuth(token=SecretRef("token_file", path=directory / "beta.token"))
    return (
        AccountConfig(name="acme", user_id="1505084218764547200", auth=acme, **common),  # type: ignore[arg-type]
        AccountConfig(name="beta", user_id="1505084218764547201", auth=beta, **common),  # type: ignore[arg-type]
    )


@dataclass
class Rig:
    simulator: Simulator
    url: str
    accounts: tuple[AccountConfig, ...]
    store: CredentialStore
    store_clock: StoreClock
    client: KooDriveClient
    poller: Poller
    state: ExporterState
    logs: LogCapture
    directory: Path

    def account(self, name: str) -> AccountConfig:
        return next(a for a in self.accounts if a.name == name)

    async def poll(self, name: str) -> Snapshot:
        return await self.poller.poll_once(self.account(name))

    def x_dates(self, name: str) -> list[float]:
        return [
            calendar.timegm(time.strptime(seen.x_date, "%Y%m%dT%H%M%SZ"))
            for seen in self.simulator.seen
            if seen.account == name
        ]


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    server_tls: ssl.SSLContext | None = None,
    retry_after_cap: float = 600.0,
    **settings: object,
) -> AsyncIterator[Rig]:
    simulator = Simulator(Config(accounts=accounts(tmp_path / "sim", "http://127.0.0.1:1")))
    runner, url = await start_simulator(simulator, ssl_context=server_tls)
    configured = accounts(tmp_path / "exporter", url, **settings)
    logs = LogCapture()
    store_clock = StoreClock()
    store = CredentialStore(clock=store_clock)
    state = ExporterState(configured)
    try:
        async with aiohttp.ClientSession() as session:
            client = KooDriveClient(session, store, rng=random.Random(1))
            poller = Poller(
                client, state, logs.log, rng=random.Random(2), startup_window=0.01,
                retry_after_cap=retry_after_cap,
            )  # fmt: skip
            try:
                yield Rig(
                    simulator, url, configured, store, store_clock, client, poller, state,
                    logs, tmp_path / "exporter",
                )  # fmt: skip
            finally:
                await poller.stop()
    finally:
        await runner.cleanup()


async def until(predicate, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def now_with_zone(zone: str) -> str:
    return formatdate(time.time(), usegmt=True).replace(" GMT", f" {zone}")


BAD_DATES = {
    "year 9999": lambda: "Fri, 31 Dec 9999 23:59:59 GMT",
    "1970": lambda: "Thu, 01 Jan 1970 00:00:00 GMT",
    "year 9999 at -2359": lambda: "Fri, 31 Dec 9999 23:59:59 -2359",
    "now at -2359": lambda: now_with_zone("-2359"),
    "now at +0000": lambda: now_with_zone("+0000"),
}


@pytest.mark.parametrize("bad_date", BAD_DATES.values(), ids=BAD_DATES.keys())
async def test_a_bad_date_never_wedges_an_account(tmp_path: Path, bad_date) -> None:
    async with rig(tmp_path) as r:
        assert (await r.poll("acme")).ok
        bad = bad_date()
        r.simulator.set_fault("acme", Fault(FaultKind.DATE, date=bad))
        during = [await r.poll("acme") for _ in range(3)]
        r.simulator.set_fault("acme", None)
        after = await r.poll("acme")

        assert [s.reason for s in during] == [None] * 3  # the answers themselves were fine
        assert after.ok, after.detail
        for snapshot in [*during, after]:  # what koodrive_clock_skew_seconds publishes
            assert snapshot.clock_skew is not None
            assert abs(snapshot.clock_skew) < SANE_SKEW, snapshot.clock_skew
        now = time.time()
        assert all(now - 60 <= x <= now + 1 for x in r.x_dates("acme")), r.x_dates("acme")
        assert len(r.x_dates("acme")) == 5
        (warning,) = r.logs.events("server_date_ignored")  # once for the run of three
        assert (warning["account"], warning["level"]) == ("acme", "warning")
        assert warning["date"] == bad
        assert polls(r.state, "beta").errors == {}


async def test_a_bad_date_on_a_rejection_does_not_wedge_either(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.simulator.set_fault(
            "acme", Fault(FaultKind.WRONG_SIGNATURE, date="Fri, 31 Dec 9999 23:59:59 -2359")
        )
        failed = [await r.poll("acme") for _ in range(2)]
        assert [s.reason for s in failed] == [Reason.AUTH, Reason.AUTH]
        r.simulator.set_fault("acme", None)
        after = await r.poll("acme")
        assert after.ok, after.detail
        assert after.clock_skew is not None
        assert abs(after.clock_skew) < SANE_SKEW


HOSTILE_RETRY_AFTER = {
    "20 nines": "99999999999999999999",
    "400 nines": "9" * 400,
    "year 9999": "Fri, 31 Dec 9999 23:59:59 GMT",
}


@pytest.mark.parametrize("value", HOSTILE_RETRY_AFTER.values(), ids=HOSTILE_RETRY_AFTER.keys())
async def test_a_huge_retry_after_defers_the_next_poll_only_up_to_the_cap(
    tmp_path: Path, value: str
) -> None:
    cap = 0.5
    async with rig(tmp_path, retry_after_cap=cap) as r:
        r.simulator.set_fault("acme", Fault(FaultKind.RATE_LIMIT, retry_after=value))
        r.poller.start()
        await until(lambda: r.simulator.outcomes["fault:rate_limit"] >= 3, timeout=3)
        await r.poller.stop()
        times = [s.server_time for s in r.simulator.seen if s.account == "acme"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Never before the cap; after it, only as late as a busy machine makes a timer (a
        # deferral that was not capped would be a day).
        assert all(cap - 0.02 <= gap <= cap + 2.5 for gap in gaps), gaps
        deferred = r.logs.events("poll_deferred")
        assert len(deferred) == len(times)  # one warning per deferral
        assert {(e["account"], e["applied_s"], e["capped"], e["level"]) for e in deferred} == {
            ("acme", cap, True, "warning")
        }
        assert {e["retry_after_s"] for e in deferred} == {86400.0}
        assert polls(r.state, "acme").last.reason is Reason.RATE_LIMITED
        assert polls(r.state, "beta").last.ok


@pytest.mark.parametrize("value", ["-5", "soon", "1.5", "-99999999999999999999", ""])
async def test_a_meaningless_retry_after_keeps_the_interval(tmp_path: Path, value: str) -> None:
    async with rig(tmp_path, retry_after_cap=5.0) as r:
        r.simulator.set_fault("acme", Fault(FaultKind.RATE_LIMIT, retry_after=value))
        r.poller.start()
        await until(lambda: r.simulator.outcomes["fault:rate_limit"] >= 3, timeout=2)
        assert r.logs.events("poll_deferred") == []
        assert polls(r.state, "acme").last.retry_after is None


async def test_duplicate_keys_are_an_invalid_response(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.simulator.set_fault("acme", Fault(FaultKind.DUPLICATE_KEYS))
        snapshot = await r.poll("acme")
        assert (snapshot.reason, snapshot.result) == (Reason.INVALID_RESPONSE, None)
        assert snapshot.detail == "body is refused: duplicate key 'code'"
        r.simulator.set_fault("acme", None)
        assert (await r.poll("acme")).ok


@pytest.fixture
def upstream_pki() -> tuple[ssl.SSLContext, trustme.CA, trustme.CA]:
    """A server context with a certificate of `real`; `other` is a CA that did not sign it."""
    real, other = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    real.issue_cert("127.0.0.1").configure_cert(context)
    return context, real, other


async def test_a_rotated_ca_file_is_picked_up_without_restart(tmp_path: Path, upstream_pki):
    context, real, other = upstream_pki
    ca_file = tmp_path / "upstream-ca.pem"
    other.cert_pem.write_to_path(str(ca_file))  # the wrong CA: as before a rotation
    async with rig(tmp_path, server_tls=context, ca_file=ca_file) as r:
        assert r.url.startswith("https://")
        assert (await r.poll("acme")).reason is Reason.TLS
        staged = tmp_path / "upstream-ca.pem.new"
        real.cert_pem.write_to_path(str(staged))
        staged.replace(ca_file)  # an atomic rotation, as kubelet does it
        r.store_clock.skip()
        after = await r.poll("acme")
        assert after.ok, after.detail
        assert (await r.poll("beta")).ok

        ca_file.write_text("not a certificate\n")  # a broken rotation: a clear TLS error
        r.store_clock.skip()
        broken = await r.poll("acme")
        assert broken.reason is Reason.TLS
        assert f"ca_file {ca_file}" in broken.detail
        assert "no PEM certificate" in broken.detail


async def test_a_removed_account_leaves_nothing_cached(tmp_path: Path, upstream_pki) -> None:
    context, real, _ = upstream_pki
    ca_file = tmp_path / "upstream-ca.pem"
    real.cert_pem.write_to_path(str(ca_file))
    async with rig(tmp_path, server_tls=context, ca_file=ca_file) as r:
        assert (await r.poll("acme")).ok
        assert (await r.poll("beta")).ok
        assert APP_SECRET in cached_strings(r.store)
        acme, beta = r.accounts
        beta_moved = replace(beta, ca_file=None, insecure_skip_verify=True)
        assert await r.poller.update([beta_moved]) == (0, 1, 1)
        cached = cached_strings(r.store)
        assert APP_SECRET not in cached  # the removed account's secret is gone
        assert TOKEN not in cached  # beta changed: re-read on its next poll
        assert cached_objects(r.store, ssl.SSLContext) == []  # nobody uses the ca_file now
        assert all(key[0] != "acme" for key in r.client._skews)
        assert r.client.clock_skew(acme) is None


def cached_objects(store: CredentialStore, kind: type) -> list[object]:
    """Every value of `kind` the store holds, wherever it keeps them."""
    found: list[object] = []
    for attribute in vars(store).values():
        if isinstance(attribute, dict):
            for entry in attribute.values():
                value = getattr(entry, "value", entry)
                if isinstance(value, kind):
                    found.append(value)
    return found


def cached_strings(store: CredentialStore) -> list[object]:
    return cached_objects(store, str)


class Ticker:
    """An asyncio task that notes the longest the event loop left it waiting."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        for _ in range(10_000):  # bounded: 10,000 x 10 ms is far beyond any test here
            await asyncio.sleep(0.01)
            now = loop.time()
            self.longest = max(self.longest, now - last)
            self.ticks += 1
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


@contextlib.contextmanager
def fifo_unblocker(path: Path) -> Iterator[None]:
    """Opens the FIFO for writing now and then, so a reader stuck on it sees EOF.

    Only a blocking reader (a bug) needs this; it bounds that bug to a failed assertion
    instead of a hung test run.
    """
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading, all is well
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def make_fifo(path: Path) -> str:
    path.unlink()
    os.mkfifo(path)
    return "is a FIFO, not a regular file"


def make_dev_zero(path: Path) -> str:
    path.unlink()
    path.symlink_to("/dev/zero")
    return "is a character device, not a regular file"


def make_directory(path: Path) -> str:
    path.unlink()
    path.mkdir()
    return "is a directory, not a regular file"


def make_oversized(path: Path) -> str:
    path.write_bytes(b"x" * (SECRET_FILE_LIMIT + 1))
    return "is larger than 64 KiB"


SPECIAL_FILES = {
    "FIFO": make_fifo,
    "/dev/zero": make_dev_zero,
    "directory": make_directory,
    "over 64 KiB": make_oversized,
}


@pytest.mark.parametrize("make", SPECIAL_FILES.values(), ids=SPECIAL_FILES.keys())
async def test_a_secret_that_is_no_regular_file_is_an_auth_error_off_the_loop(
    tmp_path: Path, make
) -> None:
    async with rig(tmp_path) as r:
        secret = r.directory / "acme.secret"
        r.poller.start()
        await until(
            lambda: all(
                polls(r.state, n).last is not None and polls(r.state, n).last.ok
                for n in r.state.accounts
            )
        )
        with Ticker() as ticker, fifo_unblocker(secret):
            why = make(secret)
            r.store_clock.skip()
            beta_before = len([s for s in r.simulator.accepted if s.account == "beta"])
            await until(lambda: polls(r.state, "acme").last.reason is Reason.AUTH, timeout=4)
            await asyncio.sleep(3 * INTERVAL)  # a few more polls of both accounts
            acme = polls(r.state, "acme").last
            beta_after = len([s for s in r.simulator.accepted if s.account == "beta"])
        assert acme.reason is Reason.AUTH
        assert acme.detail == f"cannot read app_secret_file {secret}: {why}"
        assert APP_SECRET not in r.logs.text
        assert beta_after >= beta_before + 2  # the other account kept polling
        assert polls(r.state, "beta").last.ok
        assert ticker.longest < 0.25, f"the event loop was blocked for {ticker.longest:.2f}s"
        assert ticker.ticks >= 20

        if secret.is_dir():
            secret.rmdir()
        else:
            secret.unlink()
        secret.write_text(APP_SECRET + "\n", encoding="utf-8")
        await until(lambda: polls(r.state, "acme").last.ok, timeout=3)  # heals by itself


async def test_secret_files_are_touched_off_the_loop_and_at_most_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, _ = accounts(tmp_path, "http://127.0.0.1:1")
    clock = StoreClock()
    store = CredentialStore(clock=clock)
    touched: list[str] = []
    real_open, real_stat = os.open, os.stat

    def spy_open(path, *args, **kwargs):
        touched.append(threading.current_thread().name)
        return real_open(path, *args, **kwargs)

    def spy_stat(path, *args, **kwargs):
        touched.append(threading.current_thread().name)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "stat", spy_stat)
    assert (await store.resolve(acme)).app_secret == APP_SECRET  # type: ignore[union-attr]
    assert len(touched) == 2  # a stat for its identity, then the read
    secret = tmp_path / "acme.secret"
    staged = tmp_path / "acme.secret.new"
    staged.write_text("rotated\n", encoding="utf-8")
    staged.replace(secret)
    for _ in range(100):  # served from memory within the second
        assert (await store.resolve(acme)).app_secret == APP_SECRET  # type: ignore[union-attr]
    assert len(touched) == 2
    clock.skip()
    assert (await store.resolve(acme)).app_secret == "rotated"  # type: ignore[union-attr]
    assert len(touched) == 4  # a stat that saw the change, then the read
    assert await store.refresh_async(acme) is False  # forced re-read: unchanged
    assert len(touched) == 6
    main = threading.main_thread().name
    assert main not in touched, touched
