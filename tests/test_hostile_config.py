"""Hostile config input: whatever the text or the file, loading ends quickly in a ConfigError.

A reload runs the same loader as `--config.check`, so a document or a file that hangs, eats
memory or raises something else would take down (or wedge) a running exporter.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from exporter.core import config as cfg
from exporter.core import files, schema, yamlstrict
from exporter.core.config import load_config, parse_config
from exporter.core.settings import Config, ConfigError
from exporter.web.webconfig import WebConfig, load_web_config

VALID = """\
defaults:
  interval: 60s
accounts:
  - name: acme
    user_id: "1"
    auth: {token: "Bearer+t0ken"}
"""
ACCOUNT = 'accounts: [{name: a, user_id: "1", auth: {token: t}}]\n'
ENDPOINT_ACCOUNT = 'accounts: [{{name: a, user_id: "1", endpoint: "{}", auth: {{token: t}}}}]\n'
BOMB = "\n".join(
    [
        "x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        *(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 9)),
        "max_concurrency: *x8",
        "accounts: *x8",
    ]
)
HOSTILE = {
    "complex key": "? [a, b]\n: c\n",
    "complex key in account": "accounts:\n  - name: a\n    ? {x: 1}\n    : 2\n",
    "bad date": "accounts:\n  - name: 2024-13-45\n",
    "bad explicit date": "accounts:\n  - name: !!timestamp 2024-13-45\n",
    "int key": "1: x\n",
    "null key": "~: x\n" + ACCOUNT,
    "bool key": "accounts:\n  - yes: 1\n",
    "float key": "1.5: x\n" + ACCOUNT,
    "set": "!!set {a, b}\n",
    "binary name": 'accounts: [{name: !!binary aGVsbG8=, user_id: "1", auth: {token: t}}]\n',
    "omap": "accounts: !!omap [a: 1]\n",
    "python tag": "accounts: !!python/name:os.system\n",
    "unknown tag": "accounts: !foo bar\n",
    "long tag": "accounts: !" + "t" * 100_000 + " bar\n",
    "huge int": "max_concurrency: " + "9" * 5000 + "\n",
    "huge int interval": "defaults: {interval: " + "9" * 4000 + "}\n" + ACCOUNT,
    "superscript retries": "defaults: {retries: '²'}\n" + ACCOUNT,
    "long digit retries": "defaults: {retries: '" + "1" * 5000 + "'}\n" + ACCOUNT,
    "superscript kilobyte": "defaults: {kilobyte: '²'}\n" + ACCOUNT,
    "bad ipv6 endpoint": ENDPOINT_ACCOUNT.format("http://[::1"),
    "endpoint newline": ENDPOINT_ACCOUNT.format("https://a.b\\n"),
    "nul secret path": 'accounts: [{name: a, user_id: "1", auth: {token_file: "a\\0b"}}]\n',
    "nul ca path": 'defaults: {ca_file: "a\\0b"}\n' + ACCOUNT,
    "deep flow": "[" * 5000 + "]" * 5000,
    "deep block": "".join(f"{'  ' * i}k{i}:\n" for i in range(200)),
    "surrogate": "accounts: \ud800\n",
    "nul byte": "accounts: [\x00]\n",
    "tabs": "accounts:\n\t- a\n",
    "1 MB value": "defaults: {interval: " + "x" * 1_000_000 + "}\n" + ACCOUNT,
    "1 MB key": "k" * 1_000_000 + ": 1\n" + ACCOUNT,
    "1 MB comment": "#" + "c" * 1_000_000 + "\n",
    "alias bomb": BOMB,
    "merge alias": "d: &d {interval: 1s}\naccounts: [{<<: *d, name: a}]\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "directive only": "%YAML 1.1\n---\n",
    "nan interval": "defaults: {interval: .nan}\n" + ACCOUNT,
    "inf interval": "defaults: {interval: .inf}\n" + ACCOUNT,
    "string inf interval": "defaults: {interval: 1e400}\n" + ACCOUNT,
    "list name": 'accounts: [{name: [a], user_id: "1", auth: {token: t}}]\n',
    "map user_id": "accounts: [{name: a, user_id: {a: 1}, auth: {token: t}}]\n",
    "list endpoint": 'accounts: [{name: a, user_id: "1", endpoint: [x], auth: {token: t}}]\n',
    "list auth": 'accounts: [{name: a, user_id: "1", auth: [token]}]\n',
    "list token": 'accounts: [{name: a, user_id: "1", auth: {token: [t]}}]\n',
    "map token_file": 'accounts: [{name: a, user_id: "1", auth: {token_file: {a: b}}}]\n',
    "list ca_file": "defaults: {ca_file: [x]}\n" + ACCOUNT,
    "list max_concurrency": "max_concurrency: [" + ", ".join(["1"] * 10_000) + "]\n" + ACCOUNT,
    "float language": "defaults: {language: 1.5}\n" + ACCOUNT,
    "list kilobyte": "defaults: {kilobyte: []}\n" + ACCOUNT,
    "map retries": "defaults: {retries: {}}\n" + ACCOUNT,
    "string bool": "defaults: {insecure_skip_verify: 'yes'}\n" + ACCOUNT,
    "list defaults": "defaults: [1]\n" + ACCOUNT,
    "scalar accounts": "accounts: 3\n",
}


def assert_clean(error: ConfigError) -> None:
    """Every message is short text; none comes from the last-resort handler."""
    assert error.errors
    for message in error.errors:
        assert isinstance(message, str)
        assert message
        assert "internal error" not in message, message
        assert len(message) < 400, message[:500]


def outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except ConfigError as exc:
        return exc


def bounded(call: Callable[[], object], seconds: float = 2.0, fifo: Path | None = None) -> object:
    """Run `call` in a thread; fail (after unblocking a reader stuck on `fifo`) if it hangs."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # handed to the test thread below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            # A writer that opens and closes lets a reader blocked in open() see EOF.
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5)
        pytest.fail(f"still running after {seconds}s")
    if "error" in result:
        error = result["error"]
        if isinstance(error, ConfigError):
            return error
        raise error  # type: ignore[misc]
    return result["value"]


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_documents_raise_only_config_error(text: str) -> None:
    started = time.monotonic()
    result = outcome(lambda: parse_config(text, env={}, base_dir=Path("/nonexistent")))
    assert isinstance(result, ConfigError), result
    assert_clean(result)
    assert time.monotonic() - started < 1


