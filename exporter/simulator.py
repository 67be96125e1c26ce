"""A faithful fake of KooDrive's space usage overview endpoint.

It enforces what the docs say (koodrive-api.md sections 2 and 4): X-Date format and its
one-sided 15-minute window, the HMAC signature for app accounts, the token for token
accounts, a known X-User-Id, a 58-character X-Traceid when one is sent. The signature check
is written here from the docs on purpose, without calling `signing`: a test where the
client and the simulator agree then means two independent readings agree.

Auth-failure body codes are not documented; the simulator answers HTTP 400 with code
13000102 for malformed parameters and HTTP 401 with code 401 for rejected credentials.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from .config import AccountConfig, AppAuth, Config
from .credentials import CredentialStore
from .model import FetchError, Usage

OVERVIEW_PATH = "/koodrive/ose/v1/space/usage/overview"
X_DATE_WINDOW = 15 * 60
_X_DATE = re.compile(r"\d{8}T\d{6}Z")
_TRACE_ID = re.compile(r"[A-Za-z0-9]{58}")
_APP_AUTH = re.compile(r"HMAC-SHA256 AppId=([^,\s]+),SignedHeaders=([a-z0-9;-]+),Signature=(\S+)")
_REQUIRED_SIGNED = {"host", "x-date", "x-user-id"}
KB_PER_GIB = 1024 * 1024
_CAPACITIES_GIB = (100, 500, 1024, 5 * 1024, 10 * 1024)
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Growth:
    """Deterministic usage curve of one account: a linear trend with a small hourly wave."""

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
        wave = 0.001 * self.capacity_kb * math.sin(2 * math.pi * elapsed / 3600)
        used = self.used_start_kb + self.growth_kb_per_day * elapsed / DAY + wave
        return Usage(
            allocation_kb=self.allocation_kb,
            capacity_kb=self.capacity_kb,
            used_kb=max(0, int(used)),
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    account: str
    x_date: str
    trace_id: str
    server_time: float


class Reject(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        self.status, self.code, self.msg = status, code, msg
        super().__init__(msg)


class Simulator:
    """In-process fake KooDrive; `app()` serves it, the other methods steer it from tests."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._started = clock()
        self._credentials = CredentialStore()
        self._by_user: dict[str, list[AccountConfig]] = {}
        for account in config.accounts:
            self._by_user.setdefault(account.user_id, []).append(account)
        self._growth = {a.name: Growth.for_account(a.name) for a in config.accounts}
        self._fixed: dict[str, Usage] = {}
        self.clock_offset = 0.0
        self.outcomes: Counter[str] = Counter()
        # Recently accepted requests, for tests that check every X-Date was fresh.
        self.accepted: deque[Accepted] = deque(maxlen=10_000)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(OVERVIEW_PATH, self._overview)
        return app

    def usage(self, name: str) -> Usage:
        fixed = self._fixed.get(name)
        if fixed is not None:
            return fixed
        return self._growth[name].at(self._clock() - self._started)

    def set_usage(self, name: str, usage: Usage) -> None:
        """Pin an account's usage (stops its growth), e.g. to drive it to 95 %."""
        if name not in self._growth:
            raise KeyError(name)
        self._fixed[name] = usage

    def server_now(self) -> float:
        return self._clock() + self.clock_offset

    async def _overview(self, request: web.Request) -> web.Response:
        try:
            account = self._authenticate(request)
        except Reject as exc:
            self.outcomes[f"rejected:{exc.status}"] += 1
            return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)
        usage = self.usage(account.name)
        self.outcomes["accepted"] += 1
        self.accepted.append(
            Accepted(
                account=account.name,
                x_date=request.headers["X-Date"],
                trace_id=request.headers.get("X-Traceid", ""),
                server_time=self.server_now(),
            )
        )
        return web.json_response(
            {
                "data": {
                    "totalAllocation": usage.allocation_kb,
                    "totalCapacity": usage.capacity_kb,
                    "totalUsed": usage.used_kb,
                },
                "code": 0,
                "msg": "success",
            }
        )

    def _authenticate(self, request: web.Request) -> AccountConfig:
        headers = request.headers
        for name in ("X-User-Id", "X-Date", "Authorization"):
            if not headers.get(name):
                raise Reject(400, 13000102, f"parameter validation failed: {name} is required")
        trace_id = headers.get("X-Traceid")
        if trace_id is not None and not _TRACE_ID.fullmatch(trace_id):
            raise Reject(400, 13000102, "parameter validation failed: X-Traceid must be 58 chars")
        self._check_x_date(headers["X-Date"])
        candidates = self._by_user.get(headers["X-User-Id"])
        if not candidates:
            raise Reject(401, 401, "unknown X-User-Id")
        failure = "authentication failed"
        for account in candidates:
            try:
                if isinstance(account.auth, AppAuth):
                    secret = self._credentials.credentials(account).app_secret  # type: ignore[union-attr]
                    failure = _verify_app_auth(request, account.auth.app_id, secret)
                else:
                    token = self._credentials.credentials(account).token  # type: ignore[union-attr]
                    ok = hmac.compare_digest(headers["Authorization"].encode(), token.encode())
                    failure = "" if ok else "invalid access token"
            except FetchError:
                failure = "credentials unavailable on the server"
            if not failure:
                return account
        raise Reject(401, 401, failure)

    def _check_x_date(self, value: str) -> None:
        if not _X_DATE.fullmatch(value):
            raise Reject(400, 13000102, "parameter validation failed: X-Date format")
        try:
            signed_at = calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise Reject(400, 13000102, "parameter validation failed: X-Date format") from None
        now = self.server_now()
        if signed_at > now:
            raise Reject(401, 401, "X-Date is later than the server time")
        if now - signed_at > X_DATE_WINDOW:
            raise Reject(401, 401, "X-Date is older than 15 minutes")


def _verify_app_auth(request: web.Request, app_id: str, secret: str) -> str:
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
    simulator: Simulator, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve the simulator; returns the runner (call `cleanup()`) and its base URL."""
    runner = web.AppRunner(simulator.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"
