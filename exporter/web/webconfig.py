"""The exporter-toolkit web configuration file: TLS, basic auth and response headers.

Operators protect their Go exporters with one file in this format; accepting the very same
file lets koodrive-exporter drop into an existing secured Prometheus setup. Errors name the
key, like the main config. Options this implementation cannot honour (Go cipher-suite names,
SAN allow-lists) are refused rather than silently ignored, since they are security settings.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import (
    ConfigError,
    Secret,
    file_identity,
    load_yaml,
    pem_certificates,
    read_config_file,
    read_or_refuse,
    read_regular_file,
    show_path,
)
from ..core.schema import REQUIRED, Checker, Invalid, Key, Section, cut, join

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# The response headers exporter-toolkit lets operators set.
ALLOWED_HEADERS = (
    "Cache-Control",
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
)
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# A web config holds a few users and paths; 1 MiB leaves room for ~15,000 bcrypt users.
WEB_CONFIG_LIMIT = 1024 * 1024
# Certificates, keys and client CA bundles are a few KB; a public CA bundle about 300 KB.
TLS_FILE_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None

    def files(self) -> tuple[Path, ...]:
        extra = (self.client_ca_file,) if self.client_ca_file else ()
        return (self.cert_file, self.key_file, *extra)


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TLSConfig | None = None
    # username -> bcrypt hash; hashes are not secrets, but are kept out of repr all the same.
    users: Mapping[str, Secret] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def files(self) -> tuple[Path, ...]:
        return self.tls.files() if self.tls else ()


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check a web config file; only ever raises ConfigError.

    A file that is empty or holds only comments is WebConfig() (no TLS, no users), as in
    exporter-toolkit; a caller reloading a running server compares that with what it runs.
    """
    file = Path(path)
    raw = load_yaml(read_config_file(file, WEB_CONFIG_LIMIT), str(file))
    checker = _Checker(file.parent)
    try:
        config = checker.walk(_WEB, "", {} if raw is None else raw)
    except Exception as exc:
        # A last resort, so that a reload never sees anything but ConfigError.
        name = type(exc).__name__
        raise ConfigError(
            [f"{file}: internal error while checking the web config ({name})"]
        ) from None
    if checker.errors:
        raise ConfigError([f"{file}: {error}" for error in checker.errors])
    # Build once now, so a key that does not match its certificate fails at start.
    if config.tls is not None:
        try:
            build_ssl_context(config.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"{file}: tls_server_config: {_tls_reason(exc)}"]) from None
    return config


