"""Signing is pure, so it is pinned down with fixed vectors."""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime

import pytest

from exporter.upstream import signing
from exporter.upstream.signing import AppCredentials, TokenCredentials

PATH = "/koodrive/ose/v1/space/usage/overview"
HOST = "intl.myhuaweicloud-koodrive.com"
USER = "1505084218764547200"
# 2024-09-09T03:33:25Z, the X-Date of the worked example in docs/koodrive-api.md section 4.3.
DOC_TIME = datetime(2024, 9, 9, 3, 33, 25, tzinfo=UTC).timestamp()
DOC_CANONICAL = (
    "GET\n"
    "/koodrive/ose/v1/space/usage/overview/\n"
    "\n"
    "host:intl.myhuaweicloud-koodrive.com\n"
    "x-date:20240909T033325Z\n"
    "x-user-id:1505084218764547200\n"
    "\n"
    "host;x-date;x-user-id\n"
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)


def doc_headers() -> dict[str, str]:
    return {"host": HOST, "x-date": "20240909T033325Z", "x-user-id": USER}


def test_canonical_request_matches_our_reference_vector() -> None:
    canonical = signing.canonical_request("GET", PATH, (), doc_headers())
    assert canonical == DOC_CANONICAL
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    assert digest == "423276eef2b64182711dcc762f0adb0d5b384a12bf08623206b191cdea64e7c1"


def test_signature_matches_our_reference_vector() -> None:
    sig = signing.signature("test-app-secret", DOC_CANONICAL)
    assert sig == "b43fba2df77e065ca186e73488e307b0d4a1ddf618ce06b39891c5f5f514405d"


def test_non_ascii_secret_is_keyed_with_its_utf8_bytes() -> None:
    # Expected value computed independently with:
    # printf 'HMAC-SHA256\n4232...e7c1' | openssl dgst -sha256 -hmac '秘密-clé-🔑'
    sig = signing.signature("秘密-clé-🔑", DOC_CANONICAL)
    assert sig == "0405b90401a7ec8c83871a0953a5fb8daaa02acb4667f733918602d03bba92cd"


def test_string_to_sign_has_no_date_or_scope() -> None:
    assert signing.string_to_sign(DOC_CANONICAL) == (
        "HMAC-SHA256\n423276eef2b64182711dcc762f0adb0d5b384a12bf08623206b191cdea64e7c1"
    )


def test_app_auth_headers_for_our_reference_vector() -> None:
    headers = signing.request_headers(
        AppCredentials(app_id="my-app", app_secret="test-app-secret"),
        host=HOST,
        user_id=USER,
        now=DOC_TIME + 0.999,  # truncated, never rounded into the future
        trace_id="t" * 58,
        language="en-US",
        path=PATH,
    )
    assert headers == {
        "Host": HOST,
        "X-Date": "20240909T033325Z",
        "X-User-Id": USER,
        "X-Traceid": "t" * 58,
        "language": "en-US",
        "Authorization": "HMAC-SHA256 AppId=my-app,SignedHeaders=host;x-date;x-user-id,"
        "Signature=b43fba2df77e065ca186e73488e307b0d4a1ddf618ce06b39891c5f5f514405d",
    }


def test_signature_covers_host_with_port_exactly_as_sent() -> None:
    common = {"user_id": USER, "now": DOC_TIME, "trace_id": "t" * 58, "path": PATH}
    creds = AppCredentials(app_id="a", app_secret="k")
    plain = signing.request_headers(creds, host="127.0.0.1", **common)
    with_port = signing.request_headers(creds, host="127.0.0.1:8443", **common)
    assert with_port["Host"] == "127.0.0.1:8443"
    assert plain["Authorization"] != with_port["Authorization"]
    canonical = signing.canonical_request(
        "GET", PATH, (), {"host": "127.0.0.1:8443", "x-date": "20240909T033325Z", "x-user-id": USER}
    )
    assert with_port["Authorization"].endswith(signing.signature("k", canonical))


def test_token_is_sent_verbatim_and_no_language_when_unset() -> None:
    headers = signing.request_headers(
        TokenCredentials(token="Bearer+abc 123"),
        host=HOST,
        user_id=USER,
        now=DOC_TIME,
        trace_id="x" * 58,
        path=PATH,
    )
    assert headers["Authorization"] == "Bearer+abc 123"
    assert "language" not in headers
    assert headers["X-User-Id"] == USER
    assert headers["X-Date"] == "20240909T033325Z"


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, "19700101T000000Z"),
        (DOC_TIME, "20240909T033325Z"),
        (DOC_TIME + 0.9999, "20240909T033325Z"),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp(), "20241231T235959Z"),
        (datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC).timestamp(), "20250203T040506Z"),
    ],
)
def test_x_date_is_utc_basic_iso_and_truncated(epoch: float, expected: str) -> None:
    assert signing.format_x_date(epoch) == expected


def test_signed_path_gets_trailing_slash_once() -> None:
    assert signing.canonical_uri("/a/b") == "/a/b/"
    assert signing.canonical_uri("/a/b/") == "/a/b/"
    assert signing.canonical_uri("/a b/ü") == "/a%20b/%C3%BC/"


def test_canonical_query_encodes_and_sorts_by_character_code() -> None:
    query = [("offset", "0"), ("limit", "10"), ("Zeta", "a b"), ("empty", ""), ("k~", "ü/")]
    assert signing.canonical_query(query) == "Zeta=a%20b&empty=&k~=%C3%BC%2F&limit=10&offset=0"


def test_trace_ids_are_58_alphanumerics_and_fresh() -> None:
    rng = random.Random(7)
    ids = {signing.new_trace_id(rng) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9]{58}", i) for i in ids)


def test_credentials_never_show_secrets_in_repr() -> None:
    assert "hunter2" not in repr(AppCredentials(app_id="a", app_secret="hunter2"))
    assert "hunter2" not in repr(TokenCredentials(token="hunter2"))


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (253402300799.0 + 86340, "99991231T235959Z"),  # 9999 plus a -2359 offset
        (1e300, "99991231T235959Z"),
        (float("inf"), "99991231T235959Z"),
        (-1.79e9, "19700101T000000Z"),  # what a Date of 1970 did to the estimate
        (float("-inf"), "19700101T000000Z"),
        (float("nan"), "19700101T000000Z"),
    ],
)
def test_x_date_is_total_and_clamped(epoch: float, expected: str) -> None:
    assert signing.format_x_date(epoch) == expected


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -1e18, 1e18, 253402387139.0])
def test_request_headers_never_raise(now: float) -> None:
    headers = signing.request_headers(
        AppCredentials(app_id="a", app_secret="k"),
        host=HOST,
        user_id=USER,
        now=now,
        trace_id="x" * 58,
        path=PATH,
    )
    assert re.fullmatch(r"(1970|9999)\d{4}T\d{6}Z", headers["X-Date"])
    assert headers["Authorization"].startswith("HMAC-SHA256 AppId=a,")
