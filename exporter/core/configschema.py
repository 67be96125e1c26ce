"""The JSON Schema (draft 2020-12) of config.yaml, made from config.py's declarations.

Editors (through the `yaml-language-server` modeline of config.example.yaml), CI jobs and the
Helm chart check a config with it before the exporter ever reads it. It is generated, never
written by hand: each parser of configvalues.py has its fragment here, keyed by the parser
itself, and the sections, either-or pairs and choices of config.py become objects,
`oneOf`s and `required` lists, so a key declared there is in the schema with no second edit.

The schema never refuses what the loader accepts (tests/test_configschema.py holds the two
to that over the config corpus and over configs generated from the schema); what only the
loader can judge is listed in the description, LOADER_ONLY.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from .config import ACCOUNT, COLLECTOR, CONFIG, DEFAULTS, ConfigChecker
from .configvalues import LANGUAGE, NAME_LIMIT, ValueChecker
from .endpoints import ENDPOINTS
from .schema import Choice, Either, Key, Section
from .settings import MAX_CONCURRENCY, MAX_PAGE, MAX_RETRIES, MIN_PAGE

SCHEMA_ID = (
    "https://raw.githubusercontent.com/koodrive-exporter/koodrive-exporter/main/"
    "exporter/config.schema.json"
)
LOADER_ONLY = (
    "YAML without duplicate keys, anchors, aliases, tags or dates, at most 32 levels deep",
    "files exist and are readable (secret files non-empty, CA bundles PEM)",
    "${VAR} references name set variables, and what they expand to is valid",
    "durations written as strings are in range",
    "an endpoint is a URL with a host, and http:// only for a loopback one",
    "timeout at most the interval; stale_after at least it",
    "text printable by Python's rules (no format, separator or unassigned characters either)",
    "account names unique after Unicode NFKC and case folding, not mixing scripts",
)
Fragment = dict[str, Any]
# Any character but a control character (C0, DEL, C1), written as the characters themselves:
# JSON Schema's regexes are ECMA-262's and Helm's are Go's, which share no \u escape.
_VISIBLE = "[^\x00-\x1f\x7f-\x9f]"
# Fragments used in many places, written once under $defs.
DEFS: dict[str, Fragment] = {
    # A string holding a ${VAR} reference: the loader expands it before judging the value.
    "env": {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}"},
    # Visible text: not blank, no control characters (the loader's isprintable() is stricter).
    "text": {
        "type": "string",
        "pattern": f"^{_VISIBLE}*\\S{_VISIBLE}*$",
    },
    # A secret: any characters but control characters, spaces included.
    "secret": {"type": "string", "pattern": f"^{_VISIBLE}+$"},
    "digits": {"type": "string", "pattern": r"^\s*[0-9]{1,9}\s*$"},
    # 500ms, 30s, 1m30s, or a number of seconds written as a string.
    "duration": {
        "type": "string",
        "pattern": r"^\s*-?(?:(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+|[0-9._eE+-]+|inf|nan)\s*$",
    },
}
ENV, TEXT, SECRET, DIGITS, DURATION = ({"$ref": f"#/$defs/{name}"} for name in DEFS)


def _any(*choices: Fragment) -> Fragment:
    return {"anyOf": list(choices)}


def _duration(
    *, allow_zero: bool = False, below: float = float("inf"), at_most: float = float("inf")
) -> Fragment:
    number: Fragment = {"type": "number", ("minimum" if allow_zero else "exclusiveMinimum"): 0}
    if below != float("inf"):
        number["exclusiveMaximum"] = below
    if at_most != float("inf"):
        number["maximum"] = at_most
    return _any(number, DURATION, ENV, {"type": "null"})


def _whole(low: int, high: int, *, nullable: bool = False) -> Fragment:
    choices = [{"type": "integer", "minimum": low, "maximum": high}, DIGITS, ENV]
    return _any(*choices, *([{"type": "null"}] if nullable else []))


_FRAGMENTS: dict[Callable[..., Any], Callable[..., Fragment]] = {
    ValueChecker.endpoint: lambda: _any({"type": "string", "pattern": r"^https?://[^\s/?#]+"}, ENV),
    ValueChecker.duration: _duration,
    ValueChecker.ca_file: lambda: TEXT,
    ValueChecker.secret_file: lambda: TEXT,
    ValueChecker.secret: lambda: SECRET,
    ValueChecker.boolean: lambda: {"type": "boolean"},
    ValueChecker.retries: lambda: _whole(0, MAX_RETRIES),
    ValueChecker.kilobyte: lambda: _any({"enum": [1000, 1024]}, DIGITS, ENV, {"type": "null"}),
    ValueChecker.page_size: lambda: _whole(MIN_PAGE, MAX_PAGE),
    ValueChecker.concurrency: lambda: {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
    ValueChecker.language: lambda: _any(
        {"type": "string", "pattern": f"^{LANGUAGE.pattern}$"}, ENV
    ),
    ValueChecker.name: lambda: {"allOf": [TEXT, {"maxLength": NAME_LIMIT}]},
    ValueChecker.string: lambda printable=False, quote_hint=False: TEXT,
}


def _collectors() -> Fragment:
    names = _any({"enum": list(ENDPOINTS)}, ENV)
    own = _section(COLLECTOR)
    return _any(
        {"type": "array", "items": names, "minItems": 1, "uniqueItems": True},
        {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"enum": list(ENDPOINTS)},
            "additionalProperties": _any({"type": "null"}, own),
        },
        {"type": "null"},
    )


_STRUCTURE: dict[Callable[..., Any], Callable[[], Fragment]] = {
    ConfigChecker.defaults: lambda: _any({"type": "null"}, _section(DEFAULTS)),
    ConfigChecker.accounts: lambda: {"type": "array", "minItems": 1, "items": _section(ACCOUNT)},
    ConfigChecker.collectors: lambda: _collectors(),
}


def _value(parse: Any) -> Fragment:
    if isinstance(parse, Section):
        return _any({"type": "null"}, _section(parse))
    if isinstance(parse, Choice):
        return {"oneOf": [_section(kind) for kind in parse.kinds]}
    func, keywords = (
        (parse.func, parse.keywords) if isinstance(parse, functools.partial) else (parse, {})
    )
    builder = _FRAGMENTS.get(func) or _STRUCTURE.get(func)
    if builder is None:
        raise KeyError(f"no JSON Schema fragment for the parser {func.__qualname__}")
    return builder(**keywords)


def _section(section: Section[Any]) -> Fragment:
    properties: dict[str, Fragment] = {}
    required: list[str] = []
    either: list[Fragment] = []
    for entry in section.keys:
        keys: tuple[Key[Any], ...] = entry.keys if isinstance(entry, Either) else (entry,)
        for key in keys:
            properties[key.name] = _value(key.parse) | ({"description": key.doc} if key.doc else {})
            if key.missing is not None:
                required.append(key.name)
        if isinstance(entry, Either):
            either.append({"oneOf": [{"required": [key.name]} for key in keys]})
    fragment: Fragment = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        fragment["required"] = required
    if len(either) == 1:
        fragment |= either[0]
    elif either:
        fragment["allOf"] = either
    return fragment


def json_schema() -> Fragment:
    """The schema as a JSON-ready dict."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "koodrive-exporter config.yaml",
        "description": "The configuration of koodrive-exporter (docs/reference.md). Left to the "
        "exporter, which checks them when it loads the file: " + "; ".join(LOADER_ONLY) + ".",
        **_section(CONFIG),
        "$defs": DEFS,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
