"""The parsers of single config values, each `(checker, path, raw) -> value`.

The values config.py's declarations point at: durations, URLs, files named relative to the
config, secrets, names, numbers, with `${ENV}` references expanded first. An error never
shows a value that came from the environment, nor a secret. Apart from config.py, which
walks the document's structure (sections, accounts, schedules), so that each stays small.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .files import load_ca_context, read_or_refuse, read_secret_file, show_path
from .schema import REQUIRED, Checker, Invalid, show_value
from .settings import (
    DEFAULT_ENDPOINT,
    DURATION_HINT,
    MAX_CONCURRENCY,
    MAX_PAGE,
    MAX_RETRIES,
    MIN_PAGE,
    Secret,
    is_loopback_host,
    parse_duration,
)

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
NAME_LIMIT = 128
# Polling limits for the KooDrive API, which publishes no rate limit (docs/koodrive-api.md
# section 6): faster would flood a shared SaaS API (10 ms was 100 requests/s per
# account), slower than daily makes stale_after meaningless. Loopback endpoints (the
# simulator, test doubles) may go faster.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 24 * 3600.0
MIN_TIMEOUT = 0.1
_CONTROL = "control characters"
POLL_LIMITS = (
    f"intervals may be {MIN_INTERVAL:g}s to {MAX_INTERVAL / 3600:g}h and timeouts "
    f"{MIN_TIMEOUT * 1000:g}ms to the interval (shorter only for a loopback endpoint, "
    "such as the simulator)"
)


class ValueChecker(Checker):
    """The parsers of single values: `${ENV}` expansion, files relative to the config, and
    error messages that never show a value taken from the environment. config.py's checker
    adds the walk of the document's structure."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        super().__init__()
        self.env = env
        self.base_dir = base_dir
        self.good_ca_files: set[Path] = set()
        # key path -> the variables its value was expanded from; such values are never shown.
        self.from_env: dict[str, list[str]] = {}
        # The checked `defaults`, which accounts inherit; None when they are broken.
        self.inherited: dict[str, Any] | None = None

    def hidden(self, *paths: str) -> str | None:
        """The note that replaces values taken from the environment, if any of them was."""
        names = dict.fromkeys(name for path in paths for name in self.from_env.get(path, ()))
        if not names:
            return None
        return f"(value from {', '.join(f'${{{name}}}' for name in names)} not shown)"

    def show(self, path: str, value: object) -> str:
        """The value at `path` for an error message, unless it came from the environment."""
        return self.hidden(path) or show_value(value)

    def got(self, path: str, value: object) -> str:
        return self.hidden(path) or f"(got {show_value(value)})"

    def endpoint(self, path: str, raw: object) -> str:
        text = self.string(path, raw)
        if not text.isprintable():
            raise Invalid("must not contain control characters")
        try:
            parts = urlsplit(text)
            hostname = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on an invalid port
        except ValueError:
            raise Invalid("is not a valid URL (check the host and the port)") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise Invalid(f"must be an http(s) URL such as {DEFAULT_ENDPOINT}")
        if parts.scheme == "http" and not is_loopback_host(hostname):
            raise Invalid("must use https:// (plain http is allowed only for loopback hosts)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise Invalid("must not contain credentials, a query or a fragment")
        return text.rstrip("/")

    def duration(
        self,
        path: str,
        raw: object,
        *,
        allow_zero: bool = False,
        below: float = math.inf,
        at_most: float = math.inf,
    ) -> float | None:
        """Seconds; null is unset (the inherited or built-in value applies)."""
        raw = self.expand(path, raw)
        if raw is None:
            return None
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            invalid = f"invalid duration {self.show(path, raw)}: {DURATION_HINT}"
            raise Invalid(invalid if isinstance(raw, str) else str(exc)) from None
        low_ok = seconds >= 0 if allow_zero else seconds > 0
        if not (low_ok and seconds < below):
            kind = "non-negative" if allow_zero else "positive"
            bound = f" below {below:g}s" if below != math.inf else ""
            raise Invalid(f"must be a {kind} duration{bound} {self.got(path, raw)}")
        if seconds > at_most:
            raise Invalid(f"must be at most {at_most / 3600:g}h {self.got(path, raw)}")
        return seconds

    def ca_file(self, path: str, raw: object) -> Path:
        file = self.resolve(self.string(path, raw))
        if file not in self.good_ca_files:
            read_or_refuse(file, load_ca_context, self.hidden(path) or show_path(file))
            self.good_ca_files.add(file)
        return file

    def secret_file(self, path: str, raw: object) -> Path:
        """Read the file now, so a broken one fails the config check rather than every poll.

        Its content is never shown, only its name.
        """
        file = self.resolve(self.string(path, raw))
        shown = self.hidden(path) or show_path(file)
        if file.is_dir():
            raise Invalid(f"is a directory, not a file: {shown}")
        content = read_or_refuse(file, read_secret_file, shown)
        if not content:
            raise Invalid(f"file is empty: {shown}")
        if not content.isprintable():
            raise Invalid(f"contains {_CONTROL}: {shown}")
        return file

    def resolve(self, name: str) -> Path:
        """Relative paths are relative to the config file, as Prometheus does it."""
        file = Path(name)
        return file if file.is_absolute() else self.base_dir / file

    def boolean(self, path: str, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise Invalid(f"must be true or false (got {show_value(raw)})")
        return raw

    def number(self, path: str, raw: object) -> object:
        """`raw` after `${ENV}` expansion, a string of ASCII digits turned into an int."""
        value = self.expand(path, raw)
        if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
            return int(value.strip())
        return value

    def retries(self, path: str, raw: object) -> int:
        value = self.number(path, raw)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
            raise Invalid(f"must be a whole number from 0 to {MAX_RETRIES} {self.got(path, raw)}")
        return value

    def kilobyte(self, path: str, raw: object) -> int | None:
        value = self.number(path, raw)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value not in (1000, 1024):
            raise Invalid(f"must be 1024 or 1000 {self.got(path, raw)}")
        return value

    def page_size(self, path: str, raw: object) -> int:
        value = self.number(path, raw)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not MIN_PAGE <= value <= MAX_PAGE
        ):
            raise Invalid(
                f"must be a whole number from {MIN_PAGE} to {MAX_PAGE} {self.got(path, raw)}"
            )
        return value

    def concurrency(self, path: str, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_CONCURRENCY:
            raise Invalid(
                f"must be a whole number from 1 to {MAX_CONCURRENCY} {self.got(path, raw)}"
            )
        return raw

    def language(self, path: str, raw: object) -> str:
        text = self.string(path, raw)
        if not LANGUAGE.fullmatch(text):
            raise Invalid(f"must be a language code such as en-US or zh-CN {self.got(path, text)}")
        return text

    def name(self, path: str, raw: object) -> str:
        name = self.string(path, raw)
        if len(name) > NAME_LIMIT or not name.isprintable():
            raise Invalid(f"must be printable and at most {NAME_LIMIT} characters")
        scripts = sorted({script for char in name if (script := _script(char)) in _CONFUSABLE})
        if len(scripts) > 1:
            mixed = " and ".join(script.title() for script in scripts)
            raise Invalid(f"mixes {mixed} letters, which look alike on a dashboard")
        return name

    def secret(self, path: str, raw: object) -> Secret:
        """An inline secret; only the key and the kind of problem are ever shown."""
        if not isinstance(raw, str):
            raise Invalid("must be a non-empty string")
        value = str(self.expand(path, raw))
        if not value:
            raise Invalid("must not be empty")
        if not value.isprintable():
            raise Invalid(f"must not contain {_CONTROL} (value not shown)")
        return Secret(value)

    def string(
        self, path: str, raw: object, *, quote_hint: bool = False, printable: bool = False
    ) -> str:
        if raw is None:
            raise Invalid(REQUIRED)
        raw = self.expand(path, raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and quote_hint:
            raise Invalid("must be a string: quote it, as YAML may alter long numbers")
        if not isinstance(raw, str):
            raise Invalid(f"must be a string (got {type(raw).__name__})")
        if not raw.strip():
            raise Invalid("must not be empty")
        if printable and not raw.isprintable():
            # Such values would be sent in HTTP headers, where they fail (or smuggle) later.
            raise Invalid(f"must not contain {_CONTROL}")
        return raw

    def expand(self, path: str, raw: object) -> object:
        """Replace `${VAR}` with the environment's value; `$$` is a literal `$`."""
        if not isinstance(raw, str) or "$" not in raw:
            return raw
        missing: list[str] = []
        used: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            used.append(name)
            if name not in self.env:
                missing.append(name)
                return ""
            return self.env[name]

        expanded = _ENV_REF.sub(substitute, raw)
        if used:
            self.from_env[path] = list(dict.fromkeys(used))
        for name in missing:
            self.error(path, f"environment variable {name} is not set")
        if missing:
            raise Invalid
        return expanded


# Scripts whose letters include look-alikes of each other's (Latin a, Cyrillic U+0430,
# Greek U+03B1): a name mixing them reads as another account's on a dashboard.
_CONFUSABLE = frozenset({"LATIN", "GREEK", "CYRILLIC"})


def _script(char: str) -> str:
    """The script of a letter, from its Unicode name ("CYRILLIC SMALL LETTER A"); "" else."""
    return unicodedata.name(char, "").split(" ", 1)[0] if char.isalpha() else ""


def fold_name(name: str) -> str:
    """What two account names must not share: NFKC-normalised and case-folded (é composed
    or not, a fullwidth a, the ligature fi against f and i, A against a all meet)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
