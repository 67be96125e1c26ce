"""From a failed poll to one plain-language hint: the same words in `check`, the landing page
and the log.

KooDrive's error bodies are terse, and its auth rules strict (an X-Date never later than the
server's clock, at most 15 minutes old, an HMAC over exact header bytes: docs/koodrive-api.md
sections 2.2 and 4). The facts a poll gathers (the failure's reason, HTTP status, the
server's clock from its `Date` header, the account's auth kind) are enough to say which of a
handful of things is wrong; this module says it, and nothing else, so every surface agrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .model import DNS_FAILURE, FetchError, Hint, Reason

# The one-sided X-Date window: the server refuses an X-Date later than its clock, or older
# than this (docs/koodrive-api.md section 2.2).
X_DATE_WINDOW = 15 * 60

_SIGNATURE_REFUSED = (
    "KooDrive refused the app signature: check the AppId, the AppSecret and the user id "
    "(X-User-Id). A secret file with a stray trailing space or line, or a secret rotated in "
    "KooDrive but not here, are the usual causes."
)
_EXPIRY_HINT = (
    "KooDrive refused the token: tokens expire after 20 idle minutes, so a token copied "
    "once stops working; check the token and the user id (X-User-Id)."
)
_FIXED: Mapping[Reason, Hint] = MappingProxyType(
    {
        Reason.TLS: Hint(
            "tls",
            "The TLS handshake failed: if a proxy or a private CA signs KooDrive's certificate, "
            "point ca_file at that CA's bundle (insecure_skip_verify only for a test).",
        ),
        Reason.CONNECTION: Hint(
            "connection",
            "No connection to the endpoint: check its host and port, firewalls, and any proxy "
            "between this host and KooDrive.",
        ),
        Reason.TIMEOUT: Hint(
            "timeout",
            "No complete answer within the timeout: a firewall dropping packets looks like this; "
            "if KooDrive is merely slow, raise `timeout`.",
        ),
        Reason.RATE_LIMITED: Hint(
            "rate_limited",
            "KooDrive is rate limiting these requests: poll less often (a longer interval, or "
            "fewer accounts per AppId); the exporter already waits as Retry-After asks.",
        ),
        Reason.INVALID_RESPONSE: Hint(
            "invalid_response",
            "The answer is not the documented JSON: the endpoint may point at something else, "
            "such as a proxy's error page or a wrong path prefix.",
        ),
        Reason.API_ERROR: Hint(
            "api_error",
            "KooDrive understood the request and answered with an error code: its message says "
            "why (for example a space that does not exist or is in an abnormal state).",
        ),
        Reason.INTERNAL: Hint(
            "internal",
            "A bug in the exporter, not a problem with KooDrive: please report it with the log "
            "line and its traceback.",
        ),
    }
)
_DNS = Hint("dns", "The endpoint's host name does not resolve: check its spelling and DNS.")
_UPSTREAM = Hint(
    "upstream_error",
    "KooDrive or a gateway in front of it failed (HTTP 5xx): usually transient, and retried "
    "within the interval.",
)
_HTTP = Hint(
    "http_error",
    "An HTTP status KooDrive does not document: check the endpoint (host and path prefix).",
)


def hint_for(
    error: FetchError, *, app_auth: bool, clock_skew: float | None, x_date_margin: float
) -> Hint:
    """The hint for a failed request, given what the account and the server's clock say.

    `clock_skew` is server minus local clock (from the `Date` header), None if unknown.
    """
    if error.reason is Reason.AUTH:
        clock = clock_hint(clock_skew, x_date_margin)
        if clock is not None:
            return clock
        return (
            Hint("auth_app", _SIGNATURE_REFUSED) if app_auth else Hint("auth_token", _EXPIRY_HINT)
        )
    if error.reason is Reason.CONNECTION and error.detail.startswith(DNS_FAILURE):
        return _DNS
    if error.reason is Reason.HTTP_ERROR:
        return _UPSTREAM if error.status is not None and error.status >= 500 else _HTTP
    return _FIXED[error.reason]


def clock_hint(clock_skew: float | None, x_date_margin: float) -> Hint | None:
    """A hint when the local clock is off enough that KooDrive refuses the X-Date it
    signed: ahead of the server's by more than the margin, or behind by the whole window."""
    if clock_skew is None:
        return None
    fix = (
        "The exporter corrects for this at run time from the Date header of KooDrive's "
        "answers, but fix NTP on this host."
    )
    if -clock_skew > x_date_margin:
        return Hint(
            "clock_ahead",
            f"The local clock runs {-clock_skew:.0f} s ahead of KooDrive's, and KooDrive "
            f"refuses an X-Date later than its own clock. {fix}",
        )
    if clock_skew - x_date_margin > X_DATE_WINDOW:
        return Hint(
            "clock_behind",
            f"The local clock runs {clock_skew:.0f} s behind KooDrive's, more than the "
            f"15 minutes an X-Date stays valid. {fix}",
        )
    return None
