"""structlog set-up: JSON for machines, console for people, secrets always redacted.

The logger is built and passed around explicitly rather than configured globally, so tests
can capture one instance's output and two exporters in one process never share state.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")
REDACTED = "[REDACTED]"
# Field names whose values are never printed, whatever a caller passes by mistake.
_SECRET_WORDS = ("secret", "token", "password", "authorization", "credential")


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in event_dict:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            event_dict[key] = REDACTED
    return event_dict


def make_logger(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> FilteringBoundLogger:
    out = stream if stream is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not _is_tty(out))
    renderer: Any
    if as_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        # plain_traceback: rich's pretty tracebacks print local variables, secrets included.
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(out), exception_formatter=structlog.dev.plain_traceback
        )
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if as_json:
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.PrintLogger(out),
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        processors=processors,
    )


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
