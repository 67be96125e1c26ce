"""YAML configuration -> frozen dataclasses.

Every problem is collected and reported with its key path (`accounts[1].auth.token_file: ...`)
so an operator fixes a broken file in one round instead of one error per restart. Error
messages never echo a secret's value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import yaml

from .endpoints import DEFAULT_COLLECTORS, ENDPOINTS
from .files import read_regular_file, size_text
from .schema import (
    NOT_MAPPING,
    REQUIRED,
    Checker,
    Choice,
    Either,
    Invalid,
    Key,
    Section,
    cut,
    join,
    leaves,
    show_value,
)
from .schema import SHOWN_VALUE_LIMIT as SHOWN_VALUE_LIMIT  # re-exported for callers

_T = TypeVar("_T")
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
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION_HINT = "use e.g. 500ms, 30s, 5m, 1h"
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_NAME_LIMIT = 128
# A 10,000-account config is about 2 MB; anything near this is a mistake (or /dev/zero).
CONFIG_FILE_LIMIT = 64 * 1024 * 1024
# Tokens and app secrets are a few hundred bytes at most.
SECRET_FILE_LIMIT = 64 * 1024
# A full public CA bundle (Mozilla's, as shipped by certifi) is about 300 KB.
CA_FILE_LIMIT = 1024 * 1024
# The config nests five levels deep; the limit keeps the composer's recursion bounded.
MAX_YAML_DEPTH = 32
# Polling limits for the KooDrive API, which publishes no rate limit (docs/koodrive-api.md
# section 6): faster would flood a shared SaaS API (10 ms was 100 requests/s per
# account), slower than daily makes stale_after meaningless. Loopback endpoints (the
# simulator, test doubles) may go faster.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 24 * 3600.0
MIN_TIMEOUT = 0.1
_CONTROL = "control characters"
_POLL_LIMITS = (
    f"intervals may be {MIN_INTERVAL:g}s to {MAX_INTERVAL / 3600:g}h and timeouts "
    f"{MIN_TIMEOUT * 1000:g}ms to the interval (shorter only for a loopback endpoint, "
    "such as the simulator)"
)
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN ((?:TRUSTED |X509 )?CERTIFICATE)-----\r?\n.*?-----END \1-----", re.DOTALL
)


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


def read_secret_file(path: Path) -> str:
    """Read a secret file, through read_regular_file, so a FIFO or device cannot hang a poll."""
    return secret_text(read_regular_file(path, SECRET_FILE_LIMIT))


def secret_text(content: bytes) -> str:
    """A secret file's content as text, without the trailing newline editors and `echo` add."""
    return content.decode("utf-8").rstrip("\r\n")


def pem_certificates(data: bytes) -> str:
    """The PEM certificates in a CA bundle, for `cadata=`; ValueError if there are none.

    Only the certificate blocks are kept: bundles such as certifi's carry comments in UTF-8
    between them, which `cadata=` (ASCII only) would refuse.
    """
    blocks = [match.group(0) for match in _PEM_CERTIFICATE.finditer(data)]
    if not blocks:
        raise ValueError("no PEM certificate in it")
    try:
        return b"\n".join(blocks).decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("a certificate block holds non-ASCII bytes") from None


def load_ca_context(path: Path) -> ssl.SSLContext:
    """A client context trusting the CA bundle at `path`, read safely (see read_regular_file).

    OpenSSL given the path itself would block on a FIFO; given the bytes it cannot.
    """
    return ca_context(read_regular_file(path, CA_FILE_LIMIT))


def ca_context(bundle: bytes) -> ssl.SSLContext:
    """A verifying client context trusting exactly the PEM certificates in `bundle`."""
    return ssl.create_default_context(cadata=pem_certificates(bundle))


