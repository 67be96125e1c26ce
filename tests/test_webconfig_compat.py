"""exporter-toolkit compatibility: its verdict on every case of its test data, and the same
behaviour at run time for what it accepts, over real TLS on 127.0.0.1.

The fixtures (tests/fixtures/webconfig) are our own files, one per toolkit test file, and
cases.yml holds the toolkit's verdict for each. The run-time tests serve through HttpGuard
itself (the TLS handshake, the SAN check, the rate limit) with a one-line handler.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web
from support import ROOT, LogCapture

from exporter.core.settings import ConfigError, Secret
from exporter.web.access import Access, TokenBucket
from exporter.web.edge import Edge, listen
from exporter.web.webconfig import RateLimit, load_web_config

FIXTURES = Path(__file__).parent / "fixtures" / "webconfig"
CASES: dict[str, list[object]] = yaml.safe_load((FIXTURES / "cases.yml").read_text())
RSA = trustme.KeyType.RSA
# Bounds for the run-time tests: every client call gives up after this long.
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Pki:
    directory: Path
    server_ca: trustme.CA
    client_ca: trustme.CA
    client: trustme.LeafCert
    stranger: trustme.LeafCert  # a client certificate from a CA nobody trusts


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("webconfig")
    server_ca, client_ca = trustme.CA(key_type=RSA), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost", key_type=RSA)
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    client_ca.cert_pem.write_to_path(str(directory / "client_ca.pem"))
    client = client_ca.issue_cert("client.example", "127.0.0.1")
    stranger = trustme.CA().issue_cert("client.example")
    return Pki(directory, server_ca, client_ca, client, stranger)


def fixture(pki: Pki, name: str, **replace: str) -> Path:
    """The fixture copied next to the PKI, @SERVER_CERT@/@SERVER_KEY@ lines filled in."""
    pem = {
        "@SERVER_CERT@": (pki.directory / "server.crt").read_text(),
        "@SERVER_KEY@": (pki.directory / "server.key").read_text(),
    }
    lines = []
    for line in (FIXTURES / name).read_text().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        body = pem.get(line.strip())
        lines.extend([indent + row for row in body.splitlines()] if body else [line])
    text = "\n".join(lines) + "\n"
    for old, new in replace.items():
        text = text.replace(old, new)
    target = pki.directory / name
    target.write_text(text, encoding="utf-8")
    return target


def verdict(path: Path) -> str:
    try:
        load_web_config(path)
    except ConfigError:
        return "reject"
    return "accept"


def test_every_toolkit_file_has_a_fixture() -> None:
    """41 web configs in the toolkit's testdata, each covered once, each fixture used."""
    toolkit_files = [case[0] for case in CASES.values()]
    assert len(toolkit_files) == len(set(toolkit_files)) == 41
    fixtures = {path.name for path in FIXTURES.glob("*.yml")} - {"cases.yml"}
    assert fixtures == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_toolkit_verdict(pki: Pki, name: str) -> None:
    toolkit_file, toolkit_verdict, ours, *note = CASES[name]
    assert verdict(fixture(pki, name)) == ours, toolkit_file
    if ours != toolkit_verdict:
        # A difference is deliberate and explained (docs/security.md's table lists it).
        assert note, name
        assert isinstance(note[0], dict), name
        assert note[0].get("differs"), name


def test_the_differences_are_few_and_documented() -> None:
    differing = sorted(name for name, case in CASES.items() if case[1] != case[2])
    assert differing == ["all_curves.yml"]
    security = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    table = security.split("- Differences from exporter-toolkit v0.17.1.", 1)[1].split("\n\n- ")[0]
    for name in differing:
        assert f"test data: `{CASES[name][0]}`" in table, name


def test_an_inline_key_stays_out_of_errors_and_reprs(pki: Pki) -> None:
    config = load_web_config(fixture(pki, "require_any_key_inline.yml"))
    line = (pki.directory / "server.key").read_text().splitlines()[1]
    assert config.tls is not None
    assert isinstance(config.tls.key, Secret)
    assert line not in repr(config)
    # A key that does not match the certificate: refused without quoting it.
    other = trustme.CA().issue_cert("x").private_key_pem.bytes().decode()
    broken = pki.directory / "mismatch.yml"
    broken.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key: |\n"
        + "".join(f"    {row}\n" for row in other.splitlines())
    )
    with pytest.raises(ConfigError) as info:
        load_web_config(broken)
    assert "tls_server_config" in str(info.value)
    assert other.splitlines()[1] not in str(info.value)


