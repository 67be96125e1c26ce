"""Time as the upstream sees it: HTTP dates, Retry-After, and the clock-skew estimate.

KooDrive refuses an X-Date later than its own clock, so a client clock even one second
ahead fails every request. The `Date` header of every response tells the server's time;
this module turns those into a smoothed offset. Pure: callers pass the local times in.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

# `Date` has one-second resolution and is truncated, so on average the server's clock is
# half a second past what the header says.
DATE_RESOLUTION = 1.0
# Jumps larger than this are taken at once (a clock was stepped, or this is a new upstream);
# smaller differences are noise from the truncation and are smoothed.
JUMP = 2.0 * DATE_RESOLUTION
SMOOTHING = 0.2
# A Retry-After beyond this is treated as a misconfiguration upstream, not a wish to be
# left alone for a year.
RETRY_AFTER_LIMIT = 86400.0


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an RFC 9110 date (`Sun, 06 Nov 1994 08:49:37 GMT`), or None."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 850 / asctime forms: HTTP dates are always GMT
        return None
    return parsed.timestamp()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from `Retry-After` (delta-seconds or an HTTP date), capped; or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), RETRY_AFTER_LIMIT)
    when = parse_http_date(text)
    if when is None:
        return None
    return min(max(0.0, when - now), RETRY_AFTER_LIMIT)


class SkewEstimator:
    """Smoothed server-minus-local clock offset, from one upstream's `Date` headers."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None

    def observe(self, server_date: float, sent_at: float, received_at: float) -> float:
        """Fold in one response; the local time it is compared with is the request midpoint."""
        sample = server_date + DATE_RESOLUTION / 2 - (sent_at + received_at) / 2
        if self.offset is None or abs(sample - self.offset) > JUMP:
            self.offset = sample
        else:
            self.offset += SMOOTHING * (sample - self.offset)
        return self.offset
