"""The exporter-toolkit web config file: accepted shapes and every refusal, by key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import trustme

from exporter.core.settings import ConfigError
from exporter.web.webconfig import load_web_config

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(directory / "other.key"))
    return directory


def write(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_full_config(pki: Path) -> None:
    config = load_web_config(
        write(
            pki,
            f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
  max_version: TLS13
  prefer_server_cipher_suites: true
basic_auth_users:
  alice: {HASH}
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
""",
        )
    )
    assert config.tls is not None
    assert config.tls.cert_file == pki / "server.crt"
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert set(config.users) == {"alice"}
    assert HASH not in repr(config)
    assert config.headers == {
        "X-Frame-Options": "deny",
        "Strict-Transport-Security": "max-age=31536000",
    }


def test_empty_file_means_nothing_configured(pki: Path) -> None:
    config = load_web_config(write(pki, ""))
    assert (config.tls, dict(config.users), dict(config.headers)) == (None, {}, {})


REFUSALS = {
    "syntax error": ("basic_auth_users: [alice", "invalid YAML"),
    "plain password": ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice: must be"),
    "truncated hash": (f"basic_auth_users:\n  alice: '{HASH[:40]}'\n", "not a complete bcrypt"),
    "unknown top key": ("tls_config: {}\n", "tls_config: unknown key"),
    "missing cert": (
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
        "tls_server_config.cert_file: no such file",
    ),
    "missing key_file": (
        "tls_server_config:\n  cert_file: server.crt\n",
        "tls_server_config: missing one of key or key_file",
    ),
    "key does not match": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
        "tls_server_config:",
    ),
    "bad client auth type": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: Sometimes\n",
        "tls_server_config.client_auth_type: must be one of",
    ),
    "CA without a policy": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_ca_file: ca.crt\n",
        "tls_server_config.client_ca_file: is set but client_auth_type is NoClientCert",
    ),
    "bad version": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  min_version: SSL3\n",
        "tls_server_config.min_version: must be one of",
    ),
    "min above max": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  min_version: TLS13\n  max_version: TLS12\n",
        "tls_server_config.max_version: is lower than min_version",
    ),
    "several curves": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  curve_preferences: [X25519, CurveP256]\n",
        "tls_server_config.curve_preferences: several curves are not supported",
    ),
    "null min_version": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version:\n",
        "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13",
    ),
    "unknown tls key": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  ciphers: x\n",
        "tls_server_config.ciphers: unknown key (allowed: cert, cert_file, cipher_suites, "
        "client_allowed_sans, client_auth_type, client_ca, client_ca_file, curve_preferences, "
        "key, key_file, max_version, min_version, prefer_server_cipher_suites)",
    ),
    "headers not a mapping": (
        "http_server_config:\n  headers: [X-Frame-Options]\n",
        "http_server_config.headers: must be a mapping",
    ),
    "header not allowed": (
        "http_server_config:\n  headers:\n    Set-Cookie: x\n",
        "http_server_config.headers.Set-Cookie: can not be configured",
    ),
}


@pytest.mark.parametrize(("text", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_name_the_key(pki: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_web_config(write(pki, text))
    assert any(message in error for error in info.value.errors), info.value.errors
    assert "hunter2" not in str(info.value)


def test_start_is_refused_with_the_key_named(pki: Path) -> None:
    path = write(pki, "basic_auth_users:\n  alice: hunter2\n")
    for extra in (["--config.check"], ["--demo", "--web.listen-address=127.0.0.1:0"]):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", f"--web.config.file={path}", *extra],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=pki,
        )
        assert result.returncode == 1
        assert "web config error:" in result.stderr
        assert "basic_auth_users.alice: must be a bcrypt hash" in result.stderr
        assert "hunter2" not in result.stderr
