"""The config file -> Config: the parsers of every value and the declarations of every key.

Every problem is collected and reported with its key path (`accounts[1].auth.token_file: ...`)
so an operator fixes a broken file in one round instead of one error per restart. Error
messages never echo a secret's value. The shapes built are in settings.py, the YAML rules
in yamlstrict.py, the file reading in files.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .configvalues import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    MIN_TIMEOUT,
    POLL_LIMITS,
    ValueChecker,
    fold_name,
)
from .endpoints import ENDPOINTS
from .schema import (
    NO_DEFAULT,
    NOT_MAPPING,
    REQUIRED,
    Choice,
    Either,
    Invalid,
    Key,
    Section,
    join,
    leaves,
    show_value,
)
from .settings import (
    DEFAULT_MAX_CONCURRENCY,
    X_DATE_WINDOW,
    AccountConfig,
    AppAuth,
    CollectorConfig,
    CollectorSpec,
    Config,
    ConfigError,
    SecretRef,
    TokenAuth,
    collector_config,
    is_loopback_host,
)
from .yamlstrict import load_yaml, read_config_file


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    file = Path(path)
    text = read_config_file(file)
    return parse_config(
        text, source=str(file), env=os.environ if env is None else env, base_dir=file.parent
    )


def parse_config(
    text: str,
    *,
    source: str = "<memory>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    raw = load_yaml(text, source)
    checker = ConfigChecker(env=os.environ if env is None else env, base_dir=base_dir or Path.cwd())
    try:
        values = checker.document(raw)
    except Exception as exc:
        # A last resort so that a reload never sees anything but ConfigError; the hostile
        # input tests check this message never appears.
        name = type(exc).__name__
        raise ConfigError(
            [f"{source}: internal error while checking the config ({name})"]
        ) from None
    if checker.errors or values is None:
        raise ConfigError(checker.errors)
    return Config(values["accounts"], values["max_concurrency"], source=source)


class ConfigChecker(ValueChecker):
    """The walk of the config's structure: sections, accounts, schedules, collectors."""

    def document(self, raw: object) -> dict[str, Any] | None:
        if raw is None:
            self.error("", "config is empty: it needs an `accounts` list")
            return None
        return self.walk(CONFIG, "", raw)

    def defaults(self, path: str, raw: object) -> dict[str, Any] | None:
        """Checked on their own, so a bad default is reported once at `defaults.x` rather
        than once per inheriting account; null is no defaults, as is a broken shape."""
        if raw is None:
            return None
        if not self.mapping(NOT_MAPPING, path, raw):
            raw = {}
        self.inherited = self.walk(DEFAULTS, path, raw)
        return self.inherited

    def accounts(self, path: str, raw: object) -> tuple[AccountConfig, ...]:
        if not isinstance(raw, list) or not raw:
            raise Invalid(_NO_ACCOUNTS)
        accounts: dict[str, AccountConfig] = {}
        seen: dict[str, tuple[str, str]] = {}  # folded name -> (where, name)
        for where, item in self.items(path, raw):
            account = self.account(where, item)
            if account is None:
                continue
            folded = fold_name(account.name)
            if folded in seen:
                also, first = seen[folded]
                shown = self.show(f"{where}.name", account.name)
                alike = "" if first == account.name else f" {self.show(also + '.name', first)}"
                why = "" if not alike else ": the same name after Unicode NFKC and case folding"
                self.error(
                    f"{where}.name", f"duplicate account name {shown} (also {also}{alike}{why})"
                )
            else:
                seen[folded] = (where, account.name)
                accounts[account.name] = account
        return tuple(accounts.values())

    def account(self, path: str, item: object) -> AccountConfig | None:
        """Built only when `defaults` are sound too (if not, that is reported already)."""
        values = self.walk(ACCOUNT, path, item, inherited=self.inherited or {})
        if values is None or self.inherited is None or not self.schedule(path, item, values):
            return None
        collectors = self.collector_schedules(path, item, values)
        if collectors is None:
            return None
        return AccountConfig(**(values | {"collectors": collectors}))

    def schedule(self, path: str, item: dict[str, Any], merged: dict[str, Any]) -> bool:
        """Check interval, timeout and stale_after together, where the endpoint is known.

        Errors name where the value was set: the account, or `defaults` when inherited.
        """

        def origin(key: str) -> str:
            return f"{path}.{key}" if key in item else f"defaults.{key}"

        def refuse(key: str, value: float, sign: str, rule: str) -> bool:
            shown = f"({value:g}s {sign} {interval:g}s)"
            self.error(
                origin(key), f"{rule} {self.hidden(origin(key), origin('interval')) or shown}"
            )
            return False

        interval, timeout = merged["interval"], merged["timeout"]
        loopback = is_loopback_host(urlsplit(merged["endpoint"]).hostname or "")
        before = len(self.errors)
        for key, floor, least in (
            ("interval", MIN_INTERVAL, f"{MIN_INTERVAL:g}s"),
            ("timeout", MIN_TIMEOUT, f"{MIN_TIMEOUT * 1000:g}ms"),
        ):
            if merged[key] < floor and not loopback:
                got = self.hidden(origin(key)) or f"(got {merged[key]:g}s)"
                self.error(origin(key), f"must be at least {least} {got}: {POLL_LIMITS}")
        if len(self.errors) != before:
            return False
        if timeout > interval:
            return refuse("timeout", timeout, ">", "must not exceed the interval")
        stale_after = merged.get("stale_after", interval)
        if stale_after < interval:
            return refuse("stale_after", stale_after, "<", "must be at least the interval")
        return True

    def collectors(self, path: str, raw: object) -> tuple[CollectorSpec, ...] | None:
        """A list of names, or a mapping of name to null or {interval, stale_after}; null is
        unset (the inherited or built-in list applies). An account's list replaces the one
        in `defaults`."""
        if raw is None:
            return None
        if isinstance(raw, list):
            names = [self.expand(f"{path}[{i}]", name) for i, name in enumerate(raw)]
            if not names or not all(isinstance(name, str) for name in names):
                raise Invalid(f"{_COLLECTORS} (got {show_value(raw)})")
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise Invalid(f"names {', '.join(map(str, repeated))} more than once")
            raw = dict.fromkeys(names)
        if not isinstance(raw, dict) or not raw:
            raise Invalid(f"{_COLLECTORS} (got {show_value(raw)})")
        specs: list[CollectorSpec] = []
        for name, settings in raw.items():
            where = join(path, name)
            if name not in ENDPOINTS:
                self.error(where, f"unknown collector (known: {', '.join(ENDPOINTS)})")
                continue
            values = self.walk(COLLECTOR, where, {} if settings is None else settings)
            if values is not None:
                specs.append((name, values.get("interval"), values.get("stale_after")))
        if len(specs) != len(raw):
            raise Invalid
        return tuple(specs)

    def collector_schedules(
        self, path: str, item: dict[str, Any], merged: dict[str, Any]
    ) -> tuple[CollectorConfig, ...] | None:
        """The account's collectors, resolved against its schedule (already checked).

        Only a collector's own `interval` and `stale_after` can break the account's limits;
        an error names where they were set and, when that is `defaults`, the account too.
        """
        # With no collectors named, AccountConfig fills in the built-in ones.
        account = AccountConfig(**(merged | {"collectors": ()}))
        specs = merged.get("collectors")
        if specs is None:
            return account.collectors
        origin = f"{path}.collectors" if "collectors" in item else "defaults.collectors"
        timeout_at = f"{path}.timeout" if "timeout" in item else "defaults.timeout"
        of_account = "" if "collectors" in item else f" (for {path})"
        loopback = is_loopback_host(urlsplit(account.endpoint).hostname or "")
        before = len(self.errors)

        def refuse(at: str, rule: str, shown: str, *paths: str) -> None:
            self.error(at, f"{rule}{of_account} {self.hidden(at, *paths) or shown}")

        resolved = []
        for spec in specs:
            collector = collector_config(spec, account.interval, account.stale_after_seconds)
            resolved.append(collector)
            interval_at, stale_at = (f"{origin}.{spec[0]}.{key}" for key in _COLLECTOR_KEYS)
            every = collector.interval
            if spec[1] is not None and every < MIN_INTERVAL and not loopback:
                refuse(interval_at, f"must be at least {MIN_INTERVAL:g}s", f"(got {every:g}s)")
            elif spec[1] is not None and account.timeout > every:
                shown = f"({every:g}s < {account.timeout:g}s)"
                refuse(interval_at, "must be at least the timeout", shown, timeout_at)
            if spec[2] is not None and collector.stale_after < every:
                shown = f"({collector.stale_after:g}s < {every:g}s)"
                refuse(stale_at, "must be at least the collector's interval", shown, interval_at)
        return tuple(resolved) if len(self.errors) == before else None


