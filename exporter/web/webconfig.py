"""The exporter-toolkit web configuration file: TLS, basic auth, headers and a rate limit.

Operators protect their Go exporters with one file in this format; accepting the very same
file lets koodrive-exporter drop into an existing secured Prometheus setup. The verdict on a
file is exporter-toolkit's (checked against every file of its own test data, see
tests/test_webconfig_compat.py), and what is accepted behaves as there. What Python's `ssl`
cannot do (several curve_preferences) is refused naming the key and the reason, never
ignored or approximated, since these are security settings. Errors name the key, like the
main config, and never quote a private key.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import (
    file_identity,
    pem_certificates,
    read_or_refuse,
    read_regular_file,
    show_path,
)
from ..core.schema import Checker, Invalid, Key, Section, cut, join, show_value
from ..core.settings import ConfigError, Secret
from ..core.yamlstrict import load_yaml, read_config_file

# exporter-toolkit's names; RequireClientCert is its old name for RequireAnyClientCert.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's crypto/tls CipherSuites() names, in the order a Go server prefers them (Go ignores
# the configured order and prefer_server_cipher_suites), with the OpenSSL name of each
# TLS 1.2 suite. TLS 1.3 suites (None) are not configurable in Go or OpenSSL: accepted, and
# like in Go they change nothing for TLS 1.3.
GO_CIPHERS: Mapping[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
# Go's http2 refuses to start with a TLS 1.2 cipher list lacking both of these (RFC 7540).
HTTP2_CIPHERS = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
# exporter-toolkit's curve names and OpenSSL's for the same groups.
GO_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
# The response headers exporter-toolkit lets operators set, with the values it allows for
# the ones that are enumerations (an empty tuple: any value).
ALLOWED_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Content-Security-Policy": (),
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
}
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# A web config holds a few users and paths; 1 MiB leaves room for ~15,000 bcrypt users.
WEB_CONFIG_LIMIT = 1024 * 1024
# Certificates, keys and client CA bundles are a few KB; a public CA bundle about 300 KB.
TLS_FILE_LIMIT = 1024 * 1024
# Go's time.Duration is int64 nanoseconds.
_MAX_DURATION_NS = 2**63 - 1
_GO_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]*)(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9}
_GO_DURATION_NS |= {"m": 60 * 10**9, "h": 3600 * 10**9}


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """One of cert_file/cert and one of key_file/key is set; the key is kept as a Secret."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: Secret | None = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None
    # Go names, in Go's preference order; empty: OpenSSL's defaults.
    cipher_suites: tuple[str, ...] = ()
    curve: str | None = None
    # None: no SAN check; else a client certificate must carry one of these SANs.
    client_allowed_sans: frozenset[str] | None = None

    def files(self) -> tuple[Path, ...]:
        named = (self.cert_file, self.key_file, self.client_ca_file)
        return tuple(path for path in named if path is not None)

    @property
    def has_client_ca(self) -> bool:
        return self.client_ca_file is not None or self.client_ca is not None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """exporter-toolkit's token bucket: `burst` tokens, one more every `interval` seconds."""

    interval: float
    burst: int


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TLSConfig | None = None
    # username -> bcrypt hash; hashes are not secrets, but are kept out of repr all the same.
    users: Mapping[str, Secret] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    http2: bool = True

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
    if raw is None or raw == "":
        return None  # unset, as in exporter-toolkit; a required one is reported as missing
    if not isinstance(raw, str):
        raise Invalid("must be a file path")
    file = Path(raw) if Path(raw).is_absolute() else checker.base / raw
    read_or_refuse(file, lambda name: read_regular_file(name, TLS_FILE_LIMIT), show_path(file))
    return file


def _pem(kind: str) -> Callable[[Checker, str, object], str | None]:
    """Inline PEM text; the message never quotes it, since it may be a private key."""

    def parse(checker: Checker, path: str, raw: object) -> str | None:
        if raw is None or raw == "":
            return None  # unset, as in exporter-toolkit
        if not isinstance(raw, str) or "-----BEGIN " not in raw or not raw.isascii():
            raise Invalid(f"must be inline PEM text ({kind})")
        return raw

    return parse


def _secret_pem(checker: Checker, path: str, raw: object) -> Secret | None:
    text = _pem("a private key")(checker, path, raw)
    return None if text is None else Secret(text)


