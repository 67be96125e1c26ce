"""Config loading: every kind of error has a fixture whose `# expect:` lines must appear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.core.config import load_config, parse_config, reference
from exporter.core.settings import AppAuth, ConfigError, Secret, TokenAuth, parse_duration

FIXTURES = Path(__file__).parent / "fixtures" / "config"
ERROR_FIXTURES = sorted(FIXTURES.glob("*.yaml"))
ENV = {
    "KOODRIVE_TEST_EMPTY": "",
    "KOODRIVE_TEST_SECRET": "from-env",
    "KOODRIVE_TEST_TIMEOUT": "45s",
}
REFERENCE = Path(__file__).parent.parent / "docs" / "reference.md"
ACCOUNT = 'accounts: [{name: a, user_id: "1", auth: {token: t}}]'


def expected_errors(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect:").strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# expect:")
    ]


@pytest.mark.parametrize("fixture", ERROR_FIXTURES, ids=lambda p: p.stem)
def test_each_error_fixture_is_reported_with_its_key_path(fixture: Path) -> None:
    expected = expected_errors(fixture)
    assert expected, f"{fixture.name} has no `# expect:` line"
    with pytest.raises(ConfigError) as info:
        load_config(fixture, env=ENV)
    for fragment in expected:
        assert any(fragment in error for error in info.value.errors), (
            f"{fragment!r} not in {info.value.errors}"
        )


def test_many_errors_are_all_collected_in_one_pass() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(FIXTURES / "many_errors.yaml", env=ENV)
    assert len(info.value.errors) == 4


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(FIXTURES / "nope.yaml")


def test_full_config_inherits_defaults_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret\r\n", encoding="utf-8")
    config = parse_config(
        """
defaults:
  endpoint: https://cn.myhuaweicloud-koodrive.com/
  interval: 2m
  timeout: 1500ms
  language: zh-CN
  kilobyte: 1000
accounts:
  - name: acme
    user_id: "42"
    auth: {app_id: "${APP_ID}", app_secret_file: secret}
  - name: "beta / €"
    user_id: "43"
    endpoint: http://127.0.0.1:8080
    interval: 90
    timeout: 1m
    kilobyte: "1024"
    language: en_us
    auth: {token: "Bearer+$${literal}-${KOODRIVE_TEST_SECRET}"}