def test_random_bytes_and_mutated_documents() -> None:
    rng = random.Random(20240613)
    alphabet = "&*!?:-[]{}|>#%@`'\",\t\n\r\x00\x7f\x85\ufeff\u2028 az09$"
    for _ in range(400):
        text = list(VALID)
        for _ in range(rng.randint(1, 6)):
            spot = rng.randrange(len(text) + 1)
            choice = rng.random()
            if choice < 0.4:
                text.insert(spot, rng.choice(alphabet))
            elif choice < 0.7 and spot < len(text):
                del text[spot]
            elif spot < len(text):
                text[spot] = rng.choice(alphabet)
        mutated = "".join(text)
        result = outcome(lambda t=mutated: parse_config(t, env={}, base_dir=Path("/")))
        assert isinstance(result, Config | ConfigError)
        if isinstance(result, ConfigError):
            assert_clean(result)
    for _ in range(300):
        blob = rng.randbytes(rng.randint(0, 300))
        result = outcome(lambda b=blob: parse_config(b.decode("latin-1"), env={}))
        assert isinstance(result, ConfigError)
        assert_clean(result)


def test_random_bytes_files(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "config.yaml"
    for _ in range(100):
        path.write_bytes(rng.randbytes(rng.randint(0, 300)))
        result = outcome(lambda: load_config(path, env={}))
        assert isinstance(result, ConfigError)
        assert_clean(result)
        result = outcome(lambda: load_web_config(path))
        assert isinstance(result, ConfigError | WebConfig)
        if isinstance(result, ConfigError):
            assert_clean(result)


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_config(path, env={}).accounts[0].name == "acme"


def test_dates_are_plain_strings() -> None:
    config = parse_config('accounts: [{name: 2024-01-02, user_id: "1", auth: {token: t}}]', env={})
    assert config.accounts[0].name == "2024-01-02"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("? [a, b]\n: c\n", "line 1"),
        ("accounts:\n  - name: a\n    1: x\n", "line 3"),
        ("accounts:\n  - name: !!timestamp 2024-13-45\n", "line 2"),
        ("max_concurrency: " + "9" * 5000 + "\n", "line 1"),
    ],
)
def test_yaml_value_errors_name_the_line(text: str, where: str) -> None:
    result = outcome(lambda: parse_config(text, env={}))
    assert isinstance(result, ConfigError)
    assert any(where in error for error in result.errors), result.errors


