"""Config files declared as data: every key once, with its parser, default and doc line.

One Checker walks both config files and collects every problem with its key path
(`accounts[1].auth.token_file: ...`): an operator fixes a file in one round, both files
report alike, and a new key is one declaration. A parser is `(checker, path, raw) -> value`;
it raises Invalid to refuse a value and returns None for "unset" (the fallback applies).
Not pydantic: its import alone costs about 100 ms per start (docs/architecture.md).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

REQUIRED: Final = "is required"
NOT_MAPPING: Final = "must be a mapping"
# How much of a user's value an error message may quote.
SHOWN_VALUE_LIMIT: Final = 60
# The default of a key that has none (None is a value a parser may be given).
NO_DEFAULT: Final[Any] = object()

C = TypeVar("C", bound="Checker")


class Invalid(Exception):
    """A parser's refusal of a value; without a message, the parser reported it already."""


@dataclass(frozen=True, slots=True)
class Key(Generic[C]):
    """One key. An absent key takes its default, parsed like a written value (so it cannot
    be one its own parser refuses); with `missing` set it is required, and that the error."""

    name: str
    parse: Callable[[C, str, Any], Any]
    default: Any = NO_DEFAULT
    missing: str | None = None
    # What the key means, for the reference table (Markdown) and the JSON Schema.
    doc: str = ""
    # The default as the reference shows it, when the value itself would not read well.
    shown: str = ""


@dataclass(frozen=True, slots=True)
class Either(Generic[C]):
    """Keys of which exactly one must be set, such as a secret inline or in a file."""

    keys: tuple[Key[C], ...]


@dataclass(frozen=True, slots=True)
class Section(Generic[C]):
    """A mapping of declared keys; any other key is refused with the list of allowed ones.

    `rules` check keys against each other over the values that passed, so they run even
    when an unrelated key is broken (every error at once); `build` turns a section without
    errors into its result. `refused` maps keys of the format we refuse to the reason.
    """

    keys: tuple[Key[C] | Either[C], ...]
    build: Callable[[C, str, dict[str, Any]], Any] | None = None
    rules: tuple[Callable[[C, str, dict[str, Any]], None], ...] = ()
    not_mapping: str = NOT_MAPPING
    unknown: str = "unknown key"
    refused: Mapping[str, str] = field(default_factory=dict)

    def declared(self) -> tuple[Key[C], ...]:
        """Every key, those inside an Either too: what a reference lists."""
        return tuple(k for e in self.keys for k in (e.keys if isinstance(e, Either) else (e,)))

    def names(self) -> frozenset[str]:
        return frozenset(key.name for key in self.declared())

    def __call__(self, checker: C, path: str, raw: object) -> Any:
        """As a parser: a null section is an absent one."""
        return None if raw is None else checker.walk(self, path, raw)


@dataclass(frozen=True, slots=True)
class Choice(Generic[C]):
    """A mapping that is one of several sections, told apart by the keys it holds."""

    kinds: tuple[Section[C], ...]
    mixed: str
    neither: str
    not_mapping: str = NOT_MAPPING

    def __call__(self, checker: C, path: str, raw: object) -> Any:
        return None if raw is None else checker.choose(self, path, raw)