def read_or_refuse(file: Path, reader: Callable[[Path], _T], shown: str) -> _T:
    """What `reader` makes of a file named in a config; failures as Invalid naming the file
    (as `shown`), never showing its content."""
    try:
        return reader(file)
    except FileNotFoundError:
        raise Invalid(f"no such file: {shown}") from None
    except OSError as exc:
        raise Invalid(f"cannot read {shown}: {_os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise Invalid(f"cannot read {shown}: not UTF-8 text") from None
    except (ValueError, ssl.SSLError) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
        raise Invalid(f"not a PEM CA bundle: {shown} ({cut(str(reason))})") from None


def show_path(file: Path) -> str:
    """A file name from the config as an error message may quote it."""
    return cut(str(file), 200)


def read_config_file(file: Path, limit: int = CONFIG_FILE_LIMIT) -> str:
    """A config file's text, or a ConfigError that says why not."""
    try:
        data = read_regular_file(file, limit)
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {_os_reason(exc)}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: cannot read: not UTF-8 text (byte {exc.start})"]) from None


def load_yaml(text: str, source: str) -> object:
    """Parse YAML safely, with errors that point at the line; only ever raises ConfigError.

    Refused at parse time: duplicate keys, keys that are not strings, anchors and aliases
    (before anything expands, so alias bombs cost nothing), implicit dates (read as strings)
    and explicit tags beyond the plain JSON-like types.
    """
    if len(text) > CONFIG_FILE_LIMIT:
        raise ConfigError([f"{source}: is larger than {size_text(CONFIG_FILE_LIMIT)}"])
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader subclass
    except _Refused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{source}: {where}{exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {_yaml_reason(exc)}"]) from None
    except UnicodeError:
        raise ConfigError([f"{source}: invalid YAML: the text is not valid Unicode"]) from None
    except Exception as exc:  # a last resort: the loader must never raise anything else
        name = type(exc).__name__
        raise ConfigError([f"{source}: internal error while reading the YAML ({name})"]) from None


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    file = Path(path)
    text = read_config_file(file)
    return parse_config(
        text, source=str(file), env=os.environ if env is None else env, base_dir=file.parent
    )


def parse_config(
    text: str,
    *,
    source: str = "<memory>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    raw = load_yaml(text, source)
    checker = _Checker(env=os.environ if env is None else env, base_dir=base_dir or Path.cwd())
    try:
        values = checker.document(raw)
    except Exception as exc:
        # A last resort so that a reload never sees anything but ConfigError; the hostile
        # input tests check this message never appears.
        name = type(exc).__name__
        raise ConfigError(
            [f"{source}: internal error while checking the config ({name})"]
        ) from None
    if checker.errors or values is None:
        raise ConfigError(checker.errors)
    return Config(values["accounts"], values["max_concurrency"], source=source)


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
        raise ValueError(f"invalid duration {show_value(value)}: {_DURATION_HINT}")
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# libyaml's parser when PyYAML has it (it parses a 10,000-account file ~10x faster).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Tags whose values the config never uses; refusing them keeps the value types to
# str/int/float/bool/None/list/dict.
_UNSUPPORTED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("timestamp", "binary", "set", "omap", "pairs")
)


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this loader does not accept; reported as `line N, column M: why`."""


class _RefusingComposer(yaml.composer.Composer):
    """Composes nodes in Python (also over libyaml's events) to refuse anchors, aliases and
    deep nesting before a single node exists, so nothing can expand or recurse without end."""

    def __init__(self) -> None:
        # Explicitly: with the pure-Python loader, the next class in the MRO is not Composer.
        yaml.composer.Composer.__init__(self)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem=f"YAML aliases (*{cut(event.anchor)}) are not supported; "
                "use `defaults:` for settings shared by accounts",
                problem_mark=event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                problem=f"YAML anchors (&{cut(anchor)}) and aliases are not supported; "
                "use `defaults:` for settings shared by accounts",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(
                    problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                    problem_mark=event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _StrictLoader(_RefusingComposer, _SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader that also refuses duplicate and non-string keys, anchors and aliases,
    and reads dates as plain strings (the config has no date fields)."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
    }
    yaml_constructors: ClassVar[dict[str, Callable[..., Any]]] = {
        tag: constructor
        for tag, constructor in _SafeLoader.yaml_constructors.items()
        if tag not in _UNSUPPORTED_TAGS
    }

    def __init__(self, stream: str) -> None:
        _SafeLoader.__init__(self, stream)
        _RefusingComposer.__init__(self)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Any constructor failure (a 5,000-digit int, say) becomes an error with a line."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            raise _Refused(
                problem=f"cannot read this value ({type(exc).__name__})",
                problem_mark=node.start_mark,
            ) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[str, Any]:
    loader.flatten_mapping(node)
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = (
            loader.construct_object(key_node, deep=True)
            if isinstance(key_node, yaml.ScalarNode)
            else key_node
        )
        if not isinstance(key, str):
            kind = type(key).__name__ if isinstance(key_node, yaml.ScalarNode) else "a collection"
            raise _Refused(
                problem=f"mapping keys must be strings (got {kind}); quote the key",
                problem_mark=key_node.start_mark,
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {show_value(key)}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _construct_unsupported(loader: _StrictLoader, node: yaml.Node) -> None:
    raise _Refused(
        problem=f"unsupported YAML tag {show_value(node.tag)}: the config only takes strings, "
        "numbers, true/false, lists and mappings",
        problem_mark=node.start_mark,
    )


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor(None, _construct_unsupported)


class _Checker(Checker):
    """The config's parsers: `${ENV}` expansion, files relative to the config, and error
    messages that never show a value taken from the environment."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        super().__init__()
        self.env = env
        self.base_dir = base_dir
        self.good_ca_files: set[Path] = set()
        # key path -> the variables its value was expanded from; such values are never shown.
        self.from_env: dict[str, list[str]] = {}
        # The checked `defaults`, which accounts inherit; None when they are broken.
        self.inherited: dict[str, Any] | None = None

    def hidden(self, *paths: str) -> str | None:
        """The note that replaces values taken from the environment, if any of them was."""
        names = dict.fromkeys(name for path in paths for name in self.from_env.get(path, ()))
        if not names:
            return None
        return f"(value from {', '.join(f'${{{name}}}' for name in names)} not shown)"

    def show(self, path: str, value: object) -> str:
        """The value at `path` for an error message, unless it came from the environment."""
        return self.hidden(path) or show_value(value)

    def got(self, path: str, value: object) -> str:
        return self.hidden(path) or f"(got {show_value(value)})"

    def document(self, raw: object) -> dict[str, Any] | None:
        if raw is None:
            self.error("", "config is empty: it needs an `accounts` list")
            return None
        return self.walk(_CONFIG, "", raw)

    def defaults(self, path: str, raw: object) -> dict[str, Any] | None:
        """Checked on their own, so a bad default is reported once at `defaults.x` rather
        than once per inheriting account; null is no defaults, as is a broken shape."""
        if raw is None:
            return None
        if not self.mapping(NOT_MAPPING, path, raw):
            raw = {}
        self.inherited = self.walk(_DEFAULTS, path, raw)
        return self.inherited

    def accounts(self, path: str, raw: object) -> tuple[AccountConfig, ...]:
        if not isinstance(raw, list) or not raw:
            raise Invalid(_NO_ACCOUNTS)
        accounts: dict[str, AccountConfig] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(path, raw):
            account = self.account(where, item)
            if account is not None and account.name in seen:
                shown = self.show(f"{where}.name", account.name)
                also = seen[account.name]
                self.error(f"{where}.name", f"duplicate account name {shown} (also {also})")
            elif account is not None:
                seen[account.name] = where
                accounts[account.name] = account
        return tuple(accounts.values())

    def account(self, path: str, item: object) -> AccountConfig | None:
        """Built only when `defaults` are sound too (if not, that is reported already)."""
        values = self.walk(_ACCOUNT, path, item, inherited=self.inherited or {})
        if values is None or self.inherited is None or not self.schedule(path, item, values):
            return None
        collectors = self.collector_schedules(path, item, values)
        if collectors is None:
            return None
        return AccountConfig(**(values | {"collectors": collectors}))

    def schedule(self, path: str, item: dict[str, Any], merged: dict[str, Any]) -> bool:
        """Check interval, timeout and stale_after together, where the endpoint is known.

        Errors name where the value was set: the account, or `defaults` when inherited.
        """

        def origin(key: str) -> str:
            return f"{path}.{key}" if key in item else f"defaults.{key}"

        def refuse(key: str, value: float, sign: str, rule: str) -> bool:
            shown = f"({value:g}s {sign} {interval:g}s)"
            self.error(
                origin(key), f"{rule} {self.hidden(origin(key), origin('interval')) or shown}"
            )
            return False

        interval, timeout = merged["interval"], merged["timeout"]
        loopback = is_loopback_host(urlsplit(merged["endpoint"]).hostname or "")
        before = len(self.errors)
        for key, floor, least in (
            ("interval", MIN_INTERVAL, f"{MIN_INTERVAL:g}s"),
            ("timeout", MIN_TIMEOUT, f"{MIN_TIMEOUT * 1000:g}ms"),
        ):
            if merged[key] < floor and not loopback:
                got = self.hidden(origin(key)) or f"(got {merged[key]:g}s)"
                self.error(origin(key), f"must be at least {least} {got}: {_POLL_LIMITS}")
        if len(self.errors) != before:
            return False
        if timeout > interval:
            return refuse("timeout", timeout, ">", "must not exceed the interval")
        stale_after = merged.get("stale_after", interval)
        if stale_after < interval:
            return refuse("stale_after", stale_after, "<", "must be at least the interval")
        return True

    def endpoint(self, path: str, raw: object) -> str:
        text = self.string(path, raw)
        if not text.isprintable():
            raise Invalid("must not contain control characters")
        try:
            parts = urlsplit(text)
            hostname = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on an invalid port
        except ValueError:
            raise Invalid("is not a valid URL (check the host and the port)") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise Invalid(f"must be an http(s) URL such as {DEFAULT_ENDPOINT}")
        if parts.scheme == "http" and not is_loopback_host(hostname):
            raise Invalid("must use https:// (plain http is allowed only for loopback hosts)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise Invalid("must not contain credentials, a query or a fragment")
        return text.rstrip("/")

    def duration(
        self,
        path: str,
        raw: object,
        *,
        allow_zero: bool = False,
        below: float = math.inf,
        at_most: float = math.inf,
    ) -> float | None:
        """Seconds; null is unset (the inherited or built-in value applies)."""
        raw = self.expand(path, raw)
        if raw is None:
            return None
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            invalid = f"invalid duration {self.show(path, raw)}: {_DURATION_HINT}"
            raise Invalid(invalid if isinstance(raw, str) else str(exc)) from None
        low_ok = seconds >= 0 if allow_zero else seconds > 0
        if not (low_ok and seconds < below):
            kind = "non-negative" if allow_zero else "positive"
            bound = f" below {below:g}s" if below != math.inf else ""
            raise Invalid(f"must be a {kind} duration{bound} {self.got(path, raw)}")
        if seconds > at_most:
            raise Invalid(f"must be at most {at_most / 3600:g}h {self.got(path, raw)}")
        return seconds

    def ca_file(self, path: str, raw: object) -> Path:
        file = self.resolve(self.string(path, raw))
        if file not in self.good_ca_files:
            read_or_refuse(file, load_ca_context, self.hidden(path) or show_path(file))
            self.good_ca_files.add(file)
        return file

    def secret_file(self, path: str, raw: object) -> Path:
        """Read the file now, so a broken one fails the config check rather than every poll.

        Its content is never shown, only its name.
        """
        file = self.resolve(self.string(path, raw))
        shown = self.hidden(path) or show_path(file)
        if file.is_dir():
            raise Invalid(f"is a directory, not a file: {shown}")
        content = read_or_refuse(file, read_secret_file, shown)
        if not content:
            raise Invalid(f"file is empty: {shown}")
        if not content.isprintable():
            raise Invalid(f"contains {_CONTROL}: {shown}")
        return file

    def resolve(self, name: str) -> Path:
        """Relative paths are relative to the config file, as Prometheus does it."""
        file = Path(name)
        return file if file.is_absolute() else self.base_dir / file

    def boolean(self, path: str, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise Invalid(f"must be true or false (got {show_value(raw)})")
        return raw

    def number(self, path: str, raw: object) -> object:
        """`raw` after `${ENV}` expansion, a string of ASCII digits turned into an int."""
        value = self.expand(path, raw)
        if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
            return int(value.strip())
        return value

    def retries(self, path: str, raw: object) -> int:
        value = self.number(path, raw)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
            raise Invalid(f"must be a whole number from 0 to {MAX_RETRIES} {self.got(path, raw)}")
        return value

    def kilobyte(self, path: str, raw: object) -> int | None:
        value = self.number(path, raw)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value not in (1000, 1024):
            raise Invalid(f"must be 1024 or 1000 {self.got(path, raw)}")
        return value

    def page_size(self, path: str, raw: object) -> int:
        value = self.number(path, raw)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not MIN_PAGE <= value <= MAX_PAGE
        ):
            raise Invalid(
                f"must be a whole number from {MIN_PAGE} to {MAX_PAGE} {self.got(path, raw)}"
            )
        return value

    def collectors(self, path: str, raw: object) -> tuple[CollectorSpec, ...] | None:
        """A list of names, or a mapping of name to null or {interval, stale_after}; null is
        unset (the inherited or built-in list applies). An account's list replaces the one
        in `defaults`."""
        if raw is None:
            return None
        if isinstance(raw, list):
            names = [self.expand(f"{path}[{i}]", name) for i, name in enumerate(raw)]
            if not names or not all(isinstance(name, str) for name in names):
                raise Invalid(f"{_COLLECTORS} (got {show_value(raw)})")
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise Invalid(f"names {', '.join(map(str, repeated))} more than once")
            raw = dict.fromkeys(names)
        if not isinstance(raw, dict) or not raw:
            raise Invalid(f"{_COLLECTORS} (got {show_value(raw)})")
        specs: list[CollectorSpec] = []
        for name, settings in raw.items():
            where = join(path, name)
            if name not in ENDPOINTS:
                self.error(where, f"unknown collector (known: {', '.join(ENDPOINTS)})")
                continue
            values = self.walk(_COLLECTOR, where, {} if settings is None else settings)
            if values is not None:
                specs.append((name, values.get("interval"), values.get("stale_after")))
        if len(specs) != len(raw):
            raise Invalid
        return tuple(specs)

    def collector_schedules(
        self, path: str, item: dict[str, Any], merged: dict[str, Any]
    ) -> tuple[CollectorConfig, ...] | None:
        """The account's collectors, resolved against its schedule (already checked).

        Only a collector's own `interval` and `stale_after` can break the account's limits;
        an error names where they were set and, when that is `defaults`, the account too.
        """
        # With no collectors named, AccountConfig fills in the built-in ones.
        account = AccountConfig(**(merged | {"collectors": ()}))
        specs = merged.get("collectors")
        if specs is None:
            return account.collectors
        origin = f"{path}.collectors" if "collectors" in item else "defaults.collectors"
        timeout_at = f"{path}.timeout" if "timeout" in item else "defaults.timeout"
        of_account = "" if "collectors" in item else f" (for {path})"
        loopback = is_loopback_host(urlsplit(account.endpoint).hostname or "")
        before = len(self.errors)

        def refuse(at: str, rule: str, shown: str, *paths: str) -> None:
            self.error(at, f"{rule}{of_account} {self.hidden(at, *paths) or shown}")

        resolved = []
        for spec in specs:
            collector = collector_config(spec, account.interval, account.stale_after_seconds)
            resolved.append(collector)
            interval_at, stale_at = (f"{origin}.{spec[0]}.{key}" for key in _COLLECTOR_KEYS)
            every = collector.interval
            if spec[1] is not None and every < MIN_INTERVAL and not loopback:
                refuse(interval_at, f"must be at least {MIN_INTERVAL:g}s", f"(got {every:g}s)")
            elif spec[1] is not None and account.timeout > every:
                shown = f"({every:g}s < {account.timeout:g}s)"
                refuse(interval_at, "must be at least the timeout", shown, timeout_at)
            if spec[2] is not None and collector.stale_after < every:
                shown = f"({collector.stale_after:g}s < {every:g}s)"
                refuse(stale_at, "must be at least the collector's interval", shown, interval_at)
        return tuple(resolved) if len(self.errors) == before else None

    def concurrency(self, path: str, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_CONCURRENCY:
            raise Invalid(
                f"must be a whole number from 1 to {MAX_CONCURRENCY} {self.got(path, raw)}"
            )
        return raw

    def language(self, path: str, raw: object) -> str:
        text = self.string(path, raw)
        if not _LANGUAGE.fullmatch(text):
            raise Invalid(f"must be a language code such as en-US or zh-CN {self.got(path, text)}")
        return text

    def name(self, path: str, raw: object) -> str:
        name = self.string(path, raw)
        if len(name) > _NAME_LIMIT or not name.isprintable():
            raise Invalid(f"must be printable and at most {_NAME_LIMIT} characters")
        return name

    def secret(self, path: str, raw: object) -> Secret:
        """An inline secret; only the key and the kind of problem are ever shown."""
        if not isinstance(raw, str):
            raise Invalid("must be a non-empty string")
        value = str(self.expand(path, raw))
        if not value:
            raise Invalid("must not be empty")
        if not value.isprintable():
            raise Invalid(f"must not contain {_CONTROL} (value not shown)")
        return Secret(value)

    def string(
        self, path: str, raw: object, *, quote_hint: bool = False, printable: bool = False
    ) -> str:
        if raw is None:
            raise Invalid(REQUIRED)
        raw = self.expand(path, raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and quote_hint:
            raise Invalid("must be a string: quote it, as YAML may alter long numbers")
        if not isinstance(raw, str):
            raise Invalid(f"must be a string (got {type(raw).__name__})")
        if not raw.strip():
            raise Invalid("must not be empty")
        if printable and not raw.isprintable():
            # Such values would be sent in HTTP headers, where they fail (or smuggle) later.
            raise Invalid(f"must not contain {_CONTROL}")
        return raw

    def expand(self, path: str, raw: object) -> object:
        """Replace `${VAR}` with the environment's value; `$$` is a literal `$`."""
        if not isinstance(raw, str) or "$" not in raw:
            return raw
        missing: list[str] = []
        used: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            used.append(name)
            if name not in self.env:
                missing.append(name)
                return ""
            return self.env[name]

        expanded = _ENV_REF.sub(substitute, raw)
        if used:
            self.from_env[path] = list(dict.fromkeys(used))
        for name in missing:
            self.error(path, f"environment variable {name} is not set")
        if missing:
            raise Invalid
        return expanded


def _secret_ref(values: Mapping[str, Any], key: str) -> SecretRef:
    """The SecretRef of an Either(key, key_file) pair, whichever was set."""
    if key in values:
        return SecretRef(key=key, value=values[key])
    return SecretRef(key=f"{key}_file", path=values[f"{key}_file"])


def _built_in(name: str) -> Any:
    """An inheritable setting's built-in value: AccountConfig's default, declared once."""
    return AccountConfig.__dataclass_fields__[name].default


_NO_ACCOUNTS = "must be a non-empty list of accounts"
_COLLECTORS = (
    f"must be a non-empty list of distinct collectors ({', '.join(ENDPOINTS)}), or a mapping "
    "of collector to null or {interval, stale_after}"
)
_ACCOUNT_HOLDERS = ("defaults", "accounts")
_AUTH_KINDS = "app_id + app_secret(_file), or token(_file)"
# The lower limits of interval and timeout depend on the endpoint: `schedule` checks them.
_INTERVAL = partial(_Checker.duration, at_most=MAX_INTERVAL)
# At most half the X-Date window (docs/koodrive-api.md section 2.2), leaving room for skew.
_X_DATE_MARGIN = partial(_Checker.duration, allow_zero=True, below=X_DATE_WINDOW / 2)
# Both are sent as HTTP headers; a user id written as a number has lost digits to YAML.
_HEADER_TEXT = partial(_Checker.string, printable=True)
_USER_ID = partial(_Checker.string, quote_hint=True, printable=True)
# The keys an account inherits from `defaults`, in the order they are checked; the
# table in docs/reference.md's "Configuration reference" lists the same (tests/test_config.py).
_INHERITED: tuple[Key[_Checker], ...] = (
    Key("endpoint", _Checker.endpoint, _built_in("endpoint"), doc="API base URL"),
    Key("interval", _INTERVAL, _built_in("interval"), doc="time between polls"),
    Key("timeout", _INTERVAL, _built_in("timeout"), doc="total time for one request"),
    Key("language", _Checker.language, _built_in("language"), doc="`language` header"),
    Key("kilobyte", _Checker.kilobyte, _built_in("kilobyte"), doc="bytes per KB, 1024 or 1000"),
    Key("retries", _Checker.retries, _built_in("retries"), doc="retries within an interval"),
    Key("backoff", _Checker.duration, _built_in("backoff"), doc="retry backoff base"),
    Key("x_date_margin", _X_DATE_MARGIN, _built_in("x_date_margin"), doc="X-Date lead"),
    Key("stale_after", _Checker.duration, doc="default: 3 x interval"),
    Key("ca_file", _Checker.ca_file, doc="PEM bundle for KooDrive's certificate"),
    Key("insecure_skip_verify", _Checker.boolean, False, doc="skip certificate checks"),
    Key("collectors", _Checker.collectors, doc="what to poll, default [overview]"),
    Key("page_size", _Checker.page_size, _built_in("page_size"), doc="items per page"),
)
_DEFAULTS = Section(_INHERITED)
_COLLECTOR_KEYS = ("interval", "stale_after")
_COLLECTOR = Section(
    (
        Key("interval", _INTERVAL, doc="the collector's own interval"),
        Key("stale_after", _Checker.duration, doc="the collector's own stale_after"),
    ),
    not_mapping="must be null or a mapping with `interval` and/or `stale_after`",
)
_APP_AUTH: Section[_Checker] = Section(
    (
        Key("app_id", _HEADER_TEXT, missing=REQUIRED, doc="the AppId"),
        Either((Key("app_secret", _Checker.secret), Key("app_secret_file", _Checker.secret_file))),
    ),
    build=lambda _c, _path, v: AppAuth(app_id=v["app_id"], secret=_secret_ref(v, "app_secret")),
)
_TOKEN_AUTH: Section[_Checker] = Section(
    (Either((Key("token", _Checker.secret), Key("token_file", _Checker.secret_file))),),
    build=lambda _c, _path, v: TokenAuth(token=_secret_ref(v, "token")),
)
_AUTH = Choice(
    (_APP_AUTH, _TOKEN_AUTH),
    mixed="has keys of both app and token authentication; use exactly one kind",
    neither=f"must hold {_AUTH_KINDS}",
    not_mapping=f"must be a mapping with {_AUTH_KINDS}",
)
_ACCOUNT = Section(
    (
        Key("name", _Checker.name, missing=REQUIRED, doc="the `account` label; unique"),
        Key("user_id", _USER_ID, missing=REQUIRED, doc="KooDrive user id, `X-User-Id`"),
        Key("auth", _AUTH, missing=_AUTH.not_mapping, doc="app or token authentication"),
        *_INHERITED,
    )
)
_CONFIG = Section(
    (
        Key("defaults", _Checker.defaults, {}, doc="settings every account inherits"),
        Key("accounts", _Checker.accounts, missing=_NO_ACCOUNTS, doc="the accounts to poll"),
        Key("max_concurrency", _Checker.concurrency, DEFAULT_MAX_CONCURRENCY, doc="polls at once"),
    ),
    not_mapping="config must be a mapping with `defaults` and `accounts`",
)


def reference() -> dict[str, str]:
    """Every key that holds a value -> where it may be set: what docs/reference.md's
    configuration reference must list (`defaults` and `accounts` hold the others)."""
    inherited = {key.name for key in _INHERITED}
    top = {key.name: "top level" for key in _CONFIG.declared() if key.name not in _ACCOUNT_HOLDERS}
    return top | {
        name: "defaults, account" if name in inherited else "account"
        for name, _key in leaves(_ACCOUNT)
    }


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and, where it has one, the context that started it (an unclosed quote
    is reported at the end of the file, but the operator needs the line where it opened)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return cut(str(exc), 300)
    parts = []
    if exc.context and exc.context_mark is not None:
        mark = exc.context_mark
        parts.append(f"{cut(exc.context, 200)} at line {mark.line + 1}, column {mark.column + 1}")
    problem = cut(exc.problem or "syntax error", 200)
    if exc.problem_mark is not None:
        mark = exc.problem_mark
        problem += f" at line {mark.line + 1}, column {mark.column + 1}"
    parts.append(problem)
    return ": ".join(parts)


def _os_reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
