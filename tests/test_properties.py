"""Property tests: arbitrary input yields a value or one of the typed errors, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.config import parse_config
from exporter.core.endpoints import OVERVIEW
from exporter.core.model import FetchError, Reason, UsageBytes
from exporter.core.settings import AccountConfig, Config, ConfigError
from exporter.upstream.client import parse_answer

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
totals = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True),
    json_values,
)
overview_like = st.fixed_dictionaries(
    {},
    optional={
        "code": st.sampled_from([0, "0", 1, "13000201", "APIGW.0301", None, True, 0.0]),
        "msg": st.text(max_size=10),
        "data": st.none()
        | st.fixed_dictionaries(
            {},
            optional={"totalAllocation": totals, "totalCapacity": totals, "totalUsed": totals},
        ),
    },
)


def parse_outcome(body: bytes) -> object:
    try:
        return parse_answer(OVERVIEW, body, 1)
    except FetchError as exc:
        return exc


def check_parse(body: bytes) -> None:
    result = parse_outcome(body)
    if isinstance(result, FetchError):
        assert result.reason in (Reason.API_ERROR, Reason.AUTH, Reason.INVALID_RESPONSE)
        assert len(result.detail) <= 200
        return
    assert isinstance(result, UsageBytes)
    for value in (result.allocated, result.capacity, result.used):
        assert type(value) is int
        assert 0 <= value < 2**63


@given(st.binary(max_size=300))
def test_parser_on_arbitrary_bytes(body: bytes) -> None:
    check_parse(body)


@given(json_values)
def test_parser_on_arbitrary_json(document: object) -> None:
    check_parse(json.dumps(document).encode())


@given(overview_like)
def test_parser_on_overview_shaped_json(document: dict[str, object]) -> None:
    check_parse(json.dumps(document, allow_nan=True).encode())


@given(st.text(max_size=400))
def test_config_on_arbitrary_text(text: str) -> None:
    check_config(text)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=15),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=15,
)
account_like = st.fixed_dictionaries(
    {},
    optional={
        "name": yaml_values,
        "user_id": yaml_values,
        "interval": st.sampled_from(["30s", "-1s", "0", "1m30s", "5 m", 3, True]) | yaml_values,
        "timeout": st.sampled_from(["10s", "2h", 0.5]) | yaml_values,
        "kilobyte": st.sampled_from([1000, 1024, "1024", 1]) | yaml_values,
        "endpoint": st.sampled_from(["https://a.b", "http://127.0.0.1:1", "ftp://x"]),
        "auth": st.fixed_dictionaries(
            {},
            optional={
                "token": yaml_values,
                "token_file": st.sampled_from(["/nonexistent", "/", "/etc/hostname"]),
                "app_id": yaml_values,
                "app_secret": st.sampled_from(["${UNSET_VAR}", "$$x", "s"]) | yaml_values,
            },
        )
        | yaml_values,
        "retries": yaml_values,
        "stale_after": yaml_values,
    },
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({"accounts": st.lists(account_like, max_size=3)}, optional={
    "defaults": st.dictionaries(st.sampled_from(["interval", "timeout", "kilobyte", "x"]),
                                yaml_values, max_size=3),
}))  # fmt: skip
def test_config_on_config_shaped_documents(document: dict[str, object]) -> None:
    check_config(yaml.safe_dump(document, allow_unicode=True))


def config_outcome(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, env={}, base_dir=Path("/"))
    except ConfigError as exc:
        return exc


def check_config(text: str) -> None:
    result = config_outcome(text)
    if isinstance(result, ConfigError):
        assert result.errors
        assert all(isinstance(error, str) and error for error in result.errors)
    else:
        assert result.accounts
        for account in result.accounts:
            assert isinstance(account, AccountConfig)
            assert 0 < account.timeout <= account.interval
            assert account.kilobyte in (1000, 1024)