class _Checker(Checker):
    """Resolves file names against the web config file's own directory."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base


def _file(checker: _Checker, path: str, raw: object) -> Path | None:
    """A small regular file, checked before OpenSSL opens it: open() of a FIFO blocks."""
    if raw is None:
        return None  # unset; a required one is reported as missing
    if not isinstance(raw, str) or not raw:
        raise Invalid("must be a file path")
    file = Path(raw) if Path(raw).is_absolute() else checker.base / raw
    read_or_refuse(file, lambda name: read_regular_file(name, TLS_FILE_LIMIT), show_path(file))
    return file


def _one_of(names: Iterable[str]) -> Callable[[Checker, str, object], str]:
    allowed = tuple(names)

    def parse(checker: Checker, path: str, raw: object) -> str:
        if isinstance(raw, str) and raw in allowed:
            return raw
        raise Invalid(f"must be one of {', '.join(allowed)}")

    return parse


def _ignored(checker: Checker, path: str, raw: object) -> None:
    """Accepted for compatibility with exporter-toolkit files; it changes nothing here."""


def _client_ca_needed(checker: Checker, path: str, values: dict[str, Any]) -> None:
    auth = values.get("client_auth_type")
    verifying = auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
    if verifying and "client_ca_file" not in values:
        checker.error(join(path, "client_ca_file"), f"is required with client_auth_type {auth}")


def _versions_in_order(checker: Checker, path: str, values: dict[str, Any]) -> None:
    low, high = values.get("min_version"), values.get("max_version")
    if low is not None and high is not None and TLS_VERSIONS[low] > TLS_VERSIONS[high]:
        checker.error(join(path, "max_version"), "is lower than min_version")


def _users(checker: Checker, path: str, raw: object) -> dict[str, Secret] | None:
    if raw is None or not checker.mapping(_USERS, path, raw):
        return None
    users: dict[str, Secret] = {}
    for name, hashed in raw.items():
        where = join(path, name)
        if not isinstance(name, str) or not name or ":" in name or not name.isprintable():
            checker.error(where, "user names must be non-empty, printable and contain no ':'")
        elif not isinstance(hashed, str) or not hashed.startswith(_BCRYPT_PREFIXES):
            checker.error(where, _NOT_BCRYPT)
        elif len(hashed) != 60:
            checker.error(where, "is not a complete bcrypt hash (60 characters)")
        else:
            users[name] = Secret(hashed)
    return users


def _header_value(checker: Checker, path: str, raw: object) -> str:
    # Control characters have no place in a header value (CR and LF would split it).
    if not isinstance(raw, str) or not raw.isprintable():
        raise Invalid("must be a one-line string without control characters")
    return raw


_USERS = "must be a mapping of user name to bcrypt hash"
_NOT_BCRYPT = "must be a bcrypt hash (as written by `htpasswd -nBC 10 USER`), not a plain password"
_UNSUPPORTED = "not supported by koodrive-exporter (Python's TLS defaults apply); remove it"
_TLS: Section[_Checker] = Section(
    (
        Key("cert_file", _file, missing=REQUIRED),
        Key("key_file", _file, missing=REQUIRED),
        Key("client_ca_file", _file),
        Key("client_auth_type", _one_of(CLIENT_AUTH_TYPES), "NoClientCert"),
        Key("min_version", _one_of(TLS_VERSIONS), "TLS12"),
        Key("max_version", _one_of(TLS_VERSIONS)),
        Key("prefer_server_cipher_suites", _ignored),
    ),
    build=lambda _c, _path, values: TLSConfig(**values),
    rules=(_client_ca_needed, _versions_in_order),
    refused=dict.fromkeys(
        ("cipher_suites", "curve_preferences", "client_allowed_sans"), _UNSUPPORTED
    ),
)
_HEADERS: Section[_Checker] = Section(
    tuple(Key(name, _header_value) for name in ALLOWED_HEADERS), unknown="not allowed"
)
_HTTP: Section[_Checker] = Section(
    (Key("headers", _HEADERS), Key("http2", _ignored)),
    build=lambda _c, _path, values: values.get("headers", {}),
)
_WEB: Section[_Checker] = Section(
    (
        Key("tls_server_config", _TLS),
        Key("basic_auth_users", _users, {}),
        Key("http_server_config", _HTTP, {}),
    ),
    build=lambda _c, _path, v: WebConfig(
        v.get("tls_server_config"), v["basic_auth_users"], v["http_server_config"]
    ),
)


def build_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context following exporter-toolkit's client_auth_type semantics."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version is not None:
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    # OpenSSL opens these paths itself and would block on a FIFO or read /dev/zero without
    # end: check first that they are small regular files (raising OSError if not).
    for file in (tls.cert_file, tls.key_file):
        read_regular_file(file, TLS_FILE_LIMIT)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        # The CA bundle can be handed over as bytes, so it is read only once, safely.
        data = read_regular_file(tls.client_ca_file, TLS_FILE_LIMIT)
        context.load_verify_locations(cadata=pem_certificates(data))
    if tls.client_auth_type == "RequireAndVerifyClientCert":
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.client_auth_type == "VerifyClientCertIfGiven":
        context.verify_mode = ssl.CERT_OPTIONAL
    elif tls.client_auth_type in ("RequestClientCert", "RequireAnyClientCert"):
        # OpenSSL cannot accept a client certificate without verifying it, so these two are
        # stricter than in Go: the chain must verify against client_ca_file, or the system
        # CAs when none is given. RequireAny makes a certificate mandatory.
        context.verify_mode = (
            ssl.CERT_REQUIRED
            if tls.client_auth_type == "RequireAnyClientCert"
            else ssl.CERT_OPTIONAL
        )
        if tls.client_ca_file is None:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return context


def files_identity(paths: tuple[Path, ...]) -> tuple[object, ...]:
    """Changes when any of the files is replaced or rewritten (polled for live rotation)."""
    out: list[object] = []
    for path in paths:
        try:
            out.append(file_identity(path))
        except OSError:
            out.append(None)
    return tuple(out)


def _tls_reason(exc: Exception) -> str:
    """The reason without Python's `[Errno 22]` decoration, naming the file where known."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return f"{show_path(Path(exc.filename))}: {exc.strerror}" if exc.filename else exc.strerror
    return cut(str(exc), 200)
