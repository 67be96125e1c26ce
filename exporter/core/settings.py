"""The configuration as frozen dataclasses, and the values every layer shares about it.

What config.py builds from a file and everything else reads: accounts, their auth, their
collectors' schedules, secrets that refuse to show themselves. Apart from the checker so
that the poller, the client, the web layer and the simulator import the shapes they use
without the YAML loader and the 300 lines of parsers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from .endpoints import DEFAULT_COLLECTORS, ENDPOINTS
from .schema import show_value

DEFAULT_ENDPOINT = "https://intl.myhuaweicloud-koodrive.com"
STALE_INTERVALS = 3
# Polls in flight at once over all accounts (top-level `max_concurrency`), and its bound.
DEFAULT_MAX_CONCURRENCY = 64
MAX_CONCURRENCY = 4096
DEFAULT_PAGE_SIZE = 100
# The upstream's own maximum is undocumented; a page of a thousand tiers is already absurd.
# At least 10 a page, so that the client's 100 pages reach the 1,000 tiers it reads.
MIN_PAGE = 10
MAX_PAGE = 1000
MAX_RETRIES = 10
X_DATE_WINDOW = 15 * 60

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HINT = "use e.g. 500ms, 30s, 5m, 1h"


class ConfigError(Exception):
    """Raised with every problem found, each prefixed by its key path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class Secret:
    """A string that refuses to show itself in repr(), str() or f-strings.

    Only `reveal()` gives the value, which makes every place that handles the plain secret
    easy to find and keeps accidental logging of config objects harmless.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret comes from: inline (after `${ENV}` expansion) or a file.

    Files are named, not read, here: the credentials module re-reads them when they change,
    so a rotated Kubernetes secret takes effect without a restart.
    """

    key: str
    value: Secret | None = None
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class AppAuth:
    app_id: str
    secret: SecretRef


@dataclass(frozen=True, slots=True)
class TokenAuth:
    token: SecretRef


Auth = AppAuth | TokenAuth


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """One collector of an account: the endpoint it polls (by name), how often, and for
    how long its last result may be shown."""

    name: str
    interval: float
    stale_after: float


# A collector as the config names it: its name, and its own interval and stale_after if set.
CollectorSpec = tuple[str, float | None, float | None]


def collector_config(
    spec: CollectorSpec, account_interval: float, account_stale_after: float
) -> CollectorConfig:
    """Resolve a collector's schedule against its account's.

    Without its own interval a collector polls at its endpoint's default interval, or the
    account's if that is longer (or the endpoint has none). Its data stays as long as the
    account's does; one polled less often than the account keeps it for at least
    STALE_INTERVALS of its own intervals, so slow data is not shown as missing between polls.
    """
    name, interval, stale_after = spec
    default = ENDPOINTS[name].interval
    every = interval or max(account_interval, default or 0.0)
    if stale_after is None:
        stale_after = account_stale_after
        if every > account_interval:
            stale_after = max(stale_after, STALE_INTERVALS * every)
    return CollectorConfig(name, every, stale_after)


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    user_id: str
    auth: Auth
    endpoint: str = DEFAULT_ENDPOINT
    interval: float = 60.0
    timeout: float = 10.0
    language: str = "en-US"
    kilobyte: int = 1024
    retries: int = 2
    backoff: float = 1.0
    x_date_margin: float = 2.0
    stale_after: float = 0.0  # 0: three intervals
    # Upstream TLS: verification is always on unless insecure_skip_verify is set explicitly.
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    # What to poll; empty means the default collectors at the account's interval.
    collectors: tuple[CollectorConfig, ...] = ()
    # Items asked for per page of a paged endpoint (`limit`).
    page_size: int = DEFAULT_PAGE_SIZE

    def __post_init__(self) -> None:
        if not self.collectors:
            stale_after = self.stale_after_seconds
            defaults = tuple(
                collector_config((name, None, None), self.interval, stale_after)
                for name in DEFAULT_COLLECTORS
            )
            object.__setattr__(self, "collectors", defaults)

    @property
    def stale_after_seconds(self) -> float:
        return self.stale_after or STALE_INTERVALS * self.interval


@dataclass(frozen=True, slots=True)
class Config:
    accounts: tuple[AccountConfig, ...]
    # Polls in flight at once, over all accounts (top-level key `max_concurrency`).
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    source: str = field(default="<memory>", compare=False)


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `30s`, `5m`, `1h`, `1m30s` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise ValueError("must be a duration such as 30s, 5m or 1h") from None
    if not isinstance(value, str):
        raise ValueError("must be a duration such as 30s, 5m or 1h")
    text = value.strip()
    sign = 1.0
    if text.startswith("-"):
        sign, text = -1.0, text[1:]
    try:
        return sign * float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {show_value(value)}: {DURATION_HINT}")
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