class Checker:
    """Walks declarations over parsed YAML, collecting every error with its key path.

    Subclasses add what their parsers need (the environment, a base directory); each load
    of a file uses a fresh one, so nothing is shared between loads.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._reported: set[str] = set()

    def error(self, path: str, message: str) -> None:
        """Record an error once: a bad default met through many accounts is one problem."""
        text = f"{path}: {message}" if path else message
        if text not in self._reported:
            self._reported.add(text)
            self.errors.append(text)

    def walk(
        self, spec: Section[Any], path: str, raw: object, inherited: Mapping[str, Any] | None = None
    ) -> Any:
        """The section built from `raw`, or None when anything in it is wrong. An absent key
        takes `inherited`'s value when given (an account inheriting `defaults`), else its
        declared default."""
        if not self.mapping(spec.not_mapping, path, raw):
            return None
        before = len(self.errors)
        self.unknown_keys(path, raw, spec)
        return self._built(spec, path, raw, inherited, before)

    def choose(self, spec: Choice[Any], path: str, raw: object) -> Any:
        """The built kind whose keys `raw` holds; exactly one kind may match."""
        if not self.mapping(spec.not_mapping, path, raw):
            return None
        before = len(self.errors)
        self.unknown_keys(path, raw, Section(tuple(e for kind in spec.kinds for e in kind.keys)))
        kinds = [kind for kind in spec.kinds if kind.names() & raw.keys()]
        if len(kinds) != 1:
            self.error(path, spec.mixed if kinds else spec.neither)
            return None
        return self._built(kinds[0], path, raw, None, before)

    def mapping(self, message: str, path: str, raw: object) -> bool:
        if not isinstance(raw, dict):
            self.error(path, message)
        return isinstance(raw, dict)

    def items(self, path: str, raw: list[Any]) -> Iterator[tuple[str, Any]]:
        """A list's items with their key paths, `accounts[1]`."""
        for index, item in enumerate(raw):
            yield f"{path}[{index}]", item

    def unknown_keys(self, path: str, raw: dict[Any, Any], spec: Section[Any]) -> None:
        allowed = spec.names()
        for key in raw:
            if key in spec.refused:
                self.error(join(path, key), spec.refused[key])
            elif key not in allowed:
                shown = ", ".join(sorted(allowed))
                self.error(join(path, key), f"{spec.unknown} (allowed: {shown})")

    def _built(
        self,
        spec: Section[Any],
        path: str,
        raw: dict[str, Any],
        inherited: Mapping[str, Any] | None,
        before: int,
    ) -> Any:
        values: dict[str, Any] = {}
        for entry in spec.keys:
            key = self._either(entry, path, raw) if isinstance(entry, Either) else entry
            value = None if key is None else self._value(key, join(path, key.name), raw, inherited)
            if key is not None and value is not None:
                values[key.name] = value
        for rule in spec.rules:
            rule(self, path, values)
        if len(self.errors) != before:
            return None
        return values if spec.build is None else spec.build(self, path, values)

    def _either(self, entry: Either[Any], path: str, raw: dict[str, Any]) -> Key[Any] | None:
        present = [key for key in entry.keys if key.name in raw]
        if len(present) == 1:
            return present[0]
        names = " or ".join(key.name for key in entry.keys)
        self.error(path, f"set either {names}, not both" if present else f"missing {names}")
        return None

    def _value(
        self, key: Key[Any], path: str, raw: dict[str, Any], inherited: Mapping[str, Any] | None
    ) -> Any:
        """A key's clean value; an absent key, or one its parser calls unset, falls back."""
        before = len(self.errors)
        try:
            value = key.parse(self, path, raw[key.name]) if key.name in raw else None
            if value is not None or len(self.errors) != before:
                return value
            if key.missing is not None:
                raise Invalid(key.missing)
            if inherited is not None:
                return inherited.get(key.name)
            return None if key.default is NO_DEFAULT else key.parse(self, path, key.default)
        except Invalid as exc:
            if exc.args:
                self.error(path, exc.args[0])
            return None


def leaves(spec: Section[Any] | Choice[Any], prefix: str = "") -> Iterator[tuple[str, Key[Any]]]:
    """Every key that holds a value, with its path through nested sections (`auth.token`):
    what a reference lists."""
    for section in spec.kinds if isinstance(spec, Choice) else (spec,):
        for key in section.declared():
            if isinstance(key.parse, Section | Choice):
                yield from leaves(key.parse, join(prefix, key.name))
            else:
                yield join(prefix, key.name), key


def join(path: str, key: object) -> str:
    """The key path of `key` inside `path`."""
    return f"{path}.{show_key(key)}" if path else show_key(key)


def show_value(value: object) -> str:
    """A user's value as an error message may quote it: a repr cut to SHOWN_VALUE_LIMIT.

    A value can be a megabyte line or, through YAML, a huge nested structure; echoing it in
    full made error output unbounded.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return "a very large number"
    if isinstance(value, str | bytes):
        text = repr(value[: SHOWN_VALUE_LIMIT + 1])
    else:
        bounded = reprlib.Repr()
        bounded.maxlevel, bounded.maxlist, bounded.maxdict = 2, 4, 4
        bounded.maxstring = bounded.maxother = bounded.maxlong = SHOWN_VALUE_LIMIT
        text = bounded.repr(value)
    return cut(text)


def show_key(key: object) -> str:
    """A mapping key as part of a key path: as written when short and printable."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= SHOWN_VALUE_LIMIT:
        return key
    return show_value(key)


def cut(text: str, limit: int = SHOWN_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