def _one_of(names: Iterable[str]) -> Callable[[Checker, str, object], str]:
    allowed = tuple(names)

    def parse(checker: Checker, path: str, raw: object) -> str:
        if isinstance(raw, str) and raw in allowed:
            return raw
        raise Invalid(f"must be one of {', '.join(allowed)}")

    return parse


def _bool(checker: Checker, path: str, raw: object) -> bool:
    if not isinstance(raw, bool):
        raise Invalid("must be true or false")
    return raw


def _whole(checker: Checker, path: str, raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 2**31:
        raise Invalid("must be a whole number from 0")
    return raw


def _strings(checker: Checker, path: str, raw: object) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise Invalid("must be a list of strings")
    return raw


def _names(known: Iterable[str], what: str) -> Callable[[Checker, str, object], tuple[str, ...]]:
    """A list of names from `known`, each once, in the order of `known`."""
    order = tuple(known)

    def parse(checker: Checker, path: str, raw: object) -> tuple[str, ...]:
        names = _strings(checker, path, [] if raw is None else raw)
        for name in names:
            if name not in order:
                raise Invalid(f"unknown {what} {show_value(name)} (known: {', '.join(order)})")
        return tuple(name for name in order if name in names)

    return parse


_ciphers = _names(GO_CIPHERS, "cipher")


def _curve(checker: Checker, path: str, raw: object) -> str | None:
    curves = _names(GO_CURVES, "curve")(checker, path, raw)
    if len(curves) > 1:
        raise Invalid(
            "several curves are not supported: Python's ssl module can set only one "
            "(SSLContext.set_ecdh_curve); keep the one to use"
        )
    return curves[0] if curves else None


def _sans(checker: Checker, path: str, raw: object) -> frozenset[str] | None:
    if raw is None:
        return None  # as in exporter-toolkit: no SAN check
    names = _strings(checker, path, raw)
    if not names:
        raise Invalid("is empty, so no client certificate could pass; list SANs or remove it")
    return frozenset(names)


def _go_duration(checker: Checker, path: str, raw: object) -> float:
    """Seconds, read as Go's YAML reads a time.Duration: `1m30s`, or an integer of ns."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        nanoseconds = raw
    elif isinstance(raw, str):
        nanoseconds = _go_nanoseconds(raw)
    else:
        raise Invalid("must be a duration such as 1s, 500ms or 1m30s")
    if not 0 <= nanoseconds <= _MAX_DURATION_NS:
        raise Invalid("must be a duration from 0 to about 292 years")
    return nanoseconds / 1e9


def _go_nanoseconds(text: str) -> int:
    """Go's time.ParseDuration: a sign, then numbers each with a unit; `0` alone too."""
    body = text[1:] if text[:1] in "+-" else text
    parts = _GO_DURATION_PART.findall(body)
    spelled = "".join(number + unit for number, unit in parts)
    if body != "0" and (not parts or spelled != body or any(n in ("", ".") for n, _ in parts)):
        raise Invalid(f"invalid duration {show_value(text)}: use e.g. 1s, 500ms or 1m30s")
    total = sum(round(float(number) * _GO_DURATION_NS[unit]) for number, unit in parts)
    return -total if text.startswith("-") else total


def _ignored(checker: Checker, path: str, raw: object) -> None:
    """prefer_server_cipher_suites: a bool with no effect, in Go too (since Go 1.18)."""
    _bool(checker, path, raw)


def _sources(checker: Checker, path: str, values: dict[str, Any]) -> None:
    """Each of cert, key and client CA inline or in a file, not both: one would go unused.

    An empty value counts as unset, as in exporter-toolkit ("missing one of cert or
    cert_file"); a value already refused is not reported missing a second time.
    """
    for file, inline, required in _SOURCES:
        given = {file, inline} & values.keys()
        if len(given) == 2:
            checker.error(join(path, inline), f"set either {inline} or {file}, not both")
        elif required and not given and not _reported(checker, *_paths(path, file, inline)):
            checker.error(path, f"missing one of {inline} or {file}")


def _paths(path: str, *keys: str) -> tuple[str, ...]:
    return tuple(join(path, key) for key in keys)


def _reported(checker: Checker, *paths: str) -> bool:
    """Whether a key already has an error: a rule then says nothing more about it."""
    return any(error.startswith(paths) for error in checker.errors)


def _ca_needs_policy(checker: Checker, path: str, values: dict[str, Any]) -> None:
    """exporter-toolkit refuses a client CA without a client_auth_type that asks for one."""
    if _reported(checker, join(path, "client_auth_type")):
        return
    asks = values.get("client_auth_type", "NoClientCert") != "NoClientCert"
    for key in ("client_ca_file", "client_ca"):
        if key in values and not asks:
            checker.error(join(path, key), "is set but client_auth_type is NoClientCert")
    if "client_allowed_sans" in values and not asks:
        checker.error(
            join(path, "client_allowed_sans"),
            "has no effect without a client certificate; set client_auth_type",
        )


def _versions_in_order(checker: Checker, path: str, values: dict[str, Any]) -> None:
    low, high = values.get("min_version"), values.get("max_version")
    if low is not None and high is not None and TLS_VERSIONS[low] > TLS_VERSIONS[high]:
        checker.error(join(path, "max_version"), "is lower than min_version")


def _tls12_ciphers_usable(checker: Checker, path: str, values: dict[str, Any]) -> None:
    """Only TLS 1.3 names leave TLS 1.2 without a suite, as in Go: TLS 1.3 must be allowed."""
    suites = values.get("cipher_suites", ())
    high = values.get("max_version", "TLS13")
    if suites and not _openssl_ciphers(suites) and TLS_VERSIONS[high] < ssl.TLSVersion.TLSv1_3:
        checker.error(
            join(path, "cipher_suites"),
            "names only TLS 1.3 suites, which are not configurable, and max_version forbids "
            "TLS 1.3: no handshake could succeed",
        )


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


def _header(allowed: tuple[str, ...]) -> Callable[[Checker, str, object], str]:
    def parse(checker: Checker, path: str, raw: object) -> str:
        # Go's YAML reads a number into a string header as its text (`X-XSS-Protection: 1`).
        value = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        # Control characters have no place in a header value (CR and LF would split it).
        if not isinstance(value, str) or not value.isprintable():
            raise Invalid("must be a one-line string without control characters")
        if allowed and value not in allowed:
            raise Invalid(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _tls_section(checker: _Checker, path: str, raw: object) -> TLSConfig | None:
    """exporter-toolkit serves plain HTTP for an empty tls_server_config: so do we."""
    return None if raw in (None, {}) else _TLS(checker, path, raw)


def _tls(_c: Checker, _path: str, values: dict[str, Any]) -> TLSConfig:
    curve = values.pop("curve_preferences", None)
    return TLSConfig(**values, curve=curve)


def _rate_limit(_c: Checker, _path: str, values: dict[str, Any]) -> RateLimit | None:
    """interval 0 turns the limit off, as in exporter-toolkit."""
    interval = values["interval"]
    return RateLimit(interval, values["burst"]) if interval > 0 else None


def _http2_cipher(checker: Checker, path: str, values: dict[str, Any]) -> None:
    """Go's HTTP/2 server refuses to start with a TLS 1.2 cipher list it cannot use; the
    toolkit's verdict on such a file is that refusal, so ours is too."""
    tls: TLSConfig | None = values.get("tls_server_config")
    http2 = values.get("http_server_config", {}).get("http2", True)
    if tls is None or not tls.cipher_suites or not http2:
        return
    if TLS_VERSIONS[tls.min_version] >= ssl.TLSVersion.TLSv1_3:
        return
    if not set(HTTP2_CIPHERS) & set(tls.cipher_suites):
        checker.error(
            "tls_server_config.cipher_suites",
            f"lacks an HTTP/2-required cipher ({' or '.join(HTTP2_CIPHERS)}) while "
            "http_server_config.http2 is on (the default); add one or set http2: false",
        )


def _web(_c: Checker, _path: str, values: dict[str, Any]) -> WebConfig:
    http = values["http_server_config"]
    return WebConfig(
        values.get("tls_server_config"),
        values["basic_auth_users"],
        http.get("headers", {}),
        values.get("rate_limit"),
        http.get("http2", True),
    )


_SOURCES = (
    ("cert_file", "cert", True),
    ("key_file", "key", True),
    ("client_ca_file", "client_ca", False),
)
_USERS = "must be a mapping of user name to bcrypt hash"
_NOT_BCRYPT = "must be a bcrypt hash (as written by `htpasswd -nBC 10 USER`), not a plain password"
_TLS: Section[_Checker] = Section(
    (
        Key("cert_file", _file),
        Key("cert", _pem("a certificate")),
        Key("key_file", _file),
        Key("key", _secret_pem),
        Key("client_ca_file", _file),
        Key("client_ca", _pem("CA certificates")),
        Key("client_auth_type", _one_of(CLIENT_AUTH_TYPES), "NoClientCert"),
        Key("min_version", _one_of(TLS_VERSIONS), "TLS12"),
        Key("max_version", _one_of(TLS_VERSIONS)),
        Key("cipher_suites", _ciphers),
        Key("curve_preferences", _curve),
        Key("client_allowed_sans", _sans),
        Key("prefer_server_cipher_suites", _ignored),
    ),
    build=_tls,
    rules=(_sources, _ca_needs_policy, _versions_in_order, _tls12_ciphers_usable),
)
_HEADERS: Section[_Checker] = Section(
    tuple(Key(name, _header(values)) for name, values in ALLOWED_HEADERS.items()),
    unknown="can not be configured",
)
_HTTP: Section[_Checker] = Section((Key("headers", _HEADERS), Key("http2", _bool)))
_RATE: Section[_Checker] = Section(
    (Key("interval", _go_duration, 0), Key("burst", _whole, 0)), build=_rate_limit
)
_WEB: Section[_Checker] = Section(
    (
        Key("tls_server_config", _tls_section),
        Key("basic_auth_users", _users, {}),
        Key("http_server_config", _HTTP, {}),
        Key("rate_limit", _RATE),
    ),
    build=_web,
    rules=(_http2_cipher,),
)


def build_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context with exporter-toolkit's semantics, as far as OpenSSL allows.

    Raises OSError, ssl.SSLError or ValueError; messages never hold key material.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version is not None:
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    _load_chain(context, tls)
    _set_ciphers(context, tls.cipher_suites)
    if tls.curve is not None:
        context.set_ecdh_curve(GO_CURVES[tls.curve])  # OpenSSL 3: TLS 1.3 groups as well
    # OpenSSL cannot accept a client certificate without verifying it, so Request- and
    # RequireAnyClientCert verify too (stricter than Go). Without a client CA the system
    # roots verify, as in Go.
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if tls.has_client_ca:
        context.load_verify_locations(cadata=pem_certificates(_client_ca(tls)))
    elif context.verify_mode != ssl.CERT_NONE:
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return context


def _client_ca(tls: TLSConfig) -> bytes:
    # The bundle is handed over as bytes, so a file is read only once, safely.
    if tls.client_ca_file is not None:
        return read_regular_file(tls.client_ca_file, TLS_FILE_LIMIT)
    return (tls.client_ca or "").encode("ascii")


def _load_chain(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """load_cert_chain wants file names: inline PEM goes through anonymous memory files.

    OpenSSL opens named files itself and would block on a FIFO or read /dev/zero without
    end: check first that they are small regular files (raising OSError if not).
    """
    with contextlib.ExitStack() as stack:
        names: list[str] = []
        for file, inline in ((tls.cert_file, tls.cert), (tls.key_file, tls.key)):
            if file is not None:
                read_regular_file(file, TLS_FILE_LIMIT)
                names.append(str(file))
            else:
                text = inline.reveal() if isinstance(inline, Secret) else inline or ""
                names.append(stack.enter_context(_memory_file(text.encode("ascii"))))
        context.load_cert_chain(names[0], names[1])


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A name OpenSSL can open for `data` that never touches a disk or a directory.

    memfd_create makes an anonymous file in memory, reachable only through this process's
    descriptor table (/proc/self/fd), closed as soon as OpenSSL has read it: an inline
    private key is never written to /tmp or anywhere another process could find it.
    """
    if not hasattr(os, "memfd_create"):
        raise OSError("inline cert and key need memfd_create (Linux); use cert_file/key_file")
    fd = os.memfd_create("koodrive-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _openssl_ciphers(suites: Iterable[str]) -> list[str]:
    return [name for suite in suites if (name := GO_CIPHERS[suite]) is not None]


def _set_ciphers(context: ssl.SSLContext, suites: tuple[str, ...]) -> None:
    """The TLS 1.2 cipher list in Go's preference order; every suite must be available.

    OpenSSL drops names it lacks without a word; a configured suite that is not offered
    would be a silent change of a security setting, so it is an error naming the suite.
    """
    if not suites:
        return
    names = _openssl_ciphers(suites)
    if not names:  # only TLS 1.3 suites: Go then has no TLS 1.2 suite either
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return
    context.set_ciphers(":".join(names))
    offered = {cipher["name"] for cipher in context.get_ciphers()}
    for suite in suites:
        if GO_CIPHERS[suite] not in (None, *offered):
            raise ValueError(f"cipher_suites: {suite} is not available in {ssl.OPENSSL_VERSION}")


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
