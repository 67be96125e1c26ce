"""YAML configuration -> frozen dataclasses.

Every problem is collected and reported with its key path (`accounts[1].auth.token_file: ...`)
so an operator fixes a broken file in one round instead of one error per restart. Error
messages never echo a secret's value.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import reprlib
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import yaml

DEFAULT_ENDPOINT = "https://intl.myhuaweicloud-koodrive.com"
BUILTIN_DEFAULTS: Mapping[str, Any] = {
    "endpoint": DEFAULT_ENDPOINT,
    "interval": "60s",
    "timeout": "10s",
    "language": "en-US",
    "kilobyte": 1024,
    "retries": 2,
    "backoff": "1s",
    "x_date_margin": "2s",
}
# stale_after has no fixed default: it is 3 x the account's own interval unless set.
DEFAULT_KEYS = frozenset(BUILTIN_DEFAULTS) | {"stale_after", "ca_file", "insecure_skip_verify"}
STALE_INTERVALS = 3
MAX_RETRIES = 10
X_DATE_WINDOW = 15 * 60
ACCOUNT_KEYS = DEFAULT_KEYS | {"name", "user_id", "auth"}
APP_KEYS = frozenset({"app_id", "app_secret", "app_secret_file"})
TOKEN_KEYS = frozenset({"token", "token_file"})

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
# How much of a user's value an error message may quote.
SHOWN_VALUE_LIMIT = 60
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

    @property
    def stale_after_seconds(self) -> float:
        return self.stale_after or STALE_INTERVALS * self.interval


@dataclass(frozen=True, slots=True)
class Config:
    accounts: tuple[AccountConfig, ...]
    # Polls in flight at once, over all accounts (top-level key `max_concurrency`).
    max_concurrency: int = 64
    source: str = field(default="<memory>", compare=False)


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced (Kubernetes swaps a symlink) or rewritten."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_regular_file(path: Path, limit: int) -> bytes:
    """The content of a regular file of at most `limit` bytes; OSError for anything else.

    Opening a FIFO blocks until a writer comes and /dev/zero never ends, so a config check or
    a reload would hang or run out of memory. O_NONBLOCK makes open() return at once, fstat()
    then tells what the descriptor is, and at most limit + 1 bytes are read in case the file
    grows meanwhile. Symlinks are followed: Kubernetes mounts secrets through them. The
    errors are OSErrors whose strerror says what is wrong, so callers that already report
    OSError (the credential store) need no change.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError:
        raise OSError(errno.EINVAL, "the file name contains a NUL byte", str(path)) from None
    except OSError as exc:
        # open() of a Unix socket fails with ENXIO, whose text ("No such device or address")
        # would send the operator looking in the wrong place.
        if exc.errno == errno.ENXIO and _is_socket(path):
            raise OSError(errno.ENXIO, "is a socket, not a regular file", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a regular file", str(path))
        if not stat.S_ISREG(mode):
            kind = _file_kind(mode)
            raise OSError(errno.EINVAL, f"is {kind}, not a regular file", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"is larger than {_size(limit)}", str(path))
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:  # each pass reads at least one byte or stops
            chunk = os.read(fd, min(remaining, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise OSError(errno.EFBIG, f"is larger than {_size(limit)}", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


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


def show_value(value: object) -> str:
    """A user's value as an error message may quote it: a repr cut to SHOWN_VALUE_LIMIT.

    A value can be a megabyte line or, through YAML, a huge nested structure; echoing it in
    full made error output unbounded.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return "a very large number"
    if isinstance(value, str | bytes):
        text = repr(value[: SHOWN_VALUE_LIMIT + 1])
    else:
        bounded = reprlib.Repr()
        bounded.maxlevel, bounded.maxlist, bounded.maxdict = 2, 4, 4
        bounded.maxstring = bounded.maxother = bounded.maxlong = SHOWN_VALUE_LIMIT
        text = bounded.repr(value)
    return _cut(text)


def show_key(key: object) -> str:
    """A mapping key as part of a key path: as written when short and printable."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= SHOWN_VALUE_LIMIT:
        return key
    return show_value(key)


def show_path(file: Path) -> str:
    """A file name from the config as an error message may quote it."""
    return _cut(str(file), 200)


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
        raise ConfigError([f"{source}: is larger than {_size(CONFIG_FILE_LIMIT)}"])
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
        accounts = checker.document(raw)
        concurrency = checker.max_concurrency(raw)
    except Exception as exc:
        # A last resort so that a reload never sees anything but ConfigError; the hostile
        # input tests check this message never appears.
        name = type(exc).__name__
        raise ConfigError(
            [f"{source}: internal error while checking the config ({name})"]
        ) from None
    if checker.errors:
        raise ConfigError(checker.errors)
    return Config(accounts=tuple(accounts), max_concurrency=concurrency, source=source)


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
                problem=f"YAML aliases (*{_cut(event.anchor)}) are not supported; "
                "use `defaults:` for settings shared by accounts",
                problem_mark=event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                problem=f"YAML anchors (&{_cut(anchor)}) and aliases are not supported; "
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


class _Checker:
    """Walks the parsed YAML once, building accounts and collecting every error."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.reported: set[str] = set()
        self.good_ca_files: set[Path] = set()
        # key path -> the variables its value was expanded from; such values are never shown.
        self.from_env: dict[str, list[str]] = {}

    def error(self, path: str, message: str) -> None:
        # A bad default inherited by many accounts is reported once, not once per account.
        text = f"{path}: {message}" if path else message
        if text not in self.reported:
            self.reported.add(text)
            self.errors.append(text)

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

    def got_seconds(self, path: str, seconds: float) -> str:
        return self.hidden(path) or f"(got {seconds:g}s)"

    def compare(self, left: tuple[str, float], sign: str, right: tuple[str, float]) -> str:
        (left_path, a), (right_path, b) = left, right
        return self.hidden(left_path, right_path) or f"({a:g}s {sign} {b:g}s)"

    def show_file(self, path: str, file: Path) -> str:
        return self.hidden(path) or show_path(file)

    def max_concurrency(self, raw: object) -> int:
        value = raw.get("max_concurrency", 64) if isinstance(raw, dict) else 64
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            self.error(
                "max_concurrency",
                f"must be a whole number from 1 to 4096 (got {show_value(value)})",
            )
            return 64
        return value

    def document(self, raw: object) -> list[AccountConfig]:
        if raw is None:
            self.error("", "config is empty: it needs an `accounts` list")
            return []
        if not isinstance(raw, dict):
            self.error("", "config must be a mapping with `defaults` and `accounts`")
            return []
        self.unknown_keys("", raw, {"defaults", "accounts", "max_concurrency"})
        defaults = dict(BUILTIN_DEFAULTS)
        raw_defaults = raw.get("defaults")
        if raw_defaults is not None:
            if isinstance(raw_defaults, dict):
                self.unknown_keys("defaults", raw_defaults, DEFAULT_KEYS)
                defaults.update({k: v for k, v in raw_defaults.items() if k in DEFAULT_KEYS})
            else:
                self.error("defaults", "must be a mapping")
        # Check the defaults on their own too, so a bad default is reported once at
        # `defaults.x` rather than once per inheriting account.
        default_errors = len(self.errors)
        clean_defaults = self.common_settings("defaults", defaults)
        defaults_ok = len(self.errors) == default_errors

        raw_accounts = raw.get("accounts")
        if not isinstance(raw_accounts, list) or not raw_accounts:
            self.error("accounts", "must be a non-empty list of accounts")
            return []
        accounts: list[AccountConfig] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(raw_accounts):
            path = f"accounts[{index}]"
            account = self.account(path, item, clean_defaults if defaults_ok else None)
            if account is None:
                continue
            if account.name in seen:
                self.error(
                    f"{path}.name",
                    f"duplicate account name {self.show(f'{path}.name', account.name)} "
                    f"(also accounts[{seen[account.name]}])",
                )
                continue
            seen[account.name] = index
            accounts.append(account)
        return accounts

    def account(
        self, path: str, item: object, defaults: dict[str, Any] | None
    ) -> AccountConfig | None:
        """Build one account; `defaults` is None when they are broken (already reported)."""
        if not isinstance(item, dict):
            self.error(path, "must be a mapping")
            return None
        before = len(self.errors)
        self.unknown_keys(path, item, ACCOUNT_KEYS)
        name = self.required_string(f"{path}.name", item.get("name"))
        if name is not None and (len(name) > _NAME_LIMIT or not name.isprintable()):
            self.error(f"{path}.name", f"must be printable and at most {_NAME_LIMIT} characters")
        user_id = self.required_string(
            f"{path}.user_id", item.get("user_id"), quote_hint=True, printable=True
        )
        auth = self.auth(f"{path}.auth", item.get("auth"))
        overrides = {k: item[k] for k in DEFAULT_KEYS if k in item}
        settings = self.common_settings(path, overrides) if overrides else {}
        if defaults is None or len(self.errors) != before:
            return None
        merged = defaults | settings
        if not self.schedule(path, item, merged):
            return None
        assert name is not None
        assert user_id is not None
        assert auth is not None
        return AccountConfig(name=name, user_id=user_id, auth=auth, **merged)

    def schedule(self, path: str, item: dict[str, Any], merged: dict[str, Any]) -> bool:
        """Check interval, timeout and stale_after together, where the endpoint is known.

        Errors name where the value was set: the account, or `defaults` when inherited.
        """

        def origin(key: str) -> str:
            return f"{path}.{key}" if key in item else f"defaults.{key}"

        interval, timeout = merged["interval"], merged["timeout"]
        host = urlsplit(merged["endpoint"]).hostname or ""
        before = len(self.errors)
        if interval < MIN_INTERVAL and not is_loopback_host(host):
            self.error(
                origin("interval"),
                f"must be at least {MIN_INTERVAL:g}s "
                f"{self.got_seconds(origin('interval'), interval)}: {_POLL_LIMITS}",
            )
        if timeout < MIN_TIMEOUT and not is_loopback_host(host):
            self.error(
                origin("timeout"),
                f"must be at least {MIN_TIMEOUT * 1000:g}ms "
                f"{self.got_seconds(origin('timeout'), timeout)}: {_POLL_LIMITS}",
            )
        if len(self.errors) != before:
            return False
        if timeout > interval:
            self.error(
                origin("timeout"),
                "must not exceed the interval "
                + self.compare((origin("timeout"), timeout), ">", (origin("interval"), interval)),
            )
            return False
        stale_after = merged.get("stale_after", interval)
        if stale_after < interval:
            self.error(
                origin("stale_after"),
                "must be at least the interval "
                + self.compare(
                    (origin("stale_after"), stale_after), "<", (origin("interval"), interval)
                ),
            )
            return False
        return True

    def common_settings(self, path: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the keys an account may inherit from `defaults`; return the clean ones."""
        out: dict[str, Any] = {}
        checks: dict[str, Callable[[str, Any], Any]] = {
            "endpoint": self.endpoint,
            "interval": self.interval,
            "timeout": self.interval,
            "language": self.language,
            "kilobyte": self.kilobyte,
            "retries": self.retries,
            "backoff": self.positive_duration,
            "x_date_margin": self.x_date_margin,
            "stale_after": self.positive_duration,
            "ca_file": self.ca_file,
            "insecure_skip_verify": self.boolean,
        }
        for key, check in checks.items():
            if key in raw:
                value = check(f"{path}.{key}", raw[key])
                if value is not None:
                    out[key] = value
        return out

    def endpoint(self, path: str, raw: object) -> str | None:
        text = self.required_string(path, raw)
        if text is None:
            return None
        if not text.isprintable():
            self.error(path, "must not contain control characters")
            return None
        try:
            parts = urlsplit(text)
            hostname = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on an invalid port
        except ValueError:
            self.error(path, "is not a valid URL (check the host and the port)")
            return None
        if parts.scheme not in ("http", "https") or not hostname:
            self.error(path, f"must be an http(s) URL such as {DEFAULT_ENDPOINT}")
            return None
        if parts.scheme == "http" and not is_loopback_host(hostname):
            self.error(path, "must use https:// (plain http is allowed only for loopback hosts)")
            return None
        if parts.query or parts.fragment or parts.username or parts.password:
            self.error(path, "must not contain credentials, a query or a fragment")
            return None
        return text.rstrip("/")

    def positive_duration(self, path: str, raw: object) -> float | None:
        return self.duration(path, raw, allow_zero=False)

    def interval(self, path: str, raw: object) -> float | None:
        # The lower limits depend on the endpoint, so `schedule` checks those per account.
        return self.duration(path, raw, allow_zero=False, at_most=MAX_INTERVAL)

    def x_date_margin(self, path: str, raw: object) -> float | None:
        # Half the X-Date window (docs/koodrive-api.md section 2.2): a larger margin would
        # leave too little room for skew.
        return self.duration(path, raw, allow_zero=True, below=X_DATE_WINDOW / 2)

    def duration(
        self,
        path: str,
        raw: object,
        *,
        allow_zero: bool,
        below: float = math.inf,
        at_most: float = math.inf,
    ) -> float | None:
        raw = self.expand(path, raw)
        if raw is None:
            return None
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            if isinstance(raw, str):
                self.error(path, f"invalid duration {self.show(path, raw)}: {_DURATION_HINT}")
            else:
                self.error(path, str(exc))
            return None
        low_ok = seconds >= 0 if allow_zero else seconds > 0
        if not (low_ok and seconds < below):
            kind = "non-negative" if allow_zero else "positive"
            bound = f" below {below:g}s" if below != math.inf else ""
            self.error(path, f"must be a {kind} duration{bound} {self.got(path, raw)}")
            return None
        if seconds > at_most:
            limit = f"{at_most / 3600:g}h"
            self.error(path, f"must be at most {limit} {self.got(path, raw)}")
            return None
        return seconds

    def ca_file(self, path: str, raw: object) -> Path | None:
        name = self.required_string(path, raw)
        if name is None:
            return None
        file = self.resolve(name)
        if file in self.good_ca_files:
            return file
        shown = self.show_file(path, file)
        try:
            load_ca_context(file)
        except FileNotFoundError:
            self.error(path, f"no such file: {shown}")
            return None
        except OSError as exc:
            self.error(path, f"cannot read {shown}: {_os_reason(exc)}")
            return None
        except (ValueError, ssl.SSLError) as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
            self.error(path, f"not a PEM CA bundle: {shown} ({_cut(str(reason))})")
            return None
        self.good_ca_files.add(file)
        return file

    def resolve(self, name: str) -> Path:
        """Relative paths are relative to the config file, as Prometheus does it."""
        file = Path(name)
        return file if file.is_absolute() else self.base_dir / file

    def boolean(self, path: str, raw: object) -> bool | None:
        if not isinstance(raw, bool):
            self.error(path, f"must be true or false (got {show_value(raw)})")
            return None
        return raw

    def whole_number(self, path: str, raw: object) -> object:
        """`raw` after `${ENV}` expansion, a string of ASCII digits turned into an int."""
        raw = self.expand(path, raw)
        if isinstance(raw, str) and _WHOLE_NUMBER.fullmatch(raw.strip()):
            return int(raw.strip())
        return raw

    def retries(self, path: str, raw: object) -> int | None:
        value = self.whole_number(path, raw)
        if value is None and raw is not None:
            return None  # an unset environment variable, already reported
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
            self.error(
                path,
                f"must be a whole number from 0 to {MAX_RETRIES} {self.got(path, raw)}",
            )
            return None
        return value

    def language(self, path: str, raw: object) -> str | None:
        text = self.required_string(path, raw)
        if text is not None and not _LANGUAGE.fullmatch(text):
            self.error(
                path,
                f"must be a language code such as en-US or zh-CN {self.got(path, text)}",
            )
            return None
        return text

    def kilobyte(self, path: str, raw: object) -> int | None:
        value = self.whole_number(path, raw)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value not in (1000, 1024):
            self.error(path, f"must be 1024 or 1000 {self.got(path, raw)}")
            return None
        return value

    def auth(self, path: str, raw: object) -> Auth | None:
        if not isinstance(raw, dict):
            self.error(path, "must be a mapping with app_id + app_secret(_file), or token(_file)")
            return None
        self.unknown_keys(path, raw, APP_KEYS | TOKEN_KEYS)
        keys = set(raw)
        if keys & APP_KEYS and keys & TOKEN_KEYS:
            self.error(path, "has keys of both app and token authentication; use exactly one kind")
            return None
        if keys & APP_KEYS:
            app_id = self.required_string(f"{path}.app_id", raw.get("app_id"), printable=True)
            secret = self.secret(path, raw, "app_secret")
            return AppAuth(app_id=app_id, secret=secret) if app_id and secret else None
        if keys & TOKEN_KEYS:
            token = self.secret(path, raw, "token")
            return TokenAuth(token=token) if token else None
        self.error(path, "must hold app_id + app_secret(_file), or token(_file)")
        return None

    def secret(self, path: str, raw: dict[str, Any], key: str) -> SecretRef | None:
        file_key = f"{key}_file"
        if key in raw and file_key in raw:
            self.error(path, f"set either {key} or {file_key}, not both")
            return None
        if key in raw:
            if not isinstance(raw[key], str):
                self.error(f"{path}.{key}", "must be a non-empty string")
                return None
            value = self.expand(f"{path}.{key}", raw[key])
            if value is None:
                return None
            if not value:
                self.error(f"{path}.{key}", "must not be empty")
                return None
            if not str(value).isprintable():
                self.error(f"{path}.{key}", f"must not contain {_CONTROL} (value not shown)")
                return None
            return SecretRef(key=key, value=Secret(str(value)))
        if file_key in raw:
            name = self.required_string(f"{path}.{file_key}", raw[file_key])
            if name is None:
                return None
            file = self.resolve(name)
            if self.check_secret_file(f"{path}.{file_key}", file):
                return SecretRef(key=file_key, path=file)
            return None
        self.error(path, f"missing {key} or {file_key}")
        return None

    def check_secret_file(self, path: str, file: Path) -> bool:
        """Read the file now, so a broken one fails the config check rather than every poll.

        Its content is never shown, only its name.
        """
        shown = self.show_file(path, file)
        try:
            content = read_secret_file(file)
        except FileNotFoundError:
            self.error(path, f"no such file: {shown}")
            return False
        except IsADirectoryError:
            self.error(path, f"is a directory, not a file: {shown}")
            return False
        except OSError as exc:
            self.error(path, f"cannot read {shown}: {_os_reason(exc)}")
            return False
        except UnicodeDecodeError:
            self.error(path, f"cannot read {shown}: not UTF-8 text")
            return False
        if not content:
            self.error(path, f"file is empty: {shown}")
            return False
        if not content.isprintable():
            self.error(path, f"contains {_CONTROL}: {shown}")
            return False
        return True

    def required_string(
        self, path: str, raw: object, *, quote_hint: bool = False, printable: bool = False
    ) -> str | None:
        if raw is None:
            self.error(path, "is required")
            return None
        raw = self.expand(path, raw)
        if raw is None:
            return None
        if isinstance(raw, int | float) and not isinstance(raw, bool) and quote_hint:
            self.error(path, "must be a string: quote it, as YAML may alter long numbers")
            return None
        if not isinstance(raw, str):
            self.error(path, f"must be a string (got {type(raw).__name__})")
            return None
        if not raw.strip():
            self.error(path, "must not be empty")
            return None
        if printable and not raw.isprintable():
            # Such values would be sent in HTTP headers, where they fail (or smuggle) later.
            self.error(path, f"must not contain {_CONTROL}")
            return None
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
        return None if missing else expanded

    def unknown_keys(self, path: str, raw: dict[Any, Any], allowed: frozenset[str]) -> None:
        for key in raw:
            if key not in allowed:
                where = f"{path}.{show_key(key)}" if path else show_key(key)
                self.error(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and, where it has one, the context that started it (an unclosed quote
    is reported at the end of the file, but the operator needs the line where it opened)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return _cut(str(exc), 300)
    parts = []
    if exc.context and exc.context_mark is not None:
        mark = exc.context_mark
        parts.append(f"{_cut(exc.context, 200)} at line {mark.line + 1}, column {mark.column + 1}")
    problem = _cut(exc.problem or "syntax error", 200)
    if exc.problem_mark is not None:
        mark = exc.problem_mark
        problem += f" at line {mark.line + 1}, column {mark.column + 1}"
    parts.append(problem)
    return ": ".join(parts)


def _os_reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def _cut(text: str, limit: int = SHOWN_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _size(limit: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
