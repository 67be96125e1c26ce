"""The exporter-toolkit web configuration file: TLS, basic auth and response headers.

Operators protect their Go exporters with one file in this format; accepting the very same
file lets koodrive-exporter drop into an existing secured Prometheus setup. Errors name the
key, like the main config. Options this implementation cannot honour (Go cipher-suite names,
SAN allow-lists) are refused rather than silently ignored, since they are security settings.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import (
    ConfigError,
    Secret,
    file_identity,
    load_yaml,
    pem_certificates,
    read_config_file,
    read_regular_file,
    show_key,
    show_path,
)

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
ALLOWED_HEADERS = frozenset(
    {
        "Cache-Control",
        "Content-Security-Policy",
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "X-XSS-Protection",
    }
)
_TLS_KEYS = frozenset(
    {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
     "prefer_server_cipher_suites", "cipher_suites", "curve_preferences", "client_allowed_sans"}
)  # fmt: skip
_UNSUPPORTED_TLS = frozenset({"cipher_suites", "curve_preferences", "client_allowed_sans"})
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
    errors: list[str] = []
    try:
        config = _parse({} if raw is None else raw, file.parent, errors)
    except Exception as exc:
        # A last resort, so that a reload never sees anything but ConfigError.
        name = type(exc).__name__
        raise ConfigError(
            [f"{file}: internal error while checking the web config ({name})"]
        ) from None
    if errors:
        raise ConfigError([f"{file}: {error}" for error in errors])
    # Build once now, so a key that does not match its certificate fails at start.
    if config.tls is not None:
        try:
            build_ssl_context(config.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"{file}: tls_server_config: {_tls_reason(exc)}"]) from None
    return config


def _parse(raw: object, base: Path, errors: list[str]) -> WebConfig:
    if not isinstance(raw, dict):
        errors.append("must be a mapping")
        return WebConfig()
    for key in raw:
        if key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
            errors.append(f"{show_key(key)}: unknown key")
    tls = _tls(raw.get("tls_server_config"), base, errors)
    users = _users(raw.get("basic_auth_users"), errors)
    headers = _headers(raw.get("http_server_config"), errors)
    return WebConfig(tls=tls, users=users, headers=headers)


def _tls(raw: object, base: Path, errors: list[str]) -> TLSConfig | None:
    if raw is None:
        return None
    where = "tls_server_config"
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    before = len(errors)
    for key in raw:
        if key not in _TLS_KEYS:
            errors.append(f"{where}.{show_key(key)}: unknown key")
        elif key in _UNSUPPORTED_TLS:
            errors.append(
                f"{where}.{key}: not supported by koodrive-exporter (Python's TLS defaults "
                f"apply); remove it"
            )

    def path(key: str, required: bool) -> Path | None:
        value = raw.get(key)
        if value is None:
            if required:
                errors.append(f"{where}.{key}: is required")
            return None
        if not isinstance(value, str) or not value:
            errors.append(f"{where}.{key}: must be a file path")
            return None
        file = Path(value) if Path(value).is_absolute() else base / value
        # Checked here, before OpenSSL opens it: open() of a FIFO would block for good.
        try:
            read_regular_file(file, TLS_FILE_LIMIT)
        except FileNotFoundError:
            errors.append(f"{where}.{key}: no such file: {show_path(file)}")
            return None
        except OSError as exc:
            errors.append(f"{where}.{key}: cannot read {show_path(file)}: {_os_reason(exc)}")
            return None
        return file

    cert, key = path("cert_file", True), path("key_file", True)
    ca = path("client_ca_file", False)
    auth = raw.get("client_auth_type", "NoClientCert")
    if not isinstance(auth, str) or auth not in CLIENT_AUTH_TYPES:
        errors.append(f"{where}.client_auth_type: must be one of {', '.join(CLIENT_AUTH_TYPES)}")
    elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and ca is None:
        errors.append(f"{where}.client_ca_file: is required with client_auth_type {auth}")
    versions: dict[str, str | None] = {}
    for key_name, default in (("min_version", "TLS12"), ("max_version", None)):
        value = raw.get(key_name, default)
        if value is not None and not (isinstance(value, str) and value in TLS_VERSIONS):
            errors.append(f"{where}.{key_name}: must be one of {', '.join(TLS_VERSIONS)}")
            value = None
        versions[key_name] = value
    low, high = versions["min_version"], versions["max_version"]
    if low is not None and high is not None and TLS_VERSIONS[low] > TLS_VERSIONS[high]:
        errors.append(f"{where}.max_version: is lower than min_version")
    if len(errors) != before or cert is None or key is None or low is None:
        return None
    return TLSConfig(cert, key, str(auth), ca, str(low), high)


def _users(raw: object, errors: list[str]) -> dict[str, Secret]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append("basic_auth_users: must be a mapping of user name to bcrypt hash")
        return {}
    users: dict[str, Secret] = {}
    for name, hashed in raw.items():
        where = f"basic_auth_users.{show_key(name)}"
        if not isinstance(name, str) or not name or ":" in name or not name.isprintable():
            errors.append(f"{where}: user names must be non-empty, printable and contain no ':'")
        elif not isinstance(hashed, str) or not hashed.startswith(_BCRYPT_PREFIXES):
            errors.append(
                f"{where}: must be a bcrypt hash (as written by `htpasswd -nBC 10 USER`), "
                f"not a plain password"
            )
        elif len(hashed) != 60:
            errors.append(f"{where}: is not a complete bcrypt hash (60 characters)")
        else:
            users[name] = Secret(hashed)
    return users


def _headers(raw: object, errors: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    where = "http_server_config"
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping")
        return {}
    for key in raw:
        if key not in ("headers", "http2"):
            errors.append(f"{where}.{show_key(key)}: unknown key")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        errors.append(f"{where}.headers: must be a mapping")
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name not in ALLOWED_HEADERS:
            allowed = ", ".join(sorted(ALLOWED_HEADERS))
            errors.append(f"{where}.headers.{show_key(name)}: not allowed (allowed: {allowed})")
        elif not isinstance(value, str) or not value.isprintable():
            # Control characters have no place in a header value (CR and LF would split it).
            errors.append(
                f"{where}.headers.{name}: must be a one-line string without control characters"
            )
        else:
            out[name] = value
    return out


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


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _tls_reason(exc: Exception) -> str:
    """The reason without Python's `[Errno 22]` decoration, naming the file where known."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return f"{show_path(Path(exc.filename))}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
