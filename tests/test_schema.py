"""The declarative schema engine on a toy format: exact messages, key paths, defaults."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.core.schema import (
    REQUIRED,
    Checker,
    Choice,
    Either,
    Invalid,
    Key,
    Section,
    leaves,
)


def port(checker: Checker, path: str, raw: object) -> int | None:
    if raw is None:
        return None  # unset: the default applies
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw < 65536:
        raise Invalid(f"must be a port number (got {raw!r})")
    return raw


def text(checker: Checker, path: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise Invalid("must be a string")
    return raw


def servers(checker: Checker, path: str, raw: object) -> list[Any]:
    if not isinstance(raw, list):
        raise Invalid("must be a list")
    return [checker.walk(SERVER, where, item) for where, item in checker.items(path, raw)]


def ports_in_order(checker: Checker, path: str, values: dict[str, Any]) -> None:
    if values.get("low", 0) > values.get("high", 65535):
        checker.error(f"{path}.high", "is below low")


SERVER = Section((Key("host", text, missing=REQUIRED), Key("port", port, 80)))
PASSWORD = Section(
    (Either((Key("password", text), Key("password_file", text))),),
    build=lambda _c, _path, values: ("password", values),
)
TOKEN = Section((Key("token", text),), build=lambda _c, _path, values: ("token", values))
AUTH = Choice((PASSWORD, TOKEN), mixed="mixes kinds", neither="holds no credentials")
ROOT = Section(
    (
        Key("server", SERVER),
        Key("servers", servers),
        Key("auth", AUTH),
        Key("range", Section((Key("low", port), Key("high", port)), rules=(ports_in_order,))),
    ),
    refused={"tls": "not supported; remove it"},
)


def check(raw: object, spec: Section[Any] = ROOT) -> tuple[Any, list[str]]:
    checker = Checker()
    return checker.walk(spec, "", raw), checker.errors


def test_a_clean_document_is_its_values_with_defaults_applied() -> None:
    assert check({"server": {"host": "a"}}) == ({"server": {"host": "a", "port": 80}}, [])


def test_null_that_the_parser_calls_unset_takes_the_default() -> None:
    assert check({"server": {"host": "a", "port": None}})[0] == {
        "server": {"host": "a", "port": 80}
    }


def test_declared_defaults_are_parsed_like_written_values() -> None:
    broken = Section((Key("port", port, "80"),))
    assert check({}, broken) == (None, ["port: must be a port number (got '80')"])


def test_inherited_values_replace_declared_defaults() -> None:
    checker = Checker()
    assert checker.walk(SERVER, "s", {"host": "a"}, inherited={"port": 8080}) == {
        "host": "a",
        "port": 8080,
    }


def test_unknown_key_lists_the_allowed_ones() -> None:
    assert check({"server": {"host": "a", "prot": 1}}) == (
        None,
        ["server.prot: unknown key (allowed: host, port)"],
    )


def test_refused_key_gives_its_reason() -> None:
    assert check({"tls": {}})[1] == ["tls: not supported; remove it"]


def test_custom_wording_for_unknown_keys() -> None:
    headers = Section((Key("X-Frame-Options", text),), unknown="not allowed")
    assert check({"Set-Cookie": "x"}, headers)[1] == [
        "Set-Cookie: not allowed (allowed: X-Frame-Options)"
    ]


def test_missing_required_key() -> None:
    assert check({"server": {"port": 1}}) == (None, ["server.host: is required"])


def test_wrong_type_and_wrong_shape() -> None:
    assert check({"server": {"host": "a", "port": "x"}})[1] == [
        "server.port: must be a port number (got 'x')"
    ]
    assert check({"server": []})[1] == ["server: must be a mapping"]
    assert check([])[1] == ["must be a mapping"]


def test_list_items_are_named_by_index() -> None:
    result = check({"servers": [{"host": "a"}, {"host": 1}, 7]})
    assert result == (None, ["servers[1].host: must be a string", "servers[2]: must be a mapping"])


def test_every_error_is_reported_at_once_in_declaration_order() -> None:
    raw = {
        "zzz": 1,
        "server": {"port": 0},
        "servers": [{"host": "a", "port": True}],
        "auth": {},
        "range": {"low": 9, "high": 99999},
    }
    assert check(raw)[1] == [
        "zzz: unknown key (allowed: auth, range, server, servers)",
        "server.host: is required",
        "server.port: must be a port number (got 0)",
        "servers[0].port: must be a port number (got True)",
        "auth: holds no credentials",
        "range.high: must be a port number (got 99999)",
    ]


def test_rules_compare_keys_that_passed() -> None:
    assert check({"range": {"low": 9, "high": 8}})[1] == ["range.high: is below low"]


def test_either_wants_exactly_one_key() -> None:
    assert check({"auth": {"password": "a", "password_file": "b"}})[1] == [
        "auth: set either password or password_file, not both"
    ]
    assert check({"auth": {"password": "a"}})[0] == {"auth": ("password", {"password": "a"})}


def test_choice_is_told_apart_by_its_keys() -> None:
    assert check({"auth": {"token": "t"}})[0] == {"auth": ("token", {"token": "t"})}
    assert check({"auth": {"token": "t", "password": "p"}})[1] == ["auth: mixes kinds"]
    assert check({"auth": {"token": "t", "user": "u"}})[1] == [
        "auth.user: unknown key (allowed: password, password_file, token)"
    ]


def test_an_error_met_twice_is_reported_once() -> None:
    checker = Checker()
    for _ in range(3):
        checker.walk(SERVER, "defaults", {"port": 0})
    assert checker.errors == [
        "defaults.host: is required",
        "defaults.port: must be a port number (got 0)",
    ]


def test_a_parser_that_reported_itself_adds_nothing() -> None:
    def noisy(checker: Checker, path: str, raw: object) -> None:
        checker.error(path, "first problem")
        checker.error(path, "second problem")
        raise Invalid

    assert check({"a": 1}, Section((Key("a", noisy),)))[1] == [
        "a: first problem",
        "a: second problem",
    ]


@pytest.mark.parametrize(
    ("key", "shown"),
    [(5, "5"), ("", "''"), ("a\nb", "'a\\nb'"), ("k" * 100, "'" + "k" * 59 + "...")],
)
def test_odd_keys_are_quoted_and_cut_in_paths(key: object, shown: str) -> None:
    assert check({"server": {"host": "a", key: 1}})[1] == [
        f"server.{shown}: unknown key (allowed: host, port)"
    ]


def test_leaves_list_every_value_key_with_its_path() -> None:
    assert [name for name, _key in leaves(ROOT)] == [
        "server.host",
        "server.port",
        "servers",
        "auth.password",
        "auth.password_file",
        "auth.token",
        "range.low",
        "range.high",
    ]
