"""A faithful fake of the KooDrive endpoints the exporter polls (core/endpoints.py).

It enforces what the docs say (docs/koodrive-api.md sections 2 and 4): X-Date format and its
one-sided 15-minute window, the HMAC signature for app accounts, the token for token
accounts, a known X-User-Id, a 58-character X-Traceid when one is sent. The signature check
is written here from the docs on purpose, without calling `signing`: a test where the
client and the simulator agree then means two independent readings agree.

Auth-failure body codes are not documented (docs/koodrive-api.md section 5); the simulator
answers HTTP 400 with code 13000102 for a missing or malformed parameter (a required header,
the X-Date format, an X-Traceid that is not 58 characters) and HTTP 401 with code 401 for
rejected credentials or an X-Date outside its window.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import hashlib
import hmac
import math
import re
import socket
import ssl
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from enum import StrEnum
from urllib.parse import quote

from aiohttp import web

from ..core.endpoints import ENDPOINTS
from ..core.model import FetchError, Usage
from ..core.settings import AccountConfig, AppAuth, Config
from ..upstream.credentials import CredentialStore

X_DATE_WINDOW = 15 * 60
_X_DATE = re.compile(r"\d{8}T\d{6}Z")
_TRACE_ID = re.compile(r"[A-Za-z0-9]{58}")
_APP_AUTH = re.compile(r"HMAC-SHA256 AppId=([^,\s]+),SignedHeaders=([a-z0-9;-]+),Signature=(\S+)")
_REQUIRED_SIGNED = {"host", "x-date", "x-user-id"}
KB_PER_GIB = 1024 * 1024
_CAPACITIES_GIB = (100, 500, 1024, 5 * 1024, 10 * 1024)
DAY = 86400.0
TIER_SIZES_GB = (1, 5, 10, 20, 50, 100, 200, 500)
# Items per page of the quota tiers, at most: below the exporter's default `limit` of 100.
MAX_PAGE = 3


@dataclass(frozen=True, slots=True)
class Growth:
    """Deterministic usage curve of one account: a steady trend with a working-day rhythm.

    The daily wave speeds growth up and slows it down by half but never reverses it, so
    forecasts stay meaningful, as they would for a real tenant.
    """

    capacity_kb: int
    allocation_kb: int
    used_start_kb: int
    growth_kb_per_day: float

    @classmethod
    def for_account(cls, name: str) -> Growth:
        digest = hashlib.sha256(name.encode("utf-8")).digest()
        capacity = _CAPACITIES_GIB[digest[0] % len(_CAPACITIES_GIB)] * KB_PER_GIB
        return cls(
            capacity_kb=capacity,
            allocation_kb=capacity * (50 + digest[1] % 46) // 100,
            used_start_kb=capacity * (20 + digest[2] % 51) // 100,
            growth_kb_per_day=capacity * (0.5 + (digest[3] % 26) / 10) / 100,
        )

    def at(self, elapsed: float) -> Usage:
        phase = 2 * math.pi * elapsed / DAY
        wave = 0.5 * self.growth_kb_per_day * math.sin(phase) / (2 * math.pi)
        used = self.used_start_kb + self.growth_kb_per_day * elapsed / DAY + wave
        return Usage(
            allocation_kb=self.allocation_kb,
            capacity_kb=self.capacity_kb,
            used_kb=max(0, int(used)),
        )


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the simulator saw it.

    `account` is the account whose X-User-Id the request carried (even when it was then
    rejected), or "" for an unknown user id.
    """

    account: str
    outcome: str
    x_date: str
    trace_id: str
    server_time: float
    path: str = ""
    query: str = ""


