"""The hints are pure: the facts of a failure in, one class and one sentence out."""

from __future__ import annotations

import pytest

from exporter.core.diagnosis import X_DATE_WINDOW, clock_hint, hint_for
from exporter.core.model import DNS_FAILURE, FetchError, Reason

MARGIN = 2.0


def hint_id(error: FetchError, app: bool = True, skew: float | None = 0.0) -> str:
    return hint_for(error, app_auth=app, clock_skew=skew, x_date_margin=MARGIN).id


@pytest.mark.parametrize(
    ("skew", "expected"),
    [
        (None, None),
        (0.0, None),
        (-MARGIN, None),  # the margin absorbs it
        (-MARGIN - 0.5, "clock_ahead"),
        (X_DATE_WINDOW + MARGIN, None),
        (X_DATE_WINDOW + MARGIN + 1, "clock_behind"),
    ],
)
def test_clock_hints_follow_the_x_date_window(skew: float | None, expected: str | None) -> None:
    hint = clock_hint(skew, MARGIN)
    assert (hint.id if hint else None) == expected


def test_an_auth_failure_names_the_clock_before_the_credentials() -> None:
    refused = FetchError(Reason.AUTH, "HTTP 401", status=401)
    assert hint_id(refused, skew=-300) == "clock_ahead"
    assert "300 s ahead" in hint_for(refused, app_auth=True, clock_skew=-300, x_date_margin=2).text
    assert hint_id(refused, app=True) == "auth_app"
    assert hint_id(refused, app=False) == "auth_token"
    assert hint_id(refused, app=False, skew=None) == "auth_token"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FetchError(Reason.CONNECTION, f"{DNS_FAILURE}: x"), "dns"),
        (FetchError(Reason.CONNECTION, "ClientConnectorError: refused"), "connection"),
        (FetchError(Reason.HTTP_ERROR, "HTTP 503", status=503), "upstream_error"),
        (FetchError(Reason.HTTP_ERROR, "HTTP 404", status=404), "http_error"),
        (FetchError(Reason.TLS, "x"), "tls"),
        (FetchError(Reason.TIMEOUT, "x"), "timeout"),
        (FetchError(Reason.RATE_LIMITED, "x"), "rate_limited"),
        (FetchError(Reason.INVALID_RESPONSE, "x"), "invalid_response"),
        (FetchError(Reason.API_ERROR, "x"), "api_error"),
        (FetchError(Reason.INTERNAL, "x"), "internal"),
    ],
)
def test_every_reason_has_a_hint(error: FetchError, expected: str) -> None:
    assert hint_id(error) == expected


@pytest.mark.parametrize("reason", list(Reason))
def test_no_reason_is_left_without_a_sentence(reason: Reason) -> None:
    hint = hint_for(FetchError(reason, "x"), app_auth=False, clock_skew=None, x_date_margin=2)
    assert hint.id
    assert hint.text.endswith(".")
    assert len(hint.text) > 40
