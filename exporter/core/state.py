"""What the poller has learned so far: the shared memory between polling and scraping.

The poller writes what polls learn and, on a reload, the account list; the server writes the
reload's outcome; the exposition only reads. All run on the one event loop, and snapshots
are immutable, so a scrape never sees an account half-updated. Data flows one
way: the state does not call the exposition, it counts changes (`version`) and notes whose
polls landed (`landed`), and the exposition looks when it renders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .model import PRIMARY, DurationHistogram, Reason, Snapshot

if TYPE_CHECKING:
    from .settings import AccountConfig


@dataclass(slots=True)
class CollectorState:
    """The last outcome, and the last success, of one collector of one account; its rows
    leave the body once the last success is older than `stale_after`."""

    stale_after: float
    last: Snapshot | None = None
    last_success: Snapshot | None = None
    errors: dict[Reason, int] = field(default_factory=dict)
    # When the current run of failures began (its first failed poll started); None while
    # the last poll succeeded.
    failing_since: float | None = None


@dataclass(slots=True)
class AccountState:
    """One account as configured, and what each of its collectors has learned.

    `collectors` follows the config's list, in its order; a collector that stays across a
    reload keeps its state (the same object, shared by the old list and the new).
    """

    config: AccountConfig
    collectors: dict[str, CollectorState]

    @property
    def polled(self) -> bool:
        """Whether any collector has finished a poll (the exposition skips accounts that
        have not). Derived, not stored: a poll landing while a new list is being built
        lands in a collector state both lists share, and shows in both."""
        return any(collector.last is not None for collector in self.collectors.values())


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """Replaced, never changed: a body built from one knows whether it is still current."""

    successful: bool = True
    last_success: float = 0.0


class ExporterState:
    """The account list, per-collector outcomes, the poll-duration histogram, reload status.

    The one owner of the account list: the poller starts and stops its loops from it and
    the exposition renders from it, so neither keeps a copy that could drift.
    """

    def __init__(self, accounts: Iterable[AccountConfig], loaded_at: float = 0.0) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.poll_duration = DurationHistogram()
        self.reload = ReloadStatus(last_success=loaded_at)
        self._ever_ready = False
        # Bumped by every change; and the accounts whose polls landed since the exposition
        # last took them (take_landed), whose lines it renders anew.
        self.version = 0
        self.landed: set[str] = set()
        self.set_accounts(accounts)

    def set_accounts(self, accounts: Iterable[AccountConfig]) -> None:
        for _ in self.adopt(accounts):
            pass

    def adopt(self, accounts: Iterable[AccountConfig], step: int = 1000) -> Iterator[None]:
        """Adopt a new account list in steps of `step` accounts, for a caller that yields
        to the loop between them (10,000 accounts take ~20 ms); the list changes at once,
        after the last step. Keep what is known of the collectors that stay (the last
        values of a changed account remain until its new config has polled), drop the rest.
        """
        fresh: dict[str, AccountState] = {}
        for index, account in enumerate(accounts, 1):
            known = self.accounts.get(account.name)
            if known is not None and known.config is account:  # unchanged: kept as it is
                fresh[account.name] = known
            else:
                before = known.collectors if known is not None else {}
                collectors: dict[str, CollectorState] = {}
                for collector in account.collectors:
                    state = before.get(collector.name) or CollectorState(collector.stale_after)
                    state.stale_after = collector.stale_after
                    collectors[collector.name] = state
                fresh[account.name] = AccountState(account, collectors)
            if index % step == 0:
                yield
        self.accounts = fresh  # a new dict: the exposition lays the body out anew
        self.version += 1

    def record(self, snapshot: Snapshot) -> None:
        account = self.accounts.get(snapshot.account)
        # None when the account, or this collector of it, was removed while the poll ran.
        state = account.collectors.get(snapshot.collector) if account is not None else None
        if state is None:
            return
        state.last = snapshot
        if snapshot.reason is None:
            state.last_success = snapshot
            state.failing_since = None
        elif state.failing_since is None:
            state.failing_since = snapshot.started_at
        for reason in snapshot.failures:
            state.errors[reason] = state.errors.get(reason, 0) + 1
        if snapshot.collector == PRIMARY:  # the histogram has always timed the overview
            self.poll_duration.observe(snapshot.duration)
        self.version += 1
        self.landed.add(snapshot.account)

    def take_landed(self) -> set[str]:
        landed, self.landed = self.landed, set()
        return landed

    def reloaded(self, successful: bool, at: float) -> None:
        last = at if successful else self.reload.last_success
        self.reload = ReloadStatus(successful, last)
        self.version += 1

    @property
    def ready(self) -> bool:
        """True once every collector of every account has finished its first poll,
        successful or not.

        It stays true afterwards: an account added by a reload must not take a serving
        replica out of its Service while that account's first poll runs.
        """
        if not self._ever_ready:
            self._ever_ready = self.waiting() == 0
        return self._ever_ready

    def waiting(self) -> int:
        """Accounts with a collector that has not finished its first poll."""
        return sum(
            1
            for account in self.accounts.values()
            if any(collector.last is None for collector in account.collectors.values())
        )
