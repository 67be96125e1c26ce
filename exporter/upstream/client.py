"""The KooDrive HTTP client: one shared aiohttp session, any endpoint definition.

It signs, sends and pages a request to whichever endpoint it is given (core/endpoints.py)
and hands the answer's `data` to that endpoint's parser. Every failure leaves as a
FetchError with a bounded `reason`; the poller never has to know about aiohttp's exception
zoo. The envelope it relies on (`code`, `msg`, `data`) is in docs/koodrive-api.md section
2.3, paging by `limit`/`offset` in its section 3.2, and the error shapes, with the reason each
one maps to, in its section 5.
"""

from __future__ import annotations

import json
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from .. import __version__
from ..core.endpoints import Endpoint, int64_field
from ..core.model import (
    BODY_HEAD_LIMIT,
    CODE_LIMIT,
    DNS_FAILURE,
    MESSAGE_LIMIT,
    FetchError,
    Reason,
    truncate,
)
from ..core.settings import AccountConfig
from .clock import PLAUSIBLE_SKEW, SkewEstimator, parse_http_date, parse_retry_after
from .credentials import CredentialStore
from .signing import new_trace_id, request_headers

BODY_LIMIT = 1 << 20
USER_AGENT = f"koodrive-exporter/{__version__}"
AUTH_STATUSES = frozenset({400, 401, 403})
# Pages one poll of a paged endpoint may take: an upstream whose `total` keeps growing, or
# that answers every page with one item, must not hold a poll (and a slot) for ever.
MAX_PAGES = 100
# No usage total needs more than 19 digits; a longer integer is junk, and refusing it here
# keeps int() from spending quadratic time on a 10,000-digit number.
JSON_INT_DIGITS = 40
# Notices kept per account until the poller collects them; one is made per run of bad
# `Date` headers, so this only matters when nobody collects.
NOTICE_LIMIT = 8

Notice = tuple[str, dict[str, object]]


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a request was signed over, without the secret: for `check --verbose`, which
    shows the canonical request so a user can compare with Huawei's own tools."""

    host: str
    x_date: str
    user_id: str
    path: str
    query: tuple[tuple[str, str], ...]