def test_inline_pem_leaves_no_descriptor_and_no_file(pki: Pki) -> None:
    """The key goes through an anonymous memory file, closed as soon as OpenSSL read it."""
    before = sorted(os.listdir("/proc/self/fd"))
    listing = sorted(os.listdir(pki.directory))
    load_web_config(fixture(pki, "inline_cert_and_key.yml"))
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert sorted(os.listdir(pki.directory)) == sorted({*listing, "inline_cert_and_key.yml"})


# --- run time, over real TLS ----------------------------------------------------------


async def _hello(_request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="Hello World!")


@asynccontextmanager
async def served(path: Path) -> AsyncIterator[tuple[str, Access, Edge]]:
    """The edge and access control in front of a one-line handler, listening on 127.0.0.1."""
    config = load_web_config(path)
    access = Access(config, str(path), LogCapture().log)
    edge = Edge(access.tls_choice)
    server = web.Server(access.guarded(edge, _hello))
    listener = await listen(server, edge, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    scheme = "https" if access.tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/", access, edge
    finally:
        listener.close()
        await server.shutdown(1)
        await listener.wait_closed()


def client(pki: Pki, certificate: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.server_ca.configure_trust(context)
    if certificate is not None:
        certificate.configure_cert(context)
    return context


async def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """Status and body, or (0, reason) when the connection or handshake fails."""
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, ssl=context if context is not None else False) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as exc:
        return 0, type(exc).__name__


async def handshake(url: str, context: ssl.SSLContext) -> tuple[str, int, str]:
    """The cipher a raw TLS connection negotiates and its HTTP status line, or the error."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            cipher = writer.get_extra_info("cipher")[0]
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = int((await reader.readline()).split()[1])
            writer.close()
            return cipher, status, ""
    except (ssl.SSLError, ConnectionError, IndexError) as exc:
        return "", 0, type(exc).__name__


async def test_inline_cert_and_key_serve_tls(pki: Pki) -> None:
    async with served(fixture(pki, "inline_cert_and_key.yml")) as (url, _, _):
        assert await get(url, client(pki)) == (200, "Hello World!")
    async with served(fixture(pki, "require_any_key_inline.yml")) as (url, _, _):
        # RequireAny verifies here (OpenSSL cannot skip it): no trusted client CA, no entry.
        assert (await get(url, client(pki, pki.client)))[0] == 0


async def test_san_allow_list(pki: Pki) -> None:
    async with served(fixture(pki, "sans_listed.yml")) as (url, _, _):
        assert await get(url, client(pki, pki.client)) == (200, "Hello World!")
        assert (await get(url, client(pki)))[0] == 0  # no certificate
    async with served(fixture(pki, "sans_not_listed.yml")) as (url, _, edge):
        assert (await get(url, client(pki, pki.client)))[0] == 0
        await asyncio.sleep(0.05)
        assert not edge.connections  # closed right after the handshake


async def test_san_allow_list_matches_ip_addresses(pki: Pki) -> None:
    path = fixture(pki, "sans_not_listed.yml", **{"[nobody.example]": "['127.0.0.1']"})
    async with served(path) as (url, _, _):
        assert (await get(url, client(pki, pki.client)))[0] == 200


async def test_verification_against_the_system_roots(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without client_ca_file, the system roots verify (OpenSSL reads SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.directory / "client_ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.directory / "no-such-dir"))
    async with served(fixture(pki, "verify_required_no_ca.yml")) as (url, _, _):
        assert await get(url, client(pki, pki.client)) == (200, "Hello World!")
        assert (await get(url, client(pki, pki.stranger)))[0] == 0
        assert (await get(url, client(pki)))[0] == 0
    async with served(fixture(pki, "verify_if_given.yml")) as (url, _, _):
        assert (await get(url, client(pki)))[0] == 200
        assert (await get(url, client(pki, pki.stranger)))[0] == 0


def tls12_client(pki: Pki, ciphers: str) -> ssl.SSLContext:
    context = client(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


async def test_tls12_cipher_list(pki: Pki) -> None:
    async with served(fixture(pki, "some_ciphers.yml")) as (url, _, _):
        offered = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
        assert await handshake(url, tls12_client(pki, offered)) == (
            "ECDHE-RSA-AES128-GCM-SHA256",
            200,
            "",
        )
        # No common cipher: the handshake fails (an alert, or the connection dropped).
        cipher, status, _ = await handshake(url, tls12_client(pki, "ECDHE-RSA-AES256-SHA"))
        assert (cipher, status) == ("", 0)
    # Go ignores the configured order (and prefer_server_cipher_suites): so do we.
    async with served(fixture(pki, "some_ciphers_server_order_off.yml")) as (url, _, _):
        offered = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
        cipher, status, _ = await handshake(url, tls12_client(pki, offered))
        assert (cipher, status) == ("ECDHE-RSA-AES128-GCM-SHA256", 200)


async def test_one_curve(pki: Pki) -> None:
    async with served(fixture(pki, "one_curve.yml")) as (url, _, _):
        p521, p384 = client(pki), client(pki)
        p521.set_ecdh_curve("secp521r1")
        p384.set_ecdh_curve("secp384r1")
        assert (await handshake(url, p521))[1] == 200
        assert (await handshake(url, p384))[:2] == ("", 0)


async def test_rate_limit_burst_zero_refuses_everything(pki: Pki) -> None:
    async with served(fixture(pki, "rate_limit_one_second.yml")) as (url, _, _):
        assert await get(url) == (429, "Too Many Requests\n")
    async with served(fixture(pki, "rate_limit_off.yml")) as (url, _, _):
        assert [await get(url) for _ in range(10)] == [(200, "Hello World!")] * 10


async def test_rate_limit_with_concurrent_clients(pki: Pki) -> None:
    """Ten clients at once against a bucket of three: three get in, seven get 429."""
    path = pki.directory / "bucket.yml"
    path.write_text("rate_limit:\n  interval: 1m\n  burst: 3\n")
    async with served(path) as (url, access, _):
        statuses = sorted(
            status for status, _ in await asyncio.gather(*(get(url) for _ in range(10)))
        )
        assert statuses == [200] * 3 + [429] * 7
        assert access.rate_limited == 7


def test_token_bucket_refills_one_token_per_interval() -> None:
    now = [0.0]
    bucket = TokenBucket(RateLimit(interval=2.0, burst=2), clock=lambda: now[0])
    assert [bucket.allow() for _ in range(3)] == [True, True, False]
    now[0] = 1.0
    assert not bucket.allow()
    now[0] = 2.0
    assert [bucket.allow(), bucket.allow()] == [True, False]
    now[0] = 1000.0  # a long pause refills to the burst, no further
    assert [bucket.allow() for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    ("interval", "seconds"),
    [("1s", 1.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0), (0, 0.0), (5, 5e-9)],
)
def test_rate_limit_interval_reads_like_go(pki: Pki, interval: object, seconds: float) -> None:
    path = pki.directory / "interval.yml"
    path.write_text(f"rate_limit:\n  interval: {interval}\n  burst: 1\n")
    limit = load_web_config(path).rate_limit
    assert (limit.interval if limit else 0.0) == pytest.approx(seconds)


@pytest.mark.parametrize("interval", ["1d", "1", "-1s", "fast", "1.s5"])
def test_rate_limit_interval_refusals(pki: Pki, interval: str) -> None:
    path = pki.directory / "interval.yml"
    path.write_text(f"rate_limit:\n  interval: '{interval}'\n")
    with pytest.raises(ConfigError, match=r"rate_limit\.interval"):
        load_web_config(path)


# Keys newer than the exporter-toolkit inside Debian's Prometheus 2.42: its promtool refuses
# them as unknown, so it cannot judge those cases.
_NEWER_KEYS = re.compile(r"field (cert|key|client_ca|client_allowed_sans|rate_limit) not found")
# promtool runs the toolkit's Validate, which passes what only Go's HTTP/2 server refuses.
_VALIDATE_ONLY = {"no_http2_cipher.yml": "accept"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_fixtures_against_a_real_exporter_toolkit(pki: Pki, name: str, promtool: str) -> None:
    """The verdicts in cases.yml, asked of Go itself (`promtool check web-config`); a case
    with a key newer than promtool's bundled exporter-toolkit can only be refused as such."""
    result = subprocess.run(
        [promtool, "check", "web-config", str(fixture(pki, name))],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if _NEWER_KEYS.search(result.stdout + result.stderr):
        assert result.returncode != 0
        return
    expected = _VALIDATE_ONLY.get(name, CASES[name][1])
    assert ("accept" if result.returncode == 0 else "reject") == expected, result.stderr