def _secret_ref(values: Mapping[str, Any], key: str) -> SecretRef:
    """The SecretRef of an Either(key, key_file) pair, whichever was set."""
    if key in values:
        return SecretRef(key=key, value=values[key])
    return SecretRef(key=f"{key}_file", path=values[f"{key}_file"])


def _built_in(name: str) -> Any:
    """An inheritable setting's built-in value: AccountConfig's default, declared once."""
    return AccountConfig.__dataclass_fields__[name].default


_NO_ACCOUNTS = "must be a non-empty list of accounts"
_COLLECTORS = (
    f"must be a non-empty list of distinct collectors ({', '.join(ENDPOINTS)}), or a mapping "
    "of collector to null or {interval, stale_after}"
)
_ACCOUNT_HOLDERS = ("defaults", "accounts")
_AUTH_KINDS = "app_id + app_secret(_file), or token(_file)"
# The lower limits of interval and timeout depend on the endpoint: `schedule` checks them.
_INTERVAL = partial(ConfigChecker.duration, at_most=MAX_INTERVAL)
# At most half the X-Date window (docs/koodrive-api.md section 2.2), leaving room for skew.
_X_DATE_MARGIN = partial(ConfigChecker.duration, allow_zero=True, below=X_DATE_WINDOW / 2)
# Both are sent as HTTP headers; a user id written as a number has lost digits to YAML.
_HEADER_TEXT = partial(ConfigChecker.string, printable=True)
_USER_ID = partial(ConfigChecker.string, quote_hint=True, printable=True)
# The keys an account inherits from `defaults`, in the order they are checked; the
# table in docs/reference.md's "Configuration reference" lists the same (tests/test_config.py).
_INHERITED: tuple[Key[ConfigChecker], ...] = (
    Key("endpoint", ConfigChecker.endpoint, _built_in("endpoint"), doc=(
        "API base URL. `https://cn.myhuaweicloud-koodrive.com` for mainland China. `https://` "
        "is required; `http://` only for loopback hosts (the simulator). May carry a path "
        "prefix; no credentials, query or fragment.")),
    Key("interval", _INTERVAL, _built_in("interval"), doc=(
        "time between polls of an account; each account keeps a fixed slot in it (see "
        "[Scale](benchmarks.md#scale)). Durations: `500ms`, `30s`, `5m`, `1h`, `1m30s` or a "
        "number of seconds; 1s to 24h (shorter only for a loopback endpoint such as the "
        "simulator: KooDrive is a SaaS API).")),
    Key("timeout", _INTERVAL, _built_in("timeout"), doc=(
        "total time for one request; at least 100ms (again, less only for loopback) and at "
        "most `interval`.")),
    Key("language", ConfigChecker.language, _built_in("language"), doc=(
        "sent as the `language` header; affects only message language.")),
    Key("kilobyte", ConfigChecker.kilobyte, _built_in("kilobyte"), doc=(
        "bytes per KB reported by the API, `1024` or `1000` (KooDrive does not say which it "
        "means).")),
    Key("retries", ConfigChecker.retries, _built_in("retries"), doc=(
        "retries of a transient failure (`timeout`, `connection`, 5xx, `rate_limited`) within "
        "one interval, 0 to 10.")),
    Key("backoff", ConfigChecker.duration, _built_in("backoff"), doc=(
        "base of the exponential backoff with full jitter: retry *n* waits uniformly 0 to "
        "`backoff` \u00d7 2^*n* (capped at half the interval), and never less than a "
        "`Retry-After`.")),
    Key("x_date_margin", _X_DATE_MARGIN, _built_in("x_date_margin"), doc=(
        "X-Date is signed this much before the (skew-corrected) server time, because KooDrive "
        "refuses any X-Date later than its clock. 0 to 7.5 minutes.")),
    Key("stale_after", ConfigChecker.duration, shown="3 \u00d7 `interval`", doc=(
        "when the last success is older than this, the account's space gauges disappear; "
        "`koodrive_up` and the timestamp stay. At least the interval.")),
    Key("ca_file", ConfigChecker.ca_file, shown="system CAs", doc=(
        "PEM bundle to verify KooDrive's certificate with (e.g. behind a TLS-intercepting "
        "proxy).")),
    Key("insecure_skip_verify", ConfigChecker.boolean, False, doc=(
        "do not verify KooDrive's certificate. Only when set explicitly; logged as a warning "
        "at every start and reload.")),
    Key("collectors", ConfigChecker.collectors, shown="`[overview]`", doc=(
        "what to poll: a list of `overview`, `subscription`, `quota_tiers`, or a mapping of "
        "each to null or `{interval, stale_after}` of its own (see \"Collectors\" below).")),
    Key("page_size", ConfigChecker.page_size, _built_in("page_size"), doc=(
        "items asked for per page (`limit`) of a paged endpoint (`quota_tiers`), 10 to 1000 "
        "(100 pages of at least 10 reach the 1,000 tiers read at most).")),
)  # fmt: skip
DEFAULTS = Section(_INHERITED)
_INHERITED_NAMES = frozenset(key.name for key in _INHERITED)
_COLLECTOR_KEYS = ("interval", "stale_after")
COLLECTOR = Section(
    (
        Key("interval", _INTERVAL, doc="the collector's own interval"),
        Key("stale_after", ConfigChecker.duration, doc="the collector's own stale_after"),
    ),
    not_mapping="must be null or a mapping with `interval` and/or `stale_after`",
)
_APP_PAIR_DOC = "the AppSecret, inline (use `${ENV}`) or in a file; exactly one."
_BEARER_DOC = (
    "token authentication: the access token, sent verbatim as `Authorization` (include a "
    "`Bearer+` prefix if KooDrive issued one); exactly one."
)
_APP_AUTH: Section[ConfigChecker] = Section(
    (
        Key("app_id", _HEADER_TEXT, missing=REQUIRED, doc="app authentication: the AppId."),
        Either(
            (
                Key("app_secret", ConfigChecker.secret, doc=_APP_PAIR_DOC),
                Key("app_secret_file", ConfigChecker.secret_file, doc=_APP_PAIR_DOC),
            )
        ),
    ),
    build=lambda _c, _path, v: AppAuth(app_id=v["app_id"], secret=_secret_ref(v, "app_secret")),
)
_TOKEN_AUTH: Section[ConfigChecker] = Section(
    (
        Either(
            (
                Key("token", ConfigChecker.secret, doc=_BEARER_DOC),
                Key("token_file", ConfigChecker.secret_file, doc=_BEARER_DOC),
            )
        ),
    ),
    build=lambda _c, _path, v: TokenAuth(token=_secret_ref(v, "token")),
)
_AUTH = Choice(
    (_APP_AUTH, _TOKEN_AUTH),
    mixed="has keys of both app and token authentication; use exactly one kind",
    neither=f"must hold {_AUTH_KINDS}",
    not_mapping=f"must be a mapping with {_AUTH_KINDS}",
)
ACCOUNT = Section(
    (
        Key(
            "name",
            ConfigChecker.name,
            missing=REQUIRED,
            doc=(
                "the `account` label; printable, at most 128 characters; unique even after "
                "Unicode NFKC normalisation and case folding (`Acme`, `acme` and a fullwidth "
                "`\uff41cme` are one name); not mixing Latin, Greek and Cyrillic letters."
            ),
        ),
        Key(
            "user_id",
            _USER_ID,
            missing=REQUIRED,
            doc=(
                "KooDrive user id, sent as `X-User-Id`. Must be a quoted string (YAML would "
                "alter long numbers)."
            ),
        ),
        Key("auth", _AUTH, missing=_AUTH.not_mapping, doc="app or token authentication"),
        *_INHERITED,
    )
)
CONFIG = Section(
    (
        Key("defaults", ConfigChecker.defaults, {}, doc="settings every account inherits"),
        Key("accounts", ConfigChecker.accounts, missing=_NO_ACCOUNTS, doc="the accounts to poll"),
        Key(
            "max_concurrency",
            ConfigChecker.concurrency,
            DEFAULT_MAX_CONCURRENCY,
            doc=("polls in flight at once over all accounts, 1 to 4096."),
        ),
    ),
    not_mapping="config must be a mapping with `defaults` and `accounts`",
)