class KooDriveClient:
    """Signs and sends requests; `clock` and `rng` are injectable for deterministic tests."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: CredentialStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_signed: Callable[[SignedRequest], None] | None = None,
    ) -> None:
        self._session = session
        self._on_signed = on_signed
        self._credentials = credentials
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - trace ids need no secrecy
        self._targets: dict[tuple[str, str], tuple[URL, str, str]] = {}
        # One estimate per account, seeded from the latest estimate for its host: accounts on
        # one host share its clock, but an account's own responses have the last word.
        self._skews: dict[tuple[str, str], SkewEstimator] = {}
        self._host_offsets: dict[str, float] = {}
        # Things worth a warning that happened during a request, for the poller to log.
        self._notices: dict[str, deque[Notice]] = {}
        # Responses within one second share their Date header: parse each value once.
        self._last_date: tuple[str | None, float | None] = (None, None)

    def new_trace_id(self) -> str:
        return new_trace_id(self._rng)

    def clock_skew(self, account: AccountConfig) -> float | None:
        """Server minus local clock for the account's upstream, once a `Date` was seen."""
        estimator = self._skews.get((account.name, self._host(account.endpoint)))
        return None if estimator is None else estimator.offset

    def _skew(self, account: AccountConfig, host: str) -> SkewEstimator:
        estimator = self._skews.get((account.name, host))
        if estimator is None:
            estimator = SkewEstimator()
            estimator.offset = self._host_offsets.get(host)
            self._skews[(account.name, host)] = estimator
        return estimator

    async def credentials_changed(self, account: AccountConfig) -> bool:
        """Re-read the account's secret files now; True if what they hold has changed."""
        return await self._credentials.refresh_async(account)

    def drain_notices(self, account: AccountConfig) -> list[Notice]:
        """Warnings (event, fields) gathered for the account since the last call."""
        notices = self._notices.pop(account.name, None)
        return list(notices) if notices else []

    def forget(self, gone: Iterable[AccountConfig], keep: Iterable[AccountConfig]) -> None:
        """Drop what was cached for removed or changed accounts (their old configs).

        Skew estimates of a changed account start afresh (from its host's latest estimate);
        files are dropped unless an unchanged account in `keep` uses them too.
        """
        gone, keep = list(gone), list(keep)
        names = {account.name for account in gone}
        for key in [key for key in self._skews if key[0] in names]:
            del self._skews[key]
        for name in names:
            self._notices.pop(name, None)
        endpoints = {account.endpoint for account in keep}
        hosts = {self._host(endpoint) for endpoint in endpoints}
        for key in [key for key in self._targets if key[0] not in endpoints]:
            del self._targets[key]
        for host in [h for h in self._host_offsets if h not in hosts]:
            del self._host_offsets[host]
        self._credentials.forget(gone, keep)

    async def fetch(self, account: AccountConfig, endpoint: Endpoint, trace_id: str) -> object:
        """GET one endpoint for one account (every page of it) and parse the answer.

        A paged endpoint is read until `total` items are collected or a page is empty: the
        server may return fewer items than asked on any page, so a short page alone does
        not end it. Each page is a request of its own, signed afresh. What a hostile server
        can make it hold is bounded before anything is kept: a `total` above the
        endpoint's `max_items`, or a page longer than asked, is refused outright.
        """
        if not endpoint.paged:
            body = await self._body(account, endpoint.path, (), trace_id)
            return parse_answer(endpoint, body, account.kilobyte)
        items: list[object] = []
        limit = account.page_size
        for _ in range(MAX_PAGES):
            query = (("limit", str(limit)), ("offset", str(len(items))))
            document = _success(await self._body(account, endpoint.path, query, trace_id))
            page = document.get("data")
            if not isinstance(page, list):
                raise _refused("`data` is missing or not a list")
            total = _parsed_total(document, endpoint)
            if len(page) > limit:
                raise _refused(f"a page of {len(page)} items where {limit} were asked for")
            items += page
            if not page or len(items) >= total:
                return _parsed(endpoint, items, account.kilobyte)
        raise _refused(f"more than {MAX_PAGES} pages ({len(items)} items so far)")

    async def _body(
        self, account: AccountConfig, path: str, query: tuple[tuple[str, str], ...], trace_id: str
    ) -> bytes:
        """One signed GET: the body of a 200 answer; FetchError for any other status.

        X-Date is the local time corrected by the estimated server offset, minus a safety
        margin, because the server refuses any X-Date later than its own clock.
        """
        url, host, signed_path = self._target(account.endpoint, path)
        skew = self._skew(account, host)
        credentials = await self._credentials.resolve(account)
        tls = await self._credentials.tls(account)
        headers = request_headers(
            credentials,
            host=host,
            user_id=account.user_id,
            now=self._clock() + _usable(skew.offset) - account.x_date_margin,
            trace_id=trace_id,
            language=account.language,
            path=signed_path,
            query=query,
        )
        headers["Accept"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        if self._on_signed is not None:
            x_date = headers["X-Date"]
            self._on_signed(SignedRequest(host, x_date, account.user_id, signed_path, query))
        if query:
            url = url.with_query(query)
        status, body, retry_after = await self._get(url, headers, account, skew, tls)
        if skew.offset is not None:
            self._host_offsets[host] = skew.offset
        if status != 200:
            error = _status_error(status, body)
            error.retry_after = retry_after
            raise error
        return body

    def _target(self, endpoint: str, path: str) -> tuple[URL, str, str]:
        target = self._targets.get((endpoint, path))
        if target is None:
            target = self._targets[(endpoint, path)] = target_of(endpoint, path)
        return target

    def _host(self, endpoint: str) -> str:
        """The Host header value of the account's upstream: what skew estimates are per."""
        return self._target(endpoint, "")[1]

    def _server_date(self, header: str | None) -> float | None:
        text, value = self._last_date
        if header != text:
            value = parse_http_date(header)
            self._last_date = (header, value)
        return value

    def _observe_date(
        self,
        account: AccountConfig,
        url: URL,
        skew: SkewEstimator,
        header: str | None,
        sent_at: float,
        received_at: float,
    ) -> None:
        """Feed a `Date` to the estimate; note the first of a run of unusable ones.

        A broken header is ignored rather than trusted, so the next sane one is all it
        takes to carry on; noting only the first keeps a persistently broken upstream
        from writing a warning per poll.
        """
        if header is None:
            return
        server_date = self._server_date(header)
        if server_date is None:
            skew.reject()
            why = "not an RFC 9110 HTTP-date in GMT"
        elif skew.observe(server_date, sent_at, received_at):
            return
        else:
            why = f"more than {PLAUSIBLE_SKEW:g}s from the local clock"
        if skew.ignored == 1:
            fields: dict[str, object] = {"host": url.host, "date": truncate(header, 64), "why": why}
            notices = self._notices.setdefault(account.name, deque(maxlen=NOTICE_LIMIT))
            notices.append(("server_date_ignored", fields))

    async def _get(
        self,
        url: URL,
        headers: dict[str, str],
        account: AccountConfig,
        skew: SkewEstimator,
        tls: ssl.SSLContext | bool,
    ) -> tuple[int, bytes, float | None]:
        """Status, capped body and Retry-After; feeds every response's `Date` to `skew`."""
        limit = account.timeout
        sent_at = self._clock()
        try:
            async with self._session.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
                ssl=tls,
            ) as response:
                received_at = self._clock()
                date = response.headers.get("Date")
                self._observe_date(account, url, skew, date, sent_at, received_at)
                retry_after = parse_retry_after(response.headers.get("Retry-After"), received_at)
                return response.status, await _read_capped(response), retry_after
        except TimeoutError:
            raise FetchError(Reason.TIMEOUT, f"no complete answer within {limit:g}s") from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise FetchError(Reason.TLS, f"TLS failure: {_describe(exc)}") from None
        except ssl.SSLError as exc:
            raise FetchError(Reason.TLS, f"TLS failure: {_describe(exc)}") from None
        except aiohttp.ClientResponseError as exc:
            raise FetchError(
                Reason.INVALID_RESPONSE, f"malformed HTTP response: {exc.message}"
            ) from None
        except aiohttp.ClientConnectorDNSError as exc:
            raise FetchError(Reason.CONNECTION, f"{DNS_FAILURE}: {_describe(exc)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(Reason.CONNECTION, _describe(exc)) from None


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """Read at most BODY_LIMIT bytes (after decompression), so a runaway body cannot OOM us."""
    if response.content_length is not None and response.content_length > BODY_LIMIT:
        raise FetchError(
            Reason.INVALID_RESPONSE,
            f"body of {response.content_length} bytes exceeds the {BODY_LIMIT} byte limit",
            status=response.status,
        )
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > BODY_LIMIT:
            raise FetchError(
                Reason.INVALID_RESPONSE,
                f"body exceeds the {BODY_LIMIT} byte limit",
                status=response.status,
            )
    return bytes(body)


def _success(body: bytes) -> dict[str, Any]:
    """A 200 body, as a JSON object: success only when `code` is 0."""
    try:
        document = _json_object(body)
    except FetchError as exc:
        exc.status = 200  # the answer came, and said 200; its body did not hold
        raise
    code = _api_code(document)
    if code is None:
        raise FetchError(Reason.INVALID_RESPONSE, "body has no `code`", status=200)
    if code != "0":
        raise _api_error(code, document, status=200)
    return document


def _refused(detail: str) -> FetchError:
    """A success answer (`code` 0) whose paging cannot be trusted."""
    return FetchError(Reason.INVALID_RESPONSE, detail, status=200, api_code="0")


def _parsed_total(document: dict[str, Any], endpoint: Endpoint) -> int:
    try:
        total = int64_field(document, "total", where="")
    except FetchError as exc:
        raise _refused(exc.detail) from None
    if endpoint.max_items is not None and total > endpoint.max_items:
        raise _refused(f"total of {total} items, more than the {endpoint.max_items} read")
    return total


def parse_answer(endpoint: Endpoint, body: bytes, kilobyte: int) -> object:
    """The result of an unpaged endpoint's 200 body; pure, so tests need no HTTP."""
    return _parsed(endpoint, _success(body).get("data"), kilobyte)


def _parsed(endpoint: Endpoint, data: object, kilobyte: int) -> object:
    """The endpoint's result; its refusals are answers with `code` 0, so they say so."""
    try:
        return endpoint.parse(data, kilobyte)
    except FetchError as exc:
        exc.api_code = exc.api_code or "0"
        exc.status = 200
        raise


class _RefusedJSONError(ValueError):
    """Valid JSON the exporter will not interpret: it cannot know what the sender meant."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refusing duplicate keys: `{"code":1,...,"code":0}` must not read as 0."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _RefusedJSONError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _RefusedJSONError(f"number out of range: {text[:20]}")
    return number


def _bounded_int(text: str) -> int:
    if len(text) > JSON_INT_DIGITS:
        raise _RefusedJSONError(f"integer of {len(text)} digits")
    return int(text)


def _no_constant(name: str) -> object:
    raise _RefusedJSONError(f"{name} is not JSON")


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; FetchError(invalid_response) for anything doubtful."""
    try:
        document = json.loads(
            body,
            object_pairs_hook=_unique_keys,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except _RefusedJSONError as exc:
        raise _not_json(f"body is refused: {exc}", body) from None
    except (ValueError, RecursionError):
        raise _not_json("body is not valid JSON", body) from None
    if not isinstance(document, dict):
        raise _not_json("body is not a JSON object", body)
    return document


def _not_json(detail: str, body: bytes) -> FetchError:
    """An invalid_response carrying the body's first bytes, for a person to recognise it
    (a proxy's error page, an HTML login form): decoded leniently, cleaned, truncated."""
    head = body[: BODY_HEAD_LIMIT * 4].decode("utf-8", "replace")
    return FetchError(Reason.INVALID_RESPONSE, detail, body_head=head)


def _api_code(document: dict[str, Any]) -> str | None:
    """`code` as a string, whether sent as 0 or "0"; API Gateway errors use `error_code`."""
    for key in ("code", "error_code"):
        value = document.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value.strip():
            return truncate(value.strip(), CODE_LIMIT)
    return None


def _api_message(document: dict[str, Any]) -> str:
    for key in ("msg", "error_msg", "message"):
        value = document.get(key)
        if isinstance(value, str):
            return truncate(value, MESSAGE_LIMIT)
    return ""


def _looks_like_auth(code: str) -> bool:
    """API Gateway codes APIGW.03xx are authentication failures (bad token, bad signature)."""
    return code.upper().startswith("APIGW.03")


def _api_error(code: str, document: dict[str, Any], *, status: int) -> FetchError:
    reason = Reason.AUTH if _looks_like_auth(code) else Reason.API_ERROR
    message = _api_message(document)
    detail = f"code={code} msg={message!r}"
    return FetchError(reason, detail, status=status, api_code=code, message=message)


def _status_error(status: int, body: bytes) -> FetchError:
    if status in AUTH_STATUSES:
        reason = Reason.AUTH
    elif status == 429:
        reason = Reason.RATE_LIMITED
    else:
        reason = Reason.HTTP_ERROR
    detail = f"HTTP {status}"
    code, message, head = None, "", ""
    try:
        document = _json_object(body)
    except FetchError as exc:
        head = exc.body_head
    else:
        code = _api_code(document)
        message = _api_message(document)
        if code is not None:
            detail += f" code={code} msg={message!r}"
            if _looks_like_auth(code):
                reason = Reason.AUTH
    return FetchError(reason, detail, status=status, api_code=code, message=message, body_head=head)


def target_of(endpoint: str, api_path: str) -> tuple[URL, str, str]:
    """URL to request, Host header value (as aiohttp would send it) and the path to sign."""
    base = URL(endpoint)
    url = base.with_path(base.path.rstrip("/") + api_path)
    host = (url.raw_host or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port is not None and not url.is_default_port():
        host += f":{url.port}"
    return url, host, url.path


def _usable(offset: float | None) -> float:
    """The estimate to sign with, or none: estimates are bounded, but signing must not
    depend on that, as a signer that raises can never send the request that corrects it."""
    if offset is None or not math.isfinite(offset) or abs(offset) > PLAUSIBLE_SKEW:
        return 0.0
    return offset


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return truncate(f"{type(exc).__name__}: {text}")