class Reject(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        self.status, self.code, self.msg = status, code, msg
        super().__init__(msg)


class FaultKind(StrEnum):
    """Ways a real upstream misbehaves; each maps to one `reason` on the exporter side."""

    LATENCY = "latency"  # answer after `seconds`
    HANG = "hang"  # never answer (until the client gives up)
    HTTP_5XX = "http_5xx"  # `status`, default 500
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After: `retry_after`
    MALFORMED_JSON = "malformed_json"
    WRONG_TYPES = "wrong_types"
    MISSING_FIELDS = "missing_fields"
    API_ERROR = "api_error"  # HTTP 200 with non-zero `code`
    HUGE_BODY = "huge_body"  # 10 MiB, streamed without a Content-Length
    RESET = "reset"  # TCP reset instead of an answer
    CLOCK_OFFSET = "clock_offset"  # this account's server clock is off by `seconds`
    EXPIRED_TOKEN = "expired_token"  # noqa: S105 - a fault's name, not a credential
    WRONG_SIGNATURE = "wrong_signature"
    DATE = "date"  # a normal answer, but with `date` as its Date header
    DUPLICATE_KEYS = "duplicate_keys"  # HTTP 200, `{"code":1,...,"code":0}`


# The body of DUPLICATE_KEYS: a parser that lets the last key win reads a success.
DUPLICATE_KEYS_BODY = (
    b'{"code":1,"msg":"x","data":{"totalAllocation":1,"totalCapacity":2,"totalUsed":1},"code":0}'
)
# Header values a fault may send: anything an HTTP/1.1 field value can carry (no CR, LF or
# NUL, which would split or end the header), up to a size well past any client's limit.
_HEADER_VALUE = re.compile(r"[^\r\n\x00]{0,65536}")
_FAULT_KEYS = frozenset({"kind", "seconds", "status", "retry_after", "code", "date", "collector"})


@dataclass(frozen=True, slots=True)
class Fault:
    """How an account's answers misbehave. `date`, if set, replaces the Date header of
    every answer about the account, whatever the kind (and even when it is rejected)."""

    kind: FaultKind
    seconds: float = 0.0
    status: int = 500
    retry_after: str = "1"
    code: int = 13000201
    date: str | None = None
    # Only requests to this collector's endpoint misbehave; None: all of them.
    collector: str | None = None

    @classmethod
    def from_json(cls, document: object) -> Fault:
        """Strict: unknown keys, wrong types and unsendable header values are refused."""
        if not isinstance(document, dict) or "kind" not in document:
            raise ValueError(
                'expected {"kind": ..., optional seconds/status/retry_after/code/date}'
            )
        unknown = set(document) - _FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        date = document.get("date")
        status = int(_number(document, "status", 500, integer=True))
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status from 100 to 599")
        return cls(
            kind=FaultKind(document["kind"]),
            seconds=_number(document, "seconds", 0.0),
            status=status,
            retry_after=_header_value(document.get("retry_after", "1"), "retry_after"),
            code=int(_number(document, "code", 13000201, integer=True)),
            date=None if date is None else _header_value(date, "date"),
            collector=_collector(document.get("collector")),
        )


def _collector(value: object) -> str | None:
    if value is not None and value not in ENDPOINTS:
        raise ValueError(f"collector must be one of {sorted(ENDPOINTS)}")
    return value  # type: ignore[return-value]


def _number(raw: dict[str, object], key: str, default: float, *, integer: bool = False) -> float:
    """A JSON number; bools and NaN are refused rather than read as 1 or passed on."""
    value = raw.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{key} must be a {'whole ' if integer else ''}number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{key} is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{key} must be finite")
    return value if isinstance(value, int) else number


def _header_value(value: object, key: str) -> str:
    """Any string a header can carry: the point is to send what a broken upstream sends."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
        raise ValueError(f"{key} must be a string without CR, LF or NUL, at most 64 KiB")
    return value


HUGE_BODY_BYTES = 10 * 1024 * 1024


class Simulator:
    """In-process fake KooDrive; `app()` serves it, the other methods steer it.

    Tests steer it directly; other processes use the admin API under `/-/sim/` (list
    accounts, pin usage, switch faults), which the simulator serves on the same port.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        history: int = 10_000,
        max_page: int = MAX_PAGE,
    ) -> None:
        self._clock = clock
        # The most items a page holds, whatever `limit` asks: smaller than the exporter's
        # default page size, so that paging is exercised by default.
        self.max_page = max_page
        self._started = clock()
        # Simulated seconds of usage growth per real second: a time-lapse for pictures and
        # demos that should show growth within minutes. Auth and dates keep the real clock.
        self.time_lapse = 1.0
        self._credentials = CredentialStore()
        self._by_user: dict[str, list[AccountConfig]] = {}
        for account in config.accounts:
            self._by_user.setdefault(account.user_id, []).append(account)
        self._growth = {a.name: Growth.for_account(a.name) for a in config.accounts}
        self._fixed: dict[str, Usage] = {}
        self._faults: dict[str, Fault] = {}
        self.clock_offset = 0.0
        self.outcomes: Counter[str] = Counter()
        # Recent requests, for tests that check freshness of X-Dates and spacing of retries.
        self.seen: deque[Seen] = deque(maxlen=history)
        # What each endpoint answers an authenticated request with: the `data` and
        # envelope of a success, as a JSON-able object.
        self._answers: dict[str, Callable[[str, web.Request], dict[str, object]]] = {
            "overview": lambda name, _: _usage_body(self.usage(name)),
            "subscription": lambda name, _: subscription_body(self.usage(name), name),
            "quota_tiers": self._quota_tiers,
        }
        missing = set(ENDPOINTS) - set(self._answers)
        if missing:
            raise NotImplementedError(f"the simulator cannot answer {sorted(missing)}")

    def app(self) -> web.Application:
        app = web.Application()
        for endpoint in ENDPOINTS.values():
            handler = self._handler(endpoint.name, self._answers[endpoint.name])
            app.router.add_get(endpoint.path, handler)
        app.router.add_get("/-/sim/accounts", self._admin_list)
        app.router.add_put("/-/sim/accounts/{name}/usage", self._admin_usage)
        app.router.add_put("/-/sim/accounts/{name}/fault", self._admin_fault)
        app.router.add_delete("/-/sim/accounts/{name}/fault", self._admin_fault)
        return app

    @property
    def accepted(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.outcome == "accepted"]

    def usage(self, name: str) -> Usage:
        fixed = self._fixed.get(name)
        if fixed is not None:
            return fixed
        return self._growth[name].at((self._clock() - self._started) * self.time_lapse)

    def set_usage(self, name: str, usage: Usage) -> None:
        """Pin an account's usage (stops its growth), e.g. to drive it to 95 %."""
        if name not in self._growth:
            raise KeyError(name)
        self._fixed[name] = usage

    def set_fault(self, name: str, fault: Fault | None) -> None:
        """Make an account's answers misbehave, or (None) behave again."""
        if name not in self._growth:
            raise KeyError(name)
        if fault is None:
            self._faults.pop(name, None)
        else:
            self._faults[name] = fault

    def server_now(self, account: str | None = None) -> float:
        fault = self._faults.get(account) if account else None
        offset = fault.seconds if fault and fault.kind is FaultKind.CLOCK_OFFSET else 0.0
        return self._clock() + self.clock_offset + offset

    def _handler(
        self, collector: str, answer: Callable[[str, web.Request], dict[str, object]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, collector, answer)

        return handle

    async def _serve(
        self,
        request: web.Request,
        collector: str,
        answer: Callable[[str, web.Request], dict[str, object]],
    ) -> web.StreamResponse:
        """Authenticate like KooDrive, apply the account's fault, else `answer`."""
        candidates = self._by_user.get(request.headers.get("X-User-Id", ""), [])
        # A server has one clock: the account's clock-offset fault applies before auth.
        clock_of = candidates[0].name if candidates else None
        now = self.server_now(clock_of)
        override = self._faults.get(clock_of) if clock_of else None
        if override is not None and override.date is not None:
            date = {"Date": override.date}
        else:
            date = {"Date": formatdate(now, usegmt=True)}
        account: AccountConfig | None = None
        try:
            account = self._authenticate(request, candidates, now)
            fault = self._faults.get(account.name)
            if fault is not None and fault.collector not in (None, collector):
                fault = None
            if fault is not None and fault.kind is FaultKind.EXPIRED_TOKEN:
                raise Reject(401, 401, "access token expired")
            if fault is not None and fault.kind is FaultKind.WRONG_SIGNATURE:
                raise Reject(401, 401, "signature mismatch")
        except Reject as exc:
            who = account.name if account else (clock_of or "")
            self._note(request, who, f"rejected:{exc.status}", now)
            body = {"code": exc.code, "msg": exc.msg}
            return web.json_response(body, status=exc.status, headers=date)
        if fault is not None and fault.kind not in (FaultKind.CLOCK_OFFSET, FaultKind.DATE):
            self._note(request, account.name, f"fault:{fault.kind}", now)
            return await self._misbehave(request, account.name, fault, date, answer)
        try:
            body = answer(account.name, request)
        except Reject as exc:
            self._note(request, account.name, f"rejected:{exc.status}", now)
            body = {"code": exc.code, "msg": exc.msg}
            return web.json_response(body, status=exc.status, headers=date)
        self._note(request, account.name, "accepted", now)
        return web.json_response(body, headers=date)

    def _quota_tiers(self, name: str, request: web.Request) -> dict[str, object]:
        """One page of the account's tiers; `limit`/`offset` as the docs name them, offset
        counting items; a bad value is the documented parameter-validation error."""
        tiers = quota_tiers(self.usage(name), name)
        try:
            limit = int(request.query.get("limit", str(self.max_page)))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            raise Reject(400, 13000102, "parameter validation failed: limit/offset") from None
        if limit < 1 or offset < 0:
            raise Reject(400, 13000102, "parameter validation failed: limit/offset")
        page = tiers[offset : offset + min(limit, self.max_page)]
        return {"code": 0, "msg": "success", "data": page, "total": len(tiers)}

    def _note(self, request: web.Request, account: str, outcome: str, now: float) -> None:
        self.outcomes[outcome] += 1
        headers = request.headers
        self.seen.append(
            Seen(
                account,
                outcome,
                headers.get("X-Date", ""),
                headers.get("X-Traceid", ""),
                now,
                request.path,
                request.query_string,
            )
        )

    async def _misbehave(
        self,
        request: web.Request,
        name: str,
        fault: Fault,
        headers: dict[str, str],
        answer: Callable[[str, web.Request], dict[str, object]],
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind is FaultKind.LATENCY:
            await _sleep_while_connected(request, fault.seconds)
            return web.json_response(answer(name, request), headers=headers)
        if kind is FaultKind.HANG:
            await _sleep_while_connected(request, 3600.0)
            return web.Response(status=504, headers=headers)
        if kind is FaultKind.RESET:
            _reset(request)
            return web.Response(status=500)
        if kind is FaultKind.HUGE_BODY:
            return await _stream_huge(request, headers)
        body: object
        status = 200
        if kind is FaultKind.HTTP_5XX:
            status, body = fault.status, {"code": fault.code, "msg": "inner server invoke failure"}
        elif kind is FaultKind.RATE_LIMIT:
            status, body = 429, {"code": 429, "msg": "too many requests"}
            headers = {**headers, "Retry-After": fault.retry_after}
        elif kind is FaultKind.API_ERROR:
            body = {"code": fault.code, "msg": "space missing or abnormal state"}
        elif kind is FaultKind.DUPLICATE_KEYS:
            return web.Response(
                body=DUPLICATE_KEYS_BODY, content_type="application/json", headers=headers
            )
        elif kind is FaultKind.MALFORMED_JSON:
            return web.Response(
                body=b'{"code":0,"msg":"success","data":{"totalAlloca',
                content_type="application/json",
                headers=headers,
            )
        elif kind is FaultKind.WRONG_TYPES:
            body = {
                "code": 0,
                "data": {"totalAllocation": [1], "totalCapacity": True, "totalUsed": {"kb": 1}},
            }
        else:  # MISSING_FIELDS
            body = {"code": 0, "msg": "success", "data": {"totalCapacity": 1}}
        return web.json_response(body, status=status, headers=headers)

    async def _admin_list(self, _: web.Request) -> web.Response:
        accounts = {
            name: {
                "usage": dataclasses.asdict(self.usage(name)),
                "fault": dataclasses.asdict(self._faults[name]) if name in self._faults else None,
            }
            for name in self._growth
        }
        return web.json_response({"accounts": accounts, "outcomes": dict(self.outcomes)})

    async def _admin_usage(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            document = await request.json()
            usage = Usage(
                **{k: int(document[k]) for k in ("allocation_kb", "capacity_kb", "used_kb")}
            )
            self.set_usage(name, usage)
        except KeyError:
            return web.json_response({"error": "unknown account or missing key"}, status=404)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(dataclasses.asdict(usage))

    async def _admin_fault(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            fault = None if request.method == "DELETE" else Fault.from_json(await request.json())
            self.set_fault(name, fault)
        except KeyError:
            return web.json_response({"error": f"unknown account {name!r}"}, status=404)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"account": name, "fault": fault and dataclasses.asdict(fault)})

    def _authenticate(
        self, request: web.Request, candidates: list[AccountConfig], now: float
    ) -> AccountConfig:
        headers = request.headers
        for name in ("X-User-Id", "X-Date", "Authorization"):
            if not headers.get(name):
                raise Reject(400, 13000102, f"parameter validation failed: {name} is required")
        trace_id = headers.get("X-Traceid")
        if trace_id is not None and not _TRACE_ID.fullmatch(trace_id):
            raise Reject(400, 13000102, "parameter validation failed: X-Traceid must be 58 chars")
        _check_x_date(headers["X-Date"], now)
        if not candidates:
            raise Reject(401, 401, "unknown X-User-Id")
        failure = "authentication failed"
        for account in candidates:
            try:
                if isinstance(account.auth, AppAuth):
                    secret = self._credentials.credentials(account).app_secret  # type: ignore[union-attr]
                    failure = verify_app_auth(request, account.auth.app_id, secret)
                else:
                    token = self._credentials.credentials(account).token  # type: ignore[union-attr]
                    ok = hmac.compare_digest(headers["Authorization"].encode(), token.encode())
                    failure = "" if ok else "invalid access token"
            except FetchError:
                failure = "credentials unavailable on the server"
            if not failure:
                return account
        raise Reject(401, 401, failure)


def _check_x_date(value: str, now: float) -> None:
    if not _X_DATE.fullmatch(value):
        raise Reject(400, 13000102, "parameter validation failed: X-Date format")
    try:
        signed_at = calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise Reject(400, 13000102, "parameter validation failed: X-Date format") from None
    if signed_at > now:
        raise Reject(401, 401, "X-Date is later than the server time")
    if now - signed_at > X_DATE_WINDOW:
        raise Reject(401, 401, "X-Date is older than 15 minutes")


def _shares(total: int, weights: tuple[int, ...]) -> list[int]:
    """`total` split in proportion to `weights`, the remainder on the last: sums stay exact."""
    parts = [total * weight // sum(weights) for weight in weights[:-1]]
    return [*parts, total - sum(parts)]


def subscription_body(usage: Usage, name: str) -> dict[str, object]:
    """quotaUsed, consistent with the overview: `spaceUsed` is its totalUsed (KB), the
    per-type figures sum to the totals, quotas in GB sum to the capacity."""
    digest = hashlib.sha256(f"subscription:{name}".encode()).digest()
    capacity_gb = usage.capacity_kb // KB_PER_GIB
    dept, personal, group, reserved = _shares(capacity_gb, (6, 2, 2, 0))
    used = _shares(usage.used_kb, (2 + digest[0] % 5, 2 + digest[1] % 5, 1 + digest[2] % 3))
    assigned = [quota * (10 + digest[3] % 60) // 100 for quota in (dept, personal, group)]
    limit = (50, 100, 500, 1000)[digest[4] % 4]
    data = {
        "spaceCapacity": capacity_gb,
        "userCount": limit * (30 + digest[5] % 65) // 100,
        "userMaxCount": limit,
        "deptSpaceQuota": dept,
        "personalSpaceQuota": personal,
        "groupSpaceQuota": group,
        "reservedSpaceQuota": reserved,
        "deptSpaceQuotaUsed": assigned[0],
        "personalSpaceQuotaUsed": assigned[1],
        "groupSpaceQuotaUsed": assigned[2],
        "spaceQuotaUsed": sum(assigned),
        "deptSpaceUsed": used[0],
        "personalSpaceUsed": used[1],
        "groupSpaceUsed": used[2],
        "spaceUsed": usage.used_kb,
        "packageDownloadExpires": 7,
        "productType": "1",
    }
    return {"code": 0, "msg": "success", "data": data}


def quota_tiers(usage: Usage, name: str) -> list[dict[str, object]]:
    """The account's quota tiers (1 GB to 100 GB, five to eight of them), splitting the
    overview's totals exactly, so that the tiers add up to what the overview says."""
    digest = hashlib.sha256(f"tiers:{name}".encode()).digest()
    sizes = TIER_SIZES_GB[: 5 + digest[0] % 4]
    weights = tuple(1 + digest[1 + i] % 9 for i in range(len(sizes)))
    columns = zip(
        _shares(usage.allocation_kb, weights),
        _shares(usage.capacity_kb, weights),
        _shares(usage.used_kb, weights),
        strict=True,
    )
    return [
        {"quota": str(size), "totalAllocation": a, "totalCapacity": c, "totalUsed": u}
        for size, (a, c, u) in zip(sizes, columns, strict=True)
    ]


def _usage_body(usage: Usage) -> dict[str, object]:
    return {
        "data": {
            "totalAllocation": usage.allocation_kb,
            "totalCapacity": usage.capacity_kb,
            "totalUsed": usage.used_kb,
        },
        "code": 0,
        "msg": "success",
    }


async def _sleep_while_connected(request: web.Request, seconds: float) -> None:
    """Sleep, but stop early once the client has gone, so hung handlers do not pile up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(0.05, deadline - loop.time()))


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:  # SO_LINGER with a zero timeout turns close() into a TCP RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()


async def _stream_huge(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b" " * 65536
    try:
        for _ in range(HUGE_BODY_BYTES // len(chunk)):
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading at its limit, as it should
    return response


def verify_app_auth(request: web.Request, app_id: str, secret: str) -> str:
    """Recompute the documented signature; return why it fails, or "" when it matches."""
    match = _APP_AUTH.fullmatch(request.headers["Authorization"])
    if match is None:
        return "malformed Authorization header"
    if not hmac.compare_digest(match[1].encode(), app_id.encode()):
        return "unknown AppId"
    signed = match[2].split(";")
    if not set(signed) >= _REQUIRED_SIGNED or signed != sorted(set(signed)):
        return "SignedHeaders must list host;x-date;x-user-id in order"
    path = request.rel_url.raw_path
    if not path.endswith("/"):
        path += "/"
    query = "&".join(
        sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in request.query.items())
    )
    header_lines = "".join(f"{name}:{request.headers.get(name, '').strip()}\n" for name in signed)
    canonical = "\n".join(
        [
            request.method,
            path,
            query,
            header_lines,
            ";".join(signed),
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    expected = hmac.new(
        secret.encode("utf-8"), f"HMAC-SHA256\n{digest}".encode(), hashlib.sha256
    ).hexdigest()
    return "" if hmac.compare_digest(expected, match[3]) else "signature mismatch"


async def start_simulator(
    simulator: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve the simulator; returns the runner (call `cleanup()`) and its base URL."""
    runner = web.AppRunner(simulator.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{shown}:{bound_port}"
