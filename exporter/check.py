"""`koodrive-exporter check`: one live, signed request per account and collector, and a
report that says in plain words what is wrong.

The riskiest moment for a user is the first run against a real tenant: the signing rules are
strict and KooDrive's error bodies terse. `--config.check` stays the offline check (as in
the Prometheus tools); this one talks to KooDrive, with the exporter's own client, so what
passes here is what the exporter will do. A request refused for its X-Date, when the
server's `Date` shows the local clock off, is retried once with the corrected time, as the
exporter itself heals at run time, and the verdict says so.

Nothing printed contains a secret, a token or a signature: reports carry only what the
client's errors carry (which never include request headers), and every text that came from
the upstream is also scrubbed of the account's secrets, in case a server echoes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from .core.diagnosis import clock_hint, hint_for
from .core.endpoints import ENDPOINTS
from .core.model import FetchError, Hint, Reason
from .core.poller import TIMEOUT_GRACE
from .core.settings import AccountConfig, AppAuth, Config
from .upstream.client import USER_AGENT, KooDriveClient, SignedRequest
from .upstream.credentials import CredentialStore
from .upstream.signing import AppCredentials, TokenCredentials, canonical_request, string_to_sign

OK = "ok"
CORRECTED = "ok_after_clock_correction"
FAILED = "failed"
# A signature, with or without its header name, is never printed.
_SIGNATURE = re.compile(r"(?i)signature=\S+|\b[0-9a-f]{64}\b")


@dataclass(frozen=True, slots=True)
class Result:
    """One account's collector, as checked; `to_json` is the documented JSON shape."""

    account: str
    collector: str
    endpoint_host: str
    auth: str
    verdict: str
    status: int | None = None
    code: str | None = None
    message: str = ""
    latency_ms: float | None = None
    clock_offset_s: float | None = None
    reason: str | None = None
    detail: str = ""
    body_head: str = ""
    hint: Hint | None = None
    retried: bool = False
    canonical_request: str | None = None
    string_to_sign: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict != FAILED

    def to_json(self) -> dict[str, object]:
        document = dataclasses.asdict(self)
        document["hint"] = dataclasses.asdict(self.hint) if self.hint else None
        return document


def select(config: Config, names: Sequence[str]) -> tuple[AccountConfig, ...]:
    """The accounts named (all when none are); ValueError names any unknown one."""
    if not names:
        return config.accounts
    known = {account.name: account for account in config.accounts}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no account named {', '.join(map(repr, unknown))} in the config")
    return tuple(known[name] for name in dict.fromkeys(names))


async def run_checks(
    config: Config, accounts: Iterable[AccountConfig], *, verbose: bool = False
) -> list[Result]:
    """Check every collector of every account, at most `max_concurrency` at once."""
    slots = asyncio.Semaphore(config.max_concurrency)
    store = CredentialStore()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        headers={"User-Agent": USER_AGENT},
    ) as session:

        async def one(account: AccountConfig, collector: str) -> Result:
            async with slots:
                return await check_one(session, store, account, collector, verbose=verbose)

        jobs = [one(a, c.name) for a in accounts for c in a.collectors]
        return list(await asyncio.gather(*jobs))


async def check_one(
    session: aiohttp.ClientSession,
    store: CredentialStore,
    account: AccountConfig,
    collector: str,
    *,
    verbose: bool = False,
) -> Result:
    """One collector of one account: a request, and one retry when the clock explains a
    refusal."""
    signed: list[SignedRequest] = []
    client = KooDriveClient(session, store, on_signed=signed.append)
    endpoint = ENDPOINTS[collector]
    base = Result(
        account=account.name,
        collector=collector,
        endpoint_host=urlsplit(account.endpoint).netloc,
        auth="app" if isinstance(account.auth, AppAuth) else "token",
        verdict=FAILED,
    )
    error, latency = await _attempt(client, account, endpoint.name)
    retried = False
    if error is not None and error.reason is Reason.AUTH:
        clock = clock_hint(client.clock_skew(account), account.x_date_margin)
        if clock is not None:  # the client now signs with the corrected time
            retried = True
            error, latency = await _attempt(client, account, endpoint.name)
    skew = client.clock_skew(account)
    secrets = await _secrets(store, account)
    result = dataclasses.replace(
        base,
        latency_ms=round(latency * 1000, 1),
        clock_offset_s=None if skew is None else round(skew, 3),
        retried=retried,
    )
    if verbose and signed:
        result = dataclasses.replace(result, **_canonical(signed[-1]))
    if error is None:
        hint = clock_hint(skew, account.x_date_margin) if retried else None
        verdict = CORRECTED if retried else OK
        return dataclasses.replace(result, verdict=verdict, status=200, hint=hint)
    hint = hint_for(
        error,
        app_auth=isinstance(account.auth, AppAuth),
        clock_skew=skew,
        x_date_margin=account.x_date_margin,
    )
    return dataclasses.replace(
        result,
        status=error.status,
        code=error.api_code,
        message=redact(error.message, secrets),
        reason=str(error.reason),
        detail=redact(error.detail, secrets),
        body_head=redact(error.body_head, secrets),
        hint=hint,
    )


