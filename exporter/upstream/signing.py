"""Request signing for KooDrive, pure: no I/O, no clock, no randomness of its own.

Time and randomness come in as arguments so that every request can be signed afresh by the
caller and every rule here can be checked against fixed vectors. The algorithm follows
docs/koodrive-api.md section 4.3 (app authentication, HMAC-SHA256); the X-Date rules are in
its section 2.2.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "HMAC-SHA256"
X_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
SIGNED_HEADERS = ("host", "x-date", "x-user-id")
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
TRACE_ID_LENGTH = 58
# The span an X-Date can spell (four-digit years). Times outside it are clamped, because a
# signer that raises sends nothing, and then no response can ever correct the clock it was
# given; a clamped date is merely refused by the server, which reports and then heals.
X_DATE_MIN = 0  # 1970-01-01T00:00:00Z: no upstream was ever older
X_DATE_MAX = 253402300799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True, slots=True)
class AppCredentials:
    app_id: str
    app_secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    token: str = field(repr=False)


Credentials = AppCredentials | TokenCredentials


def format_x_date(epoch_seconds: float) -> str:
    """UTC `yyyyMMddTHHmmssZ`, truncated (never rounded up) so it is never in the future.

    Total: NaN, infinities and years beyond 9999 are clamped into X_DATE_MIN..X_DATE_MAX.
    """
    if math.isnan(epoch_seconds):
        seconds = X_DATE_MIN
    else:
        seconds = int(min(max(epoch_seconds, X_DATE_MIN), X_DATE_MAX))
    return datetime.fromtimestamp(seconds, tz=UTC).strftime(X_DATE_FORMAT)


def new_trace_id(rng: random.Random) -> str:
    """58 ASCII alphanumerics: the docs say "58 bits" but mean 58 characters.

    Lower-case hex is a subset of the alphanumerics and 30x cheaper to make than picking
    58 characters one by one; 232 random bits are plenty for a trace id.
    """
    return format(rng.getrandbits(4 * TRACE_ID_LENGTH), f"0{TRACE_ID_LENGTH}x")


def canonical_uri(path: str) -> str:
    """Each segment URI-encoded and a `/` appended; the request itself is sent without it."""
    encoded = "/".join(quote(segment, safe="-_.~") for segment in path.split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """`name=value` pairs, RFC 3986 encoded, sorted by encoded name then value."""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: dict[str, str],
    payload_sha256: str = EMPTY_BODY_SHA256,
) -> str:
    """Build the canonical request over `headers` (lower-case names, all of them signed)."""
    names = sorted(headers)
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers,
            ";".join(names),
            payload_sha256,
        ]
    )


def string_to_sign(canonical: str) -> str:
    return f"{ALGORITHM}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def signature(app_secret: str, canonical: str) -> str:
    """Hex HMAC-SHA256 keyed with the AppSecret's UTF-8 bytes (no hex/base64 decoding)."""
    message = string_to_sign(canonical).encode("utf-8")
    return hmac.new(app_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def request_headers(
    credentials: Credentials,
    *,
    host: str,
    user_id: str,
    now: float,
    trace_id: str,
    language: str | None = None,
    method: str = "GET",
    path: str,
    query: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """All headers for one request, signed for `now` (epoch seconds).

    `host` must be byte-identical to the Host header the HTTP client sends, which is why it
    is returned here and the caller sends exactly these headers.
    """
    x_date = format_x_date(now)
    headers = {"Host": host, "X-Date": x_date, "X-User-Id": user_id, "X-Traceid": trace_id}
    if language:
        headers["language"] = language
    if isinstance(credentials, AppCredentials):
        signed = {"host": host, "x-date": x_date, "x-user-id": user_id}
        canonical = canonical_request(method, path, query, signed)
        sig = signature(credentials.app_secret, canonical)
        headers["Authorization"] = (
            f"{ALGORITHM} AppId={credentials.app_id},"
            f"SignedHeaders={';'.join(SIGNED_HEADERS)},Signature={sig}"
        )
    else:
        # Sent exactly as configured: the docs disagree on the prefix (`Bearer+`, bare, `AT `),
        # so adding one here would break at least one of the documented forms.
        headers["Authorization"] = credentials.token
    return headers
