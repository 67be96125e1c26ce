"""The KooDrive HTTP client: one shared aiohttp session, one method per endpoint.

Every failure leaves as a FetchError with a bounded `reason`; the poller never has to know
about aiohttp's exception zoo.
"""

from __future__ import annotations

import json
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from . import __version__
from .clock import SkewEstimator, parse_http_date, parse_retry_after
from .config import AccountConfig
from .credentials import CredentialStore
from .model import FetchError, Reason, Usage, truncate
from .signing import new_trace_id, request_headers

OVERVIEW_PATH = "/koodrive/ose/v1/space/usage/overview"
BODY_LIMIT = 1 << 20
USER_AGENT = f"koodrive-exporter/{__version__}"
AUTH_STATUSES = frozenset({400, 401, 403})
INT64_MAX = (1 << 63) - 1
USAGE_FIELDS = ("totalAllocation", "totalCapacity", "totalUsed")


class KooDriveClient:
    """Signs and sends requests; `clock` and `rng` are injectable for deterministic tests."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: CredentialStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._credentials = credentials
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - trace ids need no secrecy
        self._targets: dict[str, tuple[URL, str, str]] = {}
        # One estimate per account, seeded from the latest estimate for its host: accounts on
        # one host share its clock, but an account's own responses have the last word.
        self._skews: dict[tuple[str, str], SkewEstimator] = {}
        self._host_offsets: dict[str, float] = {}
        self._tls: dict[Path, ssl.SSLContext] = {}
        # Responses within one second share their Date header: parse each value once.
        self._last_date: tuple[str | None, float | None] = (None, None)

    def new_trace_id(self) -> str:
        return new_trace_id(self._rng)

    def clock_skew(self, account: AccountConfig) -> float | None:
        """Server minus local clock for the account's upstream, once a `Date` was seen."""
        estimator = self._skews.get((account.name, self._target(account.endpoint)[1]))
        return None if estimator is None else estimator.offset

    def _skew(self, account: AccountConfig, host: str) -> SkewEstimator:
        estimator = self._skews.get((account.name, host))
        if estimator is None:
            estimator = SkewEstimator()
            estimator.offset = self._host_offsets.get(host)
            self._skews[(account.name, host)] = estimator
        return estimator

    def credentials_changed(self, account: AccountConfig) -> bool:
        """Re-read the account's secret files now; True if what they hold has changed."""
        return self._credentials.refresh(account)

    async def overview(self, account: AccountConfig, trace_id: str) -> Usage:
        """GET the space usage overview of one account, signed afresh for this request.

        X-Date is the local time corrected by the estimated server offset, minus a safety
        margin, because the server refuses any X-Date later than its own clock.
        """
        url, host, path = self._target(account.endpoint)
        skew = self._skew(account, host)
        headers = request_headers(
            self._credentials.credentials(account),
            host=host,
            user_id=account.user_id,
            now=self._clock() + (skew.offset or 0.0) - account.x_date_margin,
            trace_id=trace_id,
            language=account.language,
            path=path,
        )
        headers["Accept"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        status, body, retry_after = await self._get(
            url, headers, account.timeout, skew, self._tls_for(account)
        )
        if skew.offset is not None:
            self._host_offsets[host] = skew.offset
        if status != 200:
            error = _status_error(status, body)
            error.retry_after = retry_after
            raise error
        return parse_overview(body)

    def _target(self, endpoint: str) -> tuple[URL, str, str]:
        target = self._targets.get(endpoint)
        if target is None:
            target = self._targets[endpoint] = target_of(endpoint, OVERVIEW_PATH)
        return target

    def _tls_for(self, account: AccountConfig) -> ssl.SSLContext | bool:
        """Verification always on (system CAs, or the account's ca_file) unless disabled."""
        if account.insecure_skip_verify:
            return False
        if account.ca_file is None:
            return True
        context = self._tls.get(account.ca_file)
        if context is None:
            context = self._tls[account.ca_file] = ssl.create_default_context(
                cafile=account.ca_file
            )
        return context

    def _server_date(self, header: str | None) -> float | None:
        text, value = self._last_date
        if header != text:
            value = parse_http_date(header)
            self._last_date = (header, value)
        return value

    async def _get(
        self,
        url: URL,
        headers: dict[str, str],
        limit: float,
        skew: SkewEstimator,
        tls: ssl.SSLContext | bool,
    ) -> tuple[int, bytes, float | None]:
        """Status, capped body and Retry-After; feeds every response's `Date` to `skew`."""
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
                server_date = self._server_date(response.headers.get("Date"))
                if server_date is not None:
                    skew.observe(server_date, sent_at, received_at)
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


def parse_overview(body: bytes) -> Usage:
    """Parse a 200 body: success only when `code` is 0 and all three totals are int64."""
    document = _json_object(body)
    code = _api_code(document)
    if code is None:
        raise FetchError(Reason.INVALID_RESPONSE, "body has no `code`")
    if code != "0":
        raise _api_error(code, document, status=200)
    data = document.get("data")
    if not isinstance(data, dict):
        raise FetchError(
            Reason.INVALID_RESPONSE, "`data` is missing or not an object", api_code=code
        )
    allocation, capacity, used = (_int64(data, name) for name in USAGE_FIELDS)
    return Usage(allocation_kb=allocation, capacity_kb=capacity, used_kb=used)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError(Reason.INVALID_RESPONSE, "body is not valid JSON") from None
    if not isinstance(document, dict):
        raise FetchError(Reason.INVALID_RESPONSE, "body is not a JSON object")
    return document


def _api_code(document: dict[str, Any]) -> str | None:
    """`code` as a string, whether sent as 0 or "0"; API Gateway errors use `error_code`."""
    for key in ("code", "error_code"):
        value = document.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _api_message(document: dict[str, Any]) -> str:
    for key in ("msg", "error_msg", "message"):
        value = document.get(key)
        if isinstance(value, str):
            return value
    return ""


def _looks_like_auth(code: str) -> bool:
    """API Gateway codes APIGW.03xx are authentication failures (bad token, bad signature)."""
    return code.upper().startswith("APIGW.03")


def _api_error(code: str, document: dict[str, Any], *, status: int) -> FetchError:
    reason = Reason.AUTH if _looks_like_auth(code) else Reason.API_ERROR
    detail = f"code={code} msg={_api_message(document)!r}"
    return FetchError(reason, detail, status=status, api_code=code)


def _status_error(status: int, body: bytes) -> FetchError:
    if status in AUTH_STATUSES:
        reason = Reason.AUTH
    elif status == 429:
        reason = Reason.RATE_LIMITED
    else:
        reason = Reason.HTTP_ERROR
    detail = f"HTTP {status}"
    code = None
    try:
        document = _json_object(body)
    except FetchError:
        pass
    else:
        code = _api_code(document)
        if code is not None:
            detail += f" code={code} msg={_api_message(document)!r}"
            if _looks_like_auth(code):
                reason = Reason.AUTH
    return FetchError(reason, detail, status=status, api_code=code)


def _int64(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    if number is None:
        shown = "missing" if value is None else f"not an integer ({type(value).__name__})"
        raise FetchError(Reason.INVALID_RESPONSE, f"data.{name} is {shown}")
    if not 0 <= number <= INT64_MAX:
        raise FetchError(Reason.INVALID_RESPONSE, f"data.{name} is out of range")
    return number


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


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return truncate(f"{type(exc).__name__}: {text}")