async def _attempt(
    client: KooDriveClient, account: AccountConfig, collector: str
) -> tuple[FetchError | None, float]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(account.timeout + TIMEOUT_GRACE):
            await client.fetch(account, ENDPOINTS[collector], client.new_trace_id())
    except FetchError as exc:
        return exc, time.perf_counter() - started
    except TimeoutError:
        error = FetchError(Reason.TIMEOUT, f"no complete answer within {account.timeout:g}s")
        return error, time.perf_counter() - started
    return None, time.perf_counter() - started


async def _secrets(store: CredentialStore, account: AccountConfig) -> list[str]:
    """The account's secret values, to scrub from anything the upstream said."""
    try:
        credentials = await store.resolve(account)
    except FetchError:
        return []
    if isinstance(credentials, AppCredentials):
        return [credentials.app_secret]
    if isinstance(credentials, TokenCredentials):
        return [credentials.token]
    return []


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SIGNATURE.sub("***", text)


def _canonical(request: SignedRequest) -> dict[str, str]:
    """The canonical request and string to sign, which hold no secret (docs/koodrive-api.md
    section 4.3): what a user compares with Huawei's own tools."""
    headers = {"host": request.host, "x-date": request.x_date, "x-user-id": request.user_id}
    canonical = canonical_request("GET", request.path, request.query, headers)
    return {"canonical_request": canonical, "string_to_sign": string_to_sign(canonical)}


def render_text(results: Sequence[Result], source: str) -> str:
    """The report for a terminal: a line per check, then reason, details and hint for any
    that did not simply pass, then a summary."""
    failed = sum(1 for result in results if not result.passed)
    accounts = len({result.account for result in results})
    lines = [f"koodrive-exporter check: {accounts} account(s), {len(results)} check(s), {source}"]
    width = max((len(f"{r.account} / {r.collector}") for r in results), default=0)
    for r in results:
        verdict = {OK: "ok", CORRECTED: "ok*", FAILED: "FAILED"}[r.verdict]
        facts = [r.endpoint_host, f"{r.auth} auth"]
        facts.append(f"HTTP {r.status}" if r.status is not None else "no HTTP answer")
        if r.code is not None:
            facts.append(f"code {r.code}")
        if r.message:
            facts.append(json.dumps(r.message, ensure_ascii=False))
        if r.latency_ms is not None:
            facts.append(f"{r.latency_ms:.0f} ms")
        if r.clock_offset_s is not None:
            facts.append(f"server clock {r.clock_offset_s:+.1f} s")
        lines.append(f"{f'{r.account} / {r.collector}':<{width}}  {verdict:<6}  {', '.join(facts)}")
        if r.verdict == CORRECTED:
            lines.append("    passed once X-Date was corrected from the server's Date header")
        if r.reason:
            lines.append(f"    reason: {r.reason}: {r.detail}")
        if r.body_head:
            lines.append(f"    body starts: {json.dumps(r.body_head, ensure_ascii=False)}")
        if r.hint:
            lines.append(f"    hint ({r.hint.id}): {r.hint.text}")
        if r.canonical_request is not None:
            lines.append("    canonical request:")
            lines += [f"      | {line}" for line in r.canonical_request.split("\n")]
            lines.append("    string to sign:")
            lines += [f"      | {line}" for line in (r.string_to_sign or "").split("\n")]
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result]) -> str:
    return json.dumps([result.to_json() for result in results], indent=2) + "\n"
