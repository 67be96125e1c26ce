"""The exporter behind TLS and basic auth, attacked the ways operators worry about."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from support import (
    PASSWORD,
    TLS_AND_AUTH,
    LogCapture,
    Served,
    basic,
    fetch,
    serve_guarded,
    two_account_config,
    wait_for,
    write_pki,
)

from exporter.core.config import load_config
from exporter.sim.simulator import Simulator, start_simulator
from exporter.web.server import ACCESS, Settings, create_app


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for item in serve_guarded(tmp_path, TLS_AND_AUTH):
        yield item


async def test_basic_auth_over_tls(served: Served) -> None:
    assert served.url.startswith("https://127.0.0.1:")
    status, headers, _ = await fetch(served, "/metrics")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="koodrive-exporter"'
    assert headers["X-Frame-Options"] == "deny"
    assert (await fetch(served, "/metrics", headers=basic("alice", "wrong")))[0] == 401
    assert (await fetch(served, "/metrics", headers=basic("mallory", PASSWORD)))[0] == 401
    assert (await fetch(served, "/metrics", headers={"Authorization": "Basic !!!"}))[0] == 401
    assert (await fetch(served, "/metrics", headers={"Authorization": "Bearer x"}))[0] == 401
    status, headers, body = await fetch(served, "/metrics", headers=basic("alice", PASSWORD))
    assert status == 200
    assert "koodrive_exporter_build_info" in body
    assert headers["X-Frame-Options"] == "deny"
    assert (await fetch(served, "/", headers=basic("alice", PASSWORD)))[0] == 200
    assert (await fetch(served, "/"))[0] == 401
    status, headers, _ = await fetch(served, "/nope", headers=basic("alice", PASSWORD))
    assert (status, headers["X-Frame-Options"]) == (404, "deny")


async def test_probes_stay_open_for_kubelet(served: Served) -> None:
    assert (await fetch(served, "/-/healthy"))[0] == 200
    assert (await fetch(served, "/-/ready"))[0] in (200, 503)
    # The reload endpoint is not a probe: it needs credentials (and POST).
    async with (
        aiohttp.ClientSession() as session,
        session.post(served.url + "/-/reload", ssl=served.client_context()) as response,
    ):
        assert response.status == 401


async def test_protect_probes(tmp_path: Path) -> None:
    async for served in serve_guarded(tmp_path, TLS_AND_AUTH, protect_probes=True):
        assert (await fetch(served, "/-/healthy"))[0] == 401
        assert (await fetch(served, "/-/healthy", headers=basic("alice", PASSWORD)))[0] == 200


async def test_verified_credentials_are_cached(served: Served) -> None:
    auth = served.app[ACCESS].auth
    for _ in range(5):
        assert (await fetch(served, "/metrics", headers=basic("alice", PASSWORD)))[0] == 200
    assert auth.bcrypt_calls == 1
    for _ in range(3):  # a repeated wrong guess is not re-hashed either
        assert (await fetch(served, "/metrics", headers=basic("alice", "guess")))[0] == 401
    assert auth.bcrypt_calls == 2


async def test_plain_http_on_the_tls_port_fails(served: Served) -> None:
    plain = served.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain + "/metrics", headers=basic("alice", PASSWORD)) as r:
                await r.read()


async def test_tls_below_min_version_is_refused(tmp_path: Path) -> None:
    web_yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    web_yaml += "  min_version: TLS13\n"
    async for served in serve_guarded(tmp_path, web_yaml):
        old = served.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(aiohttp.ClientConnectorError):
            await fetch(served, "/metrics", ssl=old)
        assert (await fetch(served, "/metrics"))[0] == 200


async def test_mutual_tls(tmp_path: Path) -> None:
    web_yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    web_yaml += "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    async for served in serve_guarded(tmp_path, web_yaml):
        with pytest.raises(aiohttp.ClientError):
            await fetch(served, "/metrics")
        with_cert = served.client_context()
        served.ca.issue_cert("prometheus@example.com").configure_cert(with_cert)
        assert (await fetch(served, "/metrics", ssl=with_cert))[0] == 200
        stranger = served.client_context()
        trustme.CA().issue_cert("mallory@example.com").configure_cert(stranger)
        with pytest.raises(aiohttp.ClientError):
            await fetch(served, "/metrics", ssl=stranger)


async def test_rotated_certificate_is_served_without_restart(served: Served) -> None:
    async def peer_serial() -> int:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", int(served.url.rsplit(":", 1)[1]), ssl=served.client_context()
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return x509.load_der_x509_certificate(der).serial_number

    before = await peer_serial()
    await asyncio.sleep(0.01)  # a new mtime, as a real rotation would have
    write_pki(served.directory, served.ca)  # same CA, new key and certificate
    assert served.app[ACCESS].refresh()
    after = await peer_serial()
    assert after != before
    assert (await fetch(served, "/metrics", headers=basic("alice", PASSWORD)))[0] == 200


async def test_broken_web_config_on_reload_keeps_the_old_one(served: Served) -> None:
    (served.directory / "web.yml").write_text("basic_auth_users:\n  alice: plain\n")
    assert not served.app[ACCESS].refresh()
    assert (await fetch(served, "/metrics", headers=basic("alice", PASSWORD)))[0] == 200
    assert (await fetch(served, "/metrics"))[0] == 401


async def test_slow_client_is_disconnected(tmp_path: Path) -> None:
    async for served in serve_guarded(tmp_path, "", read_header_timeout=0.3):
        port = int(served.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - started < 1.5
        writer.close()
        # A normal client on a fresh connection is still served.
        assert (await fetch(served, "/metrics"))[0] == 200


async def test_oversized_headers_are_refused(tmp_path: Path) -> None:
    async for served in serve_guarded(tmp_path, ""):
        status, _, _ = await fetch(served, "/metrics", headers={"X-Big": "a" * 10000})
        assert status in (400, 431)
        many = {f"X-H{i}": "1" for i in range(150)}
        assert (await fetch(served, "/metrics", headers=many))[0] in (400, 431)


# --- upstream TLS -----------------------------------------------------------------------


@pytest.fixture
async def https_simulator(tmp_path: Path) -> AsyncIterator[tuple[Simulator, str, Path]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "upstream-ca.crt"))
    simulator = Simulator(load_config(two_account_config("http://127.0.0.1:1", tmp_path)))
    runner, url = await start_simulator(simulator, ssl_context=context)
    try:
        yield simulator, url, tmp_path
    finally:
        await runner.cleanup()


async def poll_once(config_path: Path, logs: LogCapture, aiohttp_client) -> str:
    config = load_config(config_path)
    client = await aiohttp_client(create_app(config, logs.log, Settings(startup_window=0.01)))
    await wait_for(lambda: logs.events("poll") and len(logs.events("poll")) >= 2)
    return await (await client.get("/metrics")).text()


async def test_upstream_certificate_is_verified_by_default(https_simulator, aiohttp_client):
    _, url, directory = https_simulator
    logs = LogCapture()
    text = await poll_once(two_account_config(url, directory), logs, aiohttp_client)
    assert 'koodrive_poll_errors_total{account="acme",reason="tls"} 1' in text
    assert 'koodrive_up{account="acme"} 0' in text


async def test_upstream_ca_file(https_simulator, aiohttp_client) -> None:
    _, url, directory = https_simulator
    path = two_account_config(url, directory)
    path.write_text(
        path.read_text().replace("defaults:\n", "defaults:\n  ca_file: upstream-ca.crt\n")
    )
    text = await poll_once(path, LogCapture(), aiohttp_client)
    assert 'koodrive_up{account="acme"} 1' in text


async def test_insecure_skip_verify_works_and_warns(https_simulator, aiohttp_client) -> None:
    _, url, directory = https_simulator
    path = two_account_config(url, directory)
    path.write_text(
        path.read_text().replace(
            "  - name: beta\n", "  - name: beta\n    insecure_skip_verify: true\n"
        )
    )
    logs = LogCapture()
    text = await poll_once(path, logs, aiohttp_client)
    assert 'koodrive_up{account="beta"} 1' in text
    assert 'koodrive_up{account="acme"} 0' in text  # still verified, and failing
    (warning,) = logs.events("insecure_skip_verify")
    assert warning["account"] == "beta"
    assert warning["level"] == "warning"


async def test_container_healthcheck_speaks_tls(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter.healthcheck",
        env={**os.environ, "KOODRIVE_HEALTHCHECK_PORT": port},
    )  # fmt: skip
    assert await asyncio.wait_for(process.wait(), 15) == 0


MUTUAL_TLS_WITH_SANS = (
    "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    "  client_allowed_sans: [prometheus.example]\n"
)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("  client_allowed_sans: [prometheus.example]\n", ""), "client_allowed_sans"),
        (("[prometheus.example]", "[prometheus.example, mallory.example]"), "widening"),
        (("  client_ca_file: ca.crt\n", ""), "system CAs"),
    ],
)
async def test_reload_may_not_loosen_client_certificate_checks(
    tmp_path: Path, change: tuple[str, str], reason: str
) -> None:
    """Dropping or widening the SAN allow-list, or trading the client CA for the system
    roots, would let new clients in while running: refused until a restart."""
    async for served in serve_guarded(tmp_path, MUTUAL_TLS_WITH_SANS):
        mallory = served.client_context()
        served.ca.issue_cert("mallory.example").configure_cert(mallory)
        with pytest.raises(aiohttp.ClientError):
            await fetch(served, "/metrics", ssl=mallory)
        await asyncio.sleep(0.01)  # a new mtime
        (served.directory / "web.yml").write_text(MUTUAL_TLS_WITH_SANS.replace(*change))
        assert not served.app[ACCESS].refresh(), reason
        with pytest.raises(aiohttp.ClientError):
            await fetch(served, "/metrics", ssl=mallory)
        prometheus = served.client_context()
        served.ca.issue_cert("prometheus.example").configure_cert(prometheus)
        assert (await fetch(served, "/metrics", ssl=prometheus))[0] == 200


async def test_rate_limit_answers_before_basic_auth(tmp_path: Path) -> None:
    """An empty bucket answers 429 without a bcrypt check; probes stay open for kubelet."""
    web_yaml = TLS_AND_AUTH + "rate_limit:\n  interval: 1h\n  burst: 2\n"
    async for served in serve_guarded(tmp_path, web_yaml):
        guard = served.app[ACCESS]
        assert (await fetch(served, "/metrics", headers=basic("alice", PASSWORD)))[0] == 200
        assert (await fetch(served, "/metrics", headers=basic("alice", "wrong")))[0] == 401
        calls = guard.auth.bcrypt_calls
        status, _, body = await fetch(served, "/metrics", headers=basic("alice", "guess"))
        assert (status, body) == (429, "Too Many Requests\n")
        assert guard.auth.bcrypt_calls == calls
        assert (await fetch(served, "/-/healthy"))[0] == 200
