"""YAML configuration -> frozen dataclasses.

Every problem is collected and reported with its key path (`accounts[1].auth.token_file: ...`)
so an operator fixes a broken file in one round instead of one error per restart. Error
messages never echo a secret's value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
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
SECRET_KEYS = frozenset({"app_secret", "token"})

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_NAME_LIMIT = 128


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


def read_secret_file(path: Path) -> str:
    """Read a secret file, dropping the trailing newline editors and `echo` add."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def read_config_file(file: Path) -> str:
    """A config file's text, or a ConfigError that says why not."""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read: {_os_reason(exc)}"]) from None


def load_yaml(text: str, source: str) -> object:
    """Parse YAML safely, refusing duplicate keys, with errors that point at the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {_yaml_reason(exc)}"]) from None


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
    accounts = checker.document(raw)
    concurrency = checker.max_concurrency(raw)
    if checker.errors:
        raise ConfigError(checker.errors)
    return Config(accounts=tuple(accounts), max_concurrency=concurrency, source=source)


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `30s`, `5m`, `1h`, `1m30s` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
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
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 30s, 5m, 1h")
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


class _StrictLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Checker:
    """Walks the parsed YAML once, building accounts and collecting every error."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.good_ca_files: set[Path] = set()

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def max_concurrency(self, raw: object) -> int:
        value = raw.get("max_concurrency", 64) if isinstance(raw, dict) else 64
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            self.error("max_concurrency", f"must be a whole number from 1 to 4096 (got {value!r})")
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
                    f"duplicate account name {account.name!r} "
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
        user_id = self.required_string(f"{path}.user_id", item.get("user_id"), quote_hint=True)
        auth = self.auth(f"{path}.auth", item.get("auth"))
        overrides = {k: item[k] for k in DEFAULT_KEYS if k in item}
        settings = self.common_settings(path, overrides) if overrides else {}
        if defaults is None or len(self.errors) != before:
            return None
        merged = defaults | settings
        if merged["timeout"] > merged["interval"]:
            self.error(
                f"{path}.timeout",
                f"must not exceed the interval ({merged['timeout']:g}s > {merged['interval']:g}s)",
            )
            return None
        if merged.get("stale_after", merged["interval"]) < merged["interval"]:
            self.error(
                f"{path}.stale_after",
                f"must be at least the interval ({merged['stale_after']:g}s < "
                f"{merged['interval']:g}s)",
            )
            return None
        assert name is not None
        assert user_id is not None
        assert auth is not None
        return AccountConfig(name=name, user_id=user_id, auth=auth, **merged)

    def common_settings(self, path: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the keys an account may inherit from `defaults`; return the clean ones."""
        out: dict[str, Any] = {}
        checks: dict[str, Callable[[str, Any], Any]] = {
            "endpoint": self.endpoint,
            "interval": self.positive_duration,
            "timeout": self.positive_duration,
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
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.error(path, f"must be an http(s) URL such as {DEFAULT_ENDPOINT}")
            return None
        try:
            parts.port  # noqa: B018 - raises ValueError on an invalid port
        except ValueError:
            self.error(path, "has an invalid port")
            return None
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            self.error(path, "must use https:// (plain http is allowed only for loopback hosts)")
            return None
        if parts.query or parts.fragment or parts.username or parts.password:
            self.error(path, "must not contain credentials, a query or a fragment")
            return None
        return text.rstrip("/")

    def positive_duration(self, path: str, raw: object) -> float | None:
        return self.duration(path, raw, allow_zero=False)

    def x_date_margin(self, path: str, raw: object) -> float | None:
        # Half the X-Date window: a larger margin would leave too little room for skew.
        return self.duration(path, raw, allow_zero=True, limit=X_DATE_WINDOW / 2)

    def duration(
        self, path: str, raw: object, *, allow_zero: bool, limit: float = float("inf")
    ) -> float | None:
        raw = self.expand(path, raw)
        if raw is None:
            return None
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            self.error(path, str(exc))
            return None
        low_ok = seconds >= 0 if allow_zero else seconds > 0
        if not (low_ok and seconds < limit):
            kind = "non-negative" if allow_zero else "positive"
            bound = f" below {limit:g}s" if limit != float("inf") else ""
            self.error(path, f"must be a {kind} duration{bound} (got {raw!r})")
            return None
        return seconds

    def ca_file(self, path: str, raw: object) -> Path | None:
        name = self.required_string(path, raw)
        if name is None:
            return None
        file = self.resolve(name)
        if file in self.good_ca_files:
            return file
        try:
            ssl.create_default_context(cafile=file)
        except FileNotFoundError:
            self.error(path, f"no such file: {file}")
            return None
        except (OSError, ssl.SSLError) as exc:
            self.error(path, f"not a readable PEM CA bundle: {file} ({exc})")
            return None
        self.good_ca_files.add(file)
        return file

    def resolve(self, name: str) -> Path:
        """Relative paths are relative to the config file, as Prometheus does it."""
        file = Path(name)
        return file if file.is_absolute() else self.base_dir / file

    def boolean(self, path: str, raw: object) -> bool | None:
        if not isinstance(raw, bool):
            self.error(path, f"must be true or false (got {raw!r})")
            return None
        return raw

    def retries(self, path: str, raw: object) -> int | None:
        raw = self.expand(path, raw)
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_RETRIES:
            self.error(path, f"must be a whole number from 0 to {MAX_RETRIES} (got {raw!r})")
            return None
        return raw

    def language(self, path: str, raw: object) -> str | None:
        text = self.required_string(path, raw)
        if text is not None and not _LANGUAGE.fullmatch(text):
            self.error(path, f"must be a language code such as en-US or zh-CN (got {text!r})")
            return None
        return text

    def kilobyte(self, path: str, raw: object) -> int | None:
        raw = self.expand(path, raw)
        if raw is None:
            return None
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw)
        if isinstance(raw, bool) or raw not in (1000, 1024):
            self.error(path, f"must be 1024 or 1000 (got {raw!r})")
            return None
        return int(raw)  # type: ignore[call-overload]

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
            app_id = self.required_string(f"{path}.app_id", raw.get("app_id"))
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
        try:
            content = read_secret_file(file)
        except FileNotFoundError:
            self.error(path, f"no such file: {file}")
            return False
        except IsADirectoryError:
            self.error(path, f"is a directory, not a file: {file}")
            return False
        except (OSError, UnicodeDecodeError) as exc:
            self.error(path, f"cannot read {file}: {_os_reason(exc)}")
            return False
        if not content:
            self.error(path, f"file is empty: {file}")
            return False
        return True

    def required_string(self, path: str, raw: object, *, quote_hint: bool = False) -> str | None:
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
        return raw

    def expand(self, path: str, raw: object) -> object:
        """Replace `${VAR}` with the environment's value; `$$` is a literal `$`."""
        if not isinstance(raw, str) or "$" not in raw:
            return raw
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in self.env:
                missing.append(name)
                return ""
            return self.env[name]

        expanded = _ENV_REF.sub(substitute, raw)
        for name in missing:
            self.error(path, f"environment variable {name} is not set")
        return None if missing else expanded

    def unknown_keys(self, path: str, raw: dict[Any, Any], allowed: frozenset[str]) -> None:
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.error(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and, where it has one, the context that started it (an unclosed quote
    is reported at the end of the file, but the operator needs the line where it opened)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    parts = []
    if exc.context and exc.context_mark is not None:
        mark = exc.context_mark
        parts.append(f"{exc.context} at line {mark.line + 1}, column {mark.column + 1}")
    problem = exc.problem or "syntax error"
    if exc.problem_mark is not None:
        mark = exc.problem_mark
        problem += f" at line {mark.line + 1}, column {mark.column + 1}"
    parts.append(problem)
    return ": ".join(parts)


def _os_reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
