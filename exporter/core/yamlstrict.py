"""YAML as the config files are allowed to be: strict, bounded, and never crashing.

Both config files (the exporter's and the web config) are read through here. Refused at
parse time: duplicate keys, keys that are not strings, anchors and aliases (before anything
expands, so alias bombs cost nothing), nesting past a depth, implicit dates and tags beyond
the plain JSON-like types. Every failure is a ConfigError naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .files import os_reason, read_regular_file, size_text
from .schema import cut, show_value
from .settings import ConfigError

# A 10,000-account config is about 2 MB; anything near this is a mistake (or /dev/zero).
CONFIG_FILE_LIMIT = 64 * 1024 * 1024
# The config nests five levels deep; the limit keeps the composer's recursion bounded.
MAX_YAML_DEPTH = 32


def read_config_file(file: Path, limit: int = CONFIG_FILE_LIMIT) -> str:
    """A config file's text, or a ConfigError that says why not."""
    try:
        data = read_regular_file(file, limit)
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {os_reason(exc)}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: cannot read: not UTF-8 text (byte {exc.start})"]) from None


def load_yaml(text: str, source: str) -> object:
    """Parse YAML safely, with errors that point at the line; only ever raises ConfigError.

    Refused at parse time: duplicate keys, keys that are not strings, anchors and aliases
    (before anything expands, so alias bombs cost nothing), implicit dates (read as strings)
    and explicit tags beyond the plain JSON-like types.
    """
    if len(text) > CONFIG_FILE_LIMIT:
        raise ConfigError([f"{source}: is larger than {size_text(CONFIG_FILE_LIMIT)}"])
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader subclass
    except _Refused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{source}: {where}{exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {_yaml_reason(exc)}"]) from None
    except UnicodeError:
        raise ConfigError([f"{source}: invalid YAML: the text is not valid Unicode"]) from None
    except Exception as exc:  # a last resort: the loader must never raise anything else
        name = type(exc).__name__
        raise ConfigError([f"{source}: internal error while reading the YAML ({name})"]) from None


# libyaml's parser when PyYAML has it (it parses a 10,000-account file ~10x faster).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Tags whose values the config never uses; refusing them keeps the value types to
# str/int/float/bool/None/list/dict.
_UNSUPPORTED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("timestamp", "binary", "set", "omap", "pairs")
)


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this loader does not accept; reported as `line N, column M: why`."""


class _RefusingComposer(yaml.composer.Composer):
    """Composes nodes in Python (also over libyaml's events) to refuse anchors, aliases and
    deep nesting before a single node exists, so nothing can expand or recurse without end."""

    def __init__(self) -> None:
        # Explicitly: with the pure-Python loader, the next class in the MRO is not Composer.
        yaml.composer.Composer.__init__(self)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem=f"YAML aliases (*{cut(event.anchor)}) are not supported; "
                "use `defaults:` for settings shared by accounts",
                problem_mark=event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                problem=f"YAML anchors (&{cut(anchor)}) and aliases are not supported; "
                "use `defaults:` for settings shared by accounts",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(
                    problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                    problem_mark=event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _StrictLoader(_RefusingComposer, _SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader that also refuses duplicate and non-string keys, anchors and aliases,
    and reads dates as plain strings (the config has no date fields)."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()
    }
    yaml_constructors: ClassVar[dict[str, Callable[..., Any]]] = {
        tag: constructor
        for tag, constructor in _SafeLoader.yaml_constructors.items()
        if tag not in _UNSUPPORTED_TAGS
    }

    def __init__(self, stream: str) -> None:
        _SafeLoader.__init__(self, stream)
        _RefusingComposer.__init__(self)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Any constructor failure (a 5,000-digit int, say) becomes an error with a line."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            raise _Refused(
                problem=f"cannot read this value ({type(exc).__name__})",
                problem_mark=node.start_mark,
            ) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[str, Any]:
    loader.flatten_mapping(node)
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = (
            loader.construct_object(key_node, deep=True)
            if isinstance(key_node, yaml.ScalarNode)
            else key_node
        )
        if not isinstance(key, str):
            kind = type(key).__name__ if isinstance(key_node, yaml.ScalarNode) else "a collection"
            raise _Refused(
                problem=f"mapping keys must be strings (got {kind}); quote the key",
                problem_mark=key_node.start_mark,
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {show_value(key)}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _construct_unsupported(loader: _StrictLoader, node: yaml.Node) -> None:
    raise _Refused(
        problem=f"unsupported YAML tag {show_value(node.tag)}: the config only takes strings, "
        "numbers, true/false, lists and mappings",
        problem_mark=node.start_mark,
    )


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor(None, _construct_unsupported)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and, where it has one, the context that started it (an unclosed quote
    is reported at the end of the file, but the operator needs the line where it opened)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return cut(str(exc), 300)
    parts = []
    if exc.context and exc.context_mark is not None:
        mark = exc.context_mark
        parts.append(f"{cut(exc.context, 200)} at line {mark.line + 1}, column {mark.column + 1}")
    problem = cut(exc.problem or "syntax error", 200)
    if exc.problem_mark is not None:
        mark = exc.problem_mark
        problem += f" at line {mark.line + 1}, column {mark.column + 1}"
    parts.append(problem)
    return ": ".join(parts)