def test_alias_bomb_is_refused_before_anything_expands() -> None:
    started = time.monotonic()
    result = bounded(lambda: outcome(lambda: parse_config(BOMB, env={})), seconds=5)
    assert time.monotonic() - started < 1
    assert isinstance(result, ConfigError)
    assert result.errors == [
        "<memory>: line 1, column 5: YAML anchors (&x0) and aliases are not supported; "
        "use `defaults:` for settings shared by accounts"
    ]


def test_an_alias_is_refused_by_name() -> None:
    result = outcome(lambda: parse_config("accounts: *everything\n", env={}))
    assert isinstance(result, ConfigError)
    assert "line 1, column 11: YAML aliases (*everything) are not supported" in str(result)


def test_echoed_values_are_cut_short() -> None:
    long = "x" * 1_000_000
    for text in (
        f"defaults: {{interval: {long}}}\n{ACCOUNT}",
        f"{long}: 1\n{ACCOUNT}",
        f"max_concurrency: [{', '.join(['1'] * 10_000)}]\n{ACCOUNT}",
        f"defaults: {{language: {long}}}\n{ACCOUNT}",
    ):
        result = outcome(lambda t=text: parse_config(t, env={}))
        assert isinstance(result, ConfigError)
        assert all(len(error) < 300 for error in result.errors), [e[:400] for e in result.errors]
        assert not any("x" * 70 in error or "1, " * 30 in error for error in result.errors)


def test_show_value_is_a_short_repr() -> None:
    assert schema.show_value("5 minutes") == "'5 minutes'"
    assert len(schema.show_value("y" * 10_000)) <= schema.SHOWN_VALUE_LIMIT + 3
    assert schema.show_value("y" * 10_000).endswith("...")
    assert len(schema.show_value(list(range(100_000)))) <= schema.SHOWN_VALUE_LIMIT + 3
    assert len(schema.show_value(10**5000)) <= schema.SHOWN_VALUE_LIMIT + 3


def test_oversized_config_file_is_refused(tmp_path: Path) -> None:
    assert yamlstrict.CONFIG_FILE_LIMIT == 64 * 1024 * 1024
    path = tmp_path / "config.yaml"
    with path.open("wb") as file:
        file.truncate(yamlstrict.CONFIG_FILE_LIMIT + 1)  # sparse: no 64 MiB written to disk
    result = bounded(lambda: load_config(path, env={}))
    assert isinstance(result, ConfigError)
    assert result.errors == [f"{path}: cannot read: is larger than 64 MiB"]


# --- files that are not regular files -----------------------------------------------------