""",
        env={"APP_ID": "app-1", **ENV},
        base_dir=tmp_path,
    )
    acme, beta = config.accounts
    assert acme.endpoint == "https://cn.myhuaweicloud-koodrive.com"
    assert (acme.interval, acme.timeout, acme.language, acme.kilobyte) == (120, 1.5, "zh-CN", 1000)
    assert isinstance(acme.auth, AppAuth)
    assert acme.auth.app_id == "app-1"
    assert acme.auth.secret.path == tmp_path / "secret"
    assert beta.endpoint == "http://127.0.0.1:8080"
    assert (beta.interval, beta.timeout, beta.language, beta.kilobyte) == (90, 60, "en_us", 1024)
    assert isinstance(beta.auth, TokenAuth)
    assert beta.auth.token.value == Secret("Bearer+${literal}-from-env")


def test_builtin_defaults() -> None:
    config = parse_config('accounts: [{name: a, user_id: "1", auth: {token: t}}]', env={})
    (account,) = config.accounts
    assert account.endpoint == "https://intl.myhuaweicloud-koodrive.com"
    assert (account.interval, account.timeout, account.language, account.kilobyte) == (
        60,
        10,
        "en-US",
        1024,
    )


@pytest.mark.parametrize("key", ["interval", "timeout", "backoff", "kilobyte"])
def test_a_null_setting_in_defaults_means_the_built_in_value(key: str) -> None:
    # `interval: null` in defaults was an internal error (KeyError) before the schema.
    config = parse_config(f"defaults: {{{key}: null}}\n{ACCOUNT}", env={})
    assert getattr(config.accounts[0], key) == getattr(
        parse_config(ACCOUNT, env={}).accounts[0], key
    )


def test_errors_and_reprs_never_show_secret_values(tmp_path: Path) -> None:
    config = parse_config(
        'accounts: [{name: a, user_id: "1", auth: {app_id: x, app_secret: "hunter2"}}]', env={}
    )
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config)
    with pytest.raises(ConfigError) as info:
        parse_config(
            'accounts: [{name: a, user_id: "1", auth: {token: "hunter2", token_file: x}}]', env={}
        )
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("2", 2), (1.5, 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 m", "m", "1x", "1s1", True, None, [1]])
def test_invalid_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost"])
def test_plain_http_allowed_for_loopback(host: str) -> None:
    config = parse_config(
        f'accounts: [{{name: a, user_id: "1", endpoint: "http://{host}:1", auth: {{token: t}}}}]',
        env={},
    )
    assert config.accounts[0].endpoint == f"http://{host}:1"


def test_example_config_is_valid_once_its_secret_files_exist(tmp_path: Path) -> None:
    example = (Path(__file__).parent.parent / "config.example.yaml").read_text(encoding="utf-8")
    for name in ("acme-app-secret", "beta-token"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    config = parse_config(example.replace("/run/secrets/koodrive/", f"{tmp_path}/"), env={})
    assert [a.name for a in config.accounts] == ["acme", "beta"]
    assert config.accounts[1].interval == 300


def test_example_config_shows_every_key() -> None:
    """It says it shows every option: each key appears, set or commented out."""
    example = (Path(__file__).parent.parent / "config.example.yaml").read_text(encoding="utf-8")
    shown = set(re.findall(r"^[\s#-]*(\w+):", example, re.MULTILINE))
    assert {key.rsplit(".", 1)[-1] for key in reference()} <= shown


def documented_reference() -> dict[str, str]:
    """docs/reference.md's configuration table as key -> where (`auth.token` / `auth.token_file`
    rows name two keys)."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("\n## Configuration reference\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| key | where | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    return {name: where.strip() for keys, where in rows for name in re.findall(r"`([^`]+)`", keys)}


def test_the_docs_list_exactly_the_keys_the_schema_declares() -> None:
    assert documented_reference() == reference()


def test_collectors_resolve_their_schedules_as_documented() -> None:
    config = parse_config(
        """
defaults:
  interval: 1m
  stale_after: 5m
  collectors: [overview, subscription]
accounts:
  - {name: listed, user_id: "1", auth: {token: t}}
  - {name: slow, user_id: "2", auth: {token: t}, interval: 20m, stale_after: 1h}
  - name: mapped
    user_id: "3"
    auth: {token: t}
    collectors: {quota_tiers: {interval: 5m}, subscription: {interval: 30s, stale_after: 2m}}
  - {name: inherits, user_id: "4", auth: {token: t}, collectors: null}
  - {name: plain, user_id: "5", auth: {token: t}, stale_after: null}
"""
    )
    schedules = {
        account.name: [(c.name, c.interval, c.stale_after) for c in account.collectors]
        for account in config.accounts
    }
    assert schedules == {
        # subscription: every 10 minutes, its data kept for at least three of them
        "listed": [("overview", 60.0, 300.0), ("subscription", 600.0, 1800.0)],
        # an account slower than that: the account's interval for both
        "slow": [("overview", 1200.0, 3600.0), ("subscription", 1200.0, 3600.0)],
        # own schedules; an account's list replaces the one in `defaults`
        "mapped": [("quota_tiers", 300.0, 900.0), ("subscription", 30.0, 120.0)],
        "inherits": [("overview", 60.0, 300.0), ("subscription", 600.0, 1800.0)],
        "plain": [("overview", 60.0, 300.0), ("subscription", 600.0, 1800.0)],
    }


def test_without_collectors_an_account_polls_the_overview_only() -> None:
    (account,) = parse_config(ACCOUNT).accounts
    assert [(c.name, c.interval, c.stale_after) for c in account.collectors] == [
        ("overview", 60.0, 180.0)
    ]
    assert account.page_size == 100
