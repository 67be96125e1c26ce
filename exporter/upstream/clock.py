"""Time as the upstream sees it: HTTP dates, Retry-After, and the clock-skew estimate.

KooDrive refuses an X-Date later than its own clock (docs/koodrive-api.md section 2.2), so
a client clock even one second ahead fails every request. The `Date` header of every
response tells the server's time; this module turns those into a smoothed offset. Pure:
callers pass the local times in.

Every value here comes from an upstream we do not control, so each one is bounded: a Date
more than PLAUSIBLE_SKEW from the local clock is ignored (one broken header must not move
the X-Date of every later request), and a Retry-After cannot defer a poll by more than
the poller's `retry_after_cap(interval)`.
"""

from __future__ import annotations

import calendar
import re

# `Date` has one-second resolution and is truncated, so on average the server's clock is
# half a second past what the header says.
DATE_RESOLUTION = 1.0
# Jumps larger than this are taken at once (a clock was stepped, or this is a new upstream);
# smaller differences are noise from the truncation and are smoothed.
JUMP = 2.0 * DATE_RESOLUTION
SMOOTHING = 0.2
# A `Date` further than this from the local clock is a broken header, not a skewed clock:
# NTP-less hosts drift by seconds a day, not by a day. Such a sample is ignored.
PLAUSIBLE_SKEW = 86400.0
# A Retry-After beyond this is treated as a misconfiguration upstream, not a wish to be
# left alone for a year; parsing saturates here.
RETRY_AFTER_LIMIT = 86400.0
# delta-seconds longer than this (after leading zeros) exceed RETRY_AFTER_LIMIT anyway;
# bounding the length keeps int() from chewing on a megabyte of digits.
RETRY_AFTER_DIGITS = 10
# An HTTP date is 24-30 characters; anything much longer is not one.
HTTP_DATE_MAX_LENGTH = 64

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 section 5.6.7: the preferred IMF-fixdate, and the obsolete RFC 850 and asctime
# forms a recipient must still accept. The zone is always the literal GMT: numeric offsets
# (`+0000`, `-2359`) are not HTTP and are refused rather than guessed at.
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d\d) {_MONTH} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-{_MONTH}-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an RFC 9110 HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`), or None.

    Strict on purpose: a lenient parser turns `-2359` into a day of skew.
    """
    if not value or len(value) > HTTP_DATE_MAX_LENGTH:
        return None
    text = value.strip()
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        year = str(1900 + int(short_year) if int(short_year) >= 70 else 2000 + int(short_year))
    elif match := _ASCTIME.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    fields = (int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute))
    seconds = int(second)
    if fields[0] < 1 or not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1]):
        return None
    if fields[3] > 23 or fields[4] > 59 or seconds > 60:  # 60: a leap second
        return None
    return float(calendar.timegm((*fields, min(seconds, 59), 0, 0, 0)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds requested by `Retry-After` (delta-seconds or an HTTP date), or None.

    Saturates at RETRY_AFTER_LIMIT; never raises, whatever the header holds. Callers still
    cap what they apply (the poller's `retry_after_cap`).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        if len(digits) > RETRY_AFTER_DIGITS:
            return RETRY_AFTER_LIMIT
        return min(float(int(digits)), RETRY_AFTER_LIMIT)
    when = parse_http_date(text)
    if when is None:
        return None
    return min(max(0.0, when - now), RETRY_AFTER_LIMIT)


def plausible(server_date: float, local: float) -> bool:
    """Whether a `Date` can be a real server clock rather than a broken header."""
    return abs(server_date - local) <= PLAUSIBLE_SKEW


class SkewEstimator:
    """Smoothed server-minus-local clock offset, from one upstream's `Date` headers.

    `ignored` counts the implausible dates seen in a row, so a caller can report the first
    of a run once instead of on every response.
    """

    __slots__ = ("ignored", "offset")

    def __init__(self) -> None:
        self.offset: float | None = None
        self.ignored = 0

    def observe(self, server_date: float, sent_at: float, received_at: float) -> bool:
        """Fold in one response; the local time it is compared with is the request midpoint.

        False, and the estimate unchanged, when the date is implausible: an estimate that
        followed it would sign every later request with a date the server refuses.
        """
        midpoint = (sent_at + received_at) / 2
        if not plausible(server_date, midpoint):
            self.ignored += 1
            return False
        self.ignored = 0
        sample = server_date + DATE_RESOLUTION / 2 - midpoint
        if self.offset is None or abs(sample - self.offset) > JUMP:
            self.offset = sample
        else:
            self.offset += SMOOTHING * (sample - self.offset)
        return True

    def reject(self) -> None:
        """Count a `Date` header that was present but not an HTTP date at all."""
        self.ignored += 1