def test_read_regular_file_reads_regular_files_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"abc\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fds = len(os.listdir("/proc/self/fd"))
    assert files.read_regular_file(tmp_path / "link", 4) == b"abc\n"
    with pytest.raises(OSError, match="larger than 3 bytes"):
        files.read_regular_file(tmp_path / "real", 3)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_read_regular_file_refuses_everything_else(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    fds = len(os.listdir("/proc/self/fd"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        cases = {
            fifo: "is a FIFO, not a regular file",
            Path("/dev/zero"): "is a character device, not a regular file",
            tmp_path: "is a directory, not a regular file",
            sock_path: "is a socket, not a regular file",
            tmp_path / "missing": "No such file",
            Path("a\0b"): "NUL",
        }
        for path, message in cases.items():
            with pytest.raises(OSError, match=message):
                bounded(lambda p=path: files.read_regular_file(p, 1024), fifo=fifo)
    assert len(os.listdir("/proc/self/fd")) == fds


def token_config(tmp_path: Path, auth: str, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f'{extra}accounts:\n  - name: acme\n    user_id: "1"\n    auth: {auth}\n', encoding="utf-8"
    )
    return path


def test_fifo_config_file_fails_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result = bounded(lambda: load_config(fifo, env={}), fifo=fifo)
    assert isinstance(result, ConfigError)
    assert result.errors == [f"{fifo}: cannot read: is a FIFO, not a regular file"]


@pytest.mark.parametrize(
    ("auth", "extra", "where"),
    [
        ("{token_file: special}", "", "accounts[0].auth.token_file"),
        ("{app_id: x, app_secret_file: special}", "", "accounts[0].auth.app_secret_file"),
        ("{token: t}", "defaults: {ca_file: special}\n", "defaults.ca_file"),
    ],
)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_special_files_named_by_the_config_fail_fast(
    tmp_path: Path, auth: str, extra: str, where: str, kind: str
) -> None:
    special = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to("/dev/zero")
    path = token_config(tmp_path, auth, extra)
    result = bounded(lambda: load_config(path, env={}), fifo=special if kind == "fifo" else None)
    assert isinstance(result, ConfigError)
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert any(e.startswith(f"{where}: ") and f"is {what}" in e for e in result.errors), result


def test_huge_secret_file_is_refused(tmp_path: Path) -> None:
    assert files.SECRET_FILE_LIMIT == 64 * 1024
    with (tmp_path / "special").open("wb") as file:
        file.truncate(files.SECRET_FILE_LIMIT + 1)
    path = token_config(tmp_path, "{token_file: special}")
    result = bounded(lambda: load_config(path, env={}))
    assert isinstance(result, ConfigError)
    assert "accounts[0].auth.token_file: cannot read" in str(result)
    assert "is larger than 64 KiB" in str(result)


def test_symlinked_secret_and_ca_files_still_work(tmp_path: Path) -> None:
    data = tmp_path / "..data"
    data.mkdir()
    (data / "token").write_text("Bearer+rotated\n", encoding="utf-8")
    trustme.CA().cert_pem.write_to_path(str(data / "ca.pem"))
    (tmp_path / "token").symlink_to(data / "token")
    (tmp_path / "ca.pem").symlink_to(data / "ca.pem")
    config = load_config(
        token_config(tmp_path, "{token_file: token}", "defaults: {ca_file: ca.pem}\n"), env={}
    )
    assert config.accounts[0].ca_file == tmp_path / "ca.pem"


def test_ca_bundle_with_text_between_certificates_is_accepted(tmp_path: Path) -> None:
    pem = trustme.CA().cert_pem.bytes()
    (tmp_path / "ca.pem").write_bytes("# Főtanúsítvány\n".encode() + pem + b"\n# end\n")
    config = load_config(token_config(tmp_path, "{token: t}", "defaults: {ca_file: ca.pem}\n"))
    assert config.accounts[0].ca_file == tmp_path / "ca.pem"
    (tmp_path / "ca.pem").write_text("not a certificate\n", encoding="utf-8")
    result = outcome(
        lambda: load_config(token_config(tmp_path, "{token: t}", "defaults: {ca_file: ca.pem}\n"))
    )
    assert isinstance(result, ConfigError)
    assert "defaults.ca_file: not a PEM CA bundle" in str(result)


def test_secret_file_with_control_characters_names_the_file_not_the_content(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_bytes(b"Bearer+hunter2\x00\n")
    result = outcome(lambda: load_config(token_config(tmp_path, "{token_file: token}"), env={}))
    assert isinstance(result, ConfigError)
    assert result.errors == [
        f"accounts[0].auth.token_file: contains control characters: {tmp_path / 'token'}"
    ]
    (tmp_path / "token").write_bytes(b"Bearer+hunter2\r\n")
    assert load_config(token_config(tmp_path, "{token_file: token}"), env={}).accounts


CONTROL = ["\r", "\n", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u200b"]


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
@pytest.mark.parametrize(
    ("field", "template"),
    [
        ("accounts[0].auth.token", 'user_id: "1", auth: {{token: {}}}'),
        ("accounts[0].auth.app_secret", 'user_id: "1", auth: {{app_id: x, app_secret: {}}}'),
        ("accounts[0].auth.app_id", 'user_id: "1", auth: {{app_id: {}, app_secret: s}}'),
        ("accounts[0].user_id", "user_id: {}, auth: {{token: t}}"),
    ],
)
@pytest.mark.parametrize("source", ["inline", "env"])
def test_control_characters_are_refused(char: str, field: str, template: str, source: str) -> None:
    value = f"hunter2{char}x"
    shown = json.dumps(value) if source == "inline" else '"${VALUE}"'
    text = "accounts: [{name: a, " + template.format(shown) + "}]"
    result = outcome(lambda: parse_config(text, env={"VALUE": value}))
    assert isinstance(result, ConfigError)
    assert any(
        error.startswith(f"{field}: must not contain control characters") for error in result.errors
    ), result.errors
    assert "hunter2" not in str(result)


ENV_ECHO = {
    "interval": "defaults: {interval: '${X}'}\n" + ACCOUNT,
    "timeout": "defaults: {timeout: '${X}'}\n" + ACCOUNT,
    "backoff": "defaults: {backoff: '${X}'}\n" + ACCOUNT,
    "stale_after": "defaults: {stale_after: '${X}'}\n" + ACCOUNT,
    "x_date_margin": "defaults: {x_date_margin: '${X}'}\n" + ACCOUNT,
    "retries": "defaults: {retries: '${X}'}\n" + ACCOUNT,
    "kilobyte": "defaults: {kilobyte: '${X}'}\n" + ACCOUNT,
    "language": "defaults: {language: '${X}'}\n" + ACCOUNT,
    "ca_file": "defaults: {ca_file: '/nonexistent/${X}'}\n" + ACCOUNT,
    "duplicate name": 'accounts: [{name: "${X}", user_id: "1", auth: {token: t}},'
    ' {name: "${X}", user_id: "2", auth: {token: t}}]',
}


@pytest.mark.parametrize("text", ENV_ECHO.values(), ids=ENV_ECHO.keys())
def test_values_from_the_environment_are_never_echoed(text: str) -> None:
    result = outcome(lambda: parse_config(text, env={"X": "hunter2"}))
    assert isinstance(result, ConfigError)
    assert "hunter2" not in str(result)
    assert "${X}" in str(result)


def test_interval_from_the_environment_says_which_variable() -> None:
    result = outcome(lambda: parse_config(ENV_ECHO["interval"], env={"X": "hunter2"}))
    assert isinstance(result, ConfigError)
    assert result.errors == [
        "defaults.interval: invalid duration (value from ${X} not shown): "
        "use e.g. 500ms, 30s, 5m, 1h"
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("interval: 10ms", "defaults.interval: must be at least 1s (got 0.01s)"),
        ("interval: 999ms", "defaults.interval: must be at least 1s (got 0.999s)"),
        ("interval: 25h", "defaults.interval: must be at most 24h (got '25h')"),
        ("interval: 2s, timeout: 50ms", "defaults.timeout: must be at least 100ms (got 0.05s)"),
        ("interval: 1m, timeout: 2m", "defaults.timeout: must not exceed the interval"),
    ],
)
def test_poll_interval_and_timeout_limits(settings: str, message: str) -> None:
    result = outcome(lambda: parse_config(f"defaults: {{{settings}}}\n{ACCOUNT}", env={}))
    assert isinstance(result, ConfigError)
    assert any(error.startswith(message) for error in result.errors), result.errors
    assert len(result.errors) == 1  # reported once at defaults, not once per account


def test_limits_are_stated_in_the_message() -> None:
    result = outcome(lambda: parse_config(f"defaults: {{interval: 10ms}}\n{ACCOUNT}", env={}))
    assert isinstance(result, ConfigError)
    assert "1s to 24h" in result.errors[0]
    assert "loopback" in result.errors[0]


def test_limits_at_the_edges_and_for_loopback_endpoints() -> None:
    config = parse_config(f"defaults: {{interval: 1s, timeout: 100ms}}\n{ACCOUNT}", env={})
    assert (config.accounts[0].interval, config.accounts[0].timeout) == (1, 0.1)
    config = parse_config(f"defaults: {{interval: 24h}}\n{ACCOUNT}", env={})
    assert config.accounts[0].interval == 86400
    # The simulator and test doubles run on loopback: fast polling hurts nobody there.
    text = "defaults: {endpoint: 'http://127.0.0.1:1', interval: 20ms, timeout: 20ms}\n"
    config = parse_config(text + ACCOUNT, env={})
    assert (config.accounts[0].interval, config.accounts[0].timeout) == (0.02, 0.02)


# --- the web config file ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    return directory


WEB_HOSTILE = {
    "zero": "0\n",
    "false": "false\n",
    "empty list": "[]\n",
    "list min_version": "tls_server_config: {cert_file: server.crt, key_file: server.key, "
    "min_version: [a]}\n",
    "map max_version": "tls_server_config: {cert_file: server.crt, key_file: server.key, "
    "max_version: {a: 1}}\n",
    "list client_auth_type": "tls_server_config: {cert_file: server.crt, key_file: server.key, "
    "client_auth_type: [a]}\n",
    "list cert_file": "tls_server_config: {cert_file: [a], key_file: server.key}\n",
    "complex key": "? [a]\n: b\n",
    "alias": "basic_auth_users: &u {}\nx: *u\n",
    "int user": "basic_auth_users: {1: x}\n",
    "header nul": 'http_server_config: {headers: {X-Frame-Options: "a\\0b"}}\n',
    "long header name": "http_server_config: {headers: {" + "H" * 100_000 + ": x}}\n",
    "date": "basic_auth_users: {alice: 2024-13-45}\n",
    "nul path": 'tls_server_config: {cert_file: "a\\0b", key_file: server.key}\n',
}


@pytest.mark.parametrize("text", WEB_HOSTILE.values(), ids=WEB_HOSTILE.keys())
def test_hostile_web_configs_raise_only_config_error(pki: Path, text: str) -> None:
    path = pki / "web.yml"
    path.write_text(text, encoding="utf-8")
    result = outcome(lambda: load_web_config(path))
    assert isinstance(result, ConfigError), result
    assert_clean(result)


def test_empty_and_truncated_web_configs(pki: Path) -> None:
    path = pki / "web.yml"
    full = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "basic_auth_users:\n  alice: '$2b$04$" + "a" * 53 + "'\n"
    )
    for text in ("", "# only a comment\n", "---\n"):
        path.write_text(text, encoding="utf-8")
        assert load_web_config(path) == WebConfig()
    for cut in range(len(full) + 1):
        path.write_text(full[:cut], encoding="utf-8")
        result = outcome(lambda: load_web_config(path))
        assert isinstance(result, ConfigError | WebConfig)


@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file", "web"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_special_files_in_the_web_config_fail_fast(pki: Path, key: str, kind: str) -> None:
    special = pki / f"special-{key}-{kind}"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to("/dev/zero")
    files = {"cert_file": "server.crt", "key_file": "server.key", "client_ca_file": "ca.crt"}
    if key in files:
        files[key] = special.name
    path = pki / "web.yml"
    path.write_text(
        "tls_server_config:\n"
        + "".join(f"  {name}: {value}\n" for name, value in files.items())
        + "  client_auth_type: RequireAndVerifyClientCert\n",
        encoding="utf-8",
    )
    target = special if key == "web" else path
    try:
        result = bounded(lambda: load_web_config(target), fifo=special if kind == "fifo" else None)
    finally:
        special.unlink()
    assert isinstance(result, ConfigError)
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert any(f"is {what}, not a regular file" in error for error in result.errors), result


# --- the real command line ----------------------------------------------------------------


def check_in_subprocess(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return result, time.monotonic() - started


def assert_clean_failure(result: subprocess.CompletedProcess[str], kind: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines
    assert all(line.startswith(f"{kind}: ") for line in lines), lines


def test_cli_check_of_a_fifo_config_fails_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result, seconds = check_in_subprocess("--config.file", str(fifo))
    assert seconds < 5
    assert_clean_failure(result, "config error")
    assert "is a FIFO, not a regular file" in result.stderr


def test_cli_check_of_an_alias_bomb_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BOMB, encoding="utf-8")
    result, seconds = check_in_subprocess("--config.file", str(path))
    assert seconds < 5
    assert_clean_failure(result, "config error")
    assert "YAML anchors (&x0) and aliases are not supported" in result.stderr


def test_cli_check_of_a_fifo_web_config_fails_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "web.yml"
    os.mkfifo(fifo)
    config = token_config(tmp_path, "{token: t}")
    result, seconds = check_in_subprocess(
        "--config.file", str(config), "--web.config.file", str(fifo)
    )
    assert seconds < 5
    assert_clean_failure(result, "web config error")
    assert "is a FIFO, not a regular file" in result.stderr


@pytest.mark.parametrize(
    ("settings", "value"),
    [
        ("{timeout: '${X}'}", "7777s"),
        ("{interval: '${X}', timeout: 1h}", "3333s"),
        ("{stale_after: '${X}'}", "55s"),
    ],
)
def test_durations_compared_across_keys_are_not_echoed_from_the_environment(
    settings: str, value: str
) -> None:
    text = f"defaults: {settings}\n{ACCOUNT}"
    result = outcome(lambda: parse_config(text, env={"X": value}))
    assert isinstance(result, ConfigError)
    assert value.rstrip("s") not in str(result)
    assert "(value from ${X} not shown)" in str(result)


def test_a_checker_bug_still_surfaces_as_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, raw: object) -> list[object]:
        raise TypeError("a bug")

    monkeypatch.setattr(cfg.ConfigChecker, "document", broken)
    result = outcome(lambda: parse_config(ACCOUNT, env={}))
    assert isinstance(result, ConfigError)
    assert result.errors == ["<memory>: internal error while checking the config (TypeError)"]


def test_secret_files_reread_at_runtime_refuse_fifos(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="is a FIFO"):
        bounded(lambda: files.read_secret_file(fifo), fifo=fifo)