def reference() -> dict[str, str]:
    """Every key that holds a value -> where it may be set: what docs/reference.md's
    configuration reference must list (`defaults` and `accounts` hold the others)."""
    inherited = {key.name for key in _INHERITED}
    top = {key.name: "top level" for key in CONFIG.declared() if key.name not in _ACCOUNT_HOLDERS}
    return top | {
        name: "defaults, account" if name in inherited else "account"
        for name, _key in leaves(ACCOUNT)
    }


def reference_rows() -> list[tuple[str, str, str, str]]:
    """docs/reference.md's configuration table, from the declarations: (keys, where,
    default, meaning) per key, an either-or pair on one row (`auth.token` / `auth.token_file`)."""
    where = reference()
    rows = []
    for section, prefix in (
        (ACCOUNT, ""),
        (_APP_AUTH, "auth."),
        (_TOKEN_AUTH, "auth."),
        (CONFIG, ""),
    ):
        for entry in section.keys:
            keys = entry.keys if isinstance(entry, Either) else (entry,)
            names = [prefix + key.name for key in keys]
            if names[0] not in where or (section is CONFIG and names[0] in _INHERITED_NAMES):
                continue
            key = keys[0]
            if prefix:  # which keys an auth kind needs, its meaning says
                key = dataclasses.replace(key, missing=None)
            rows.append(
                (" / ".join(f"`{n}`" for n in names), where[names[0]], _shown(key), key.doc)
            )
    return rows


def _shown(key: Key[ConfigChecker]) -> str:
    if key.missing is not None:
        return "required"
    if key.shown or key.default is NO_DEFAULT:
        return key.shown
    parse = key.parse.func if isinstance(key.parse, partial) else key.parse
    if parse is ConfigChecker.duration:
        return f"`{key.default:g}s`"
    return f"`{str(key.default).lower() if isinstance(key.default, bool) else key.default}`"
