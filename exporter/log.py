"""structlog set-up: JSON for machines, console for people, secrets always redacted.

The logger is built and passed around explicitly rather than configured globally, so tests
can capture one instance's output and two exporters in one process never share state.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

# Prometheus' own spellings (`warn`, `logfmt`); `warning` is taken too, as earlier releases
# and Python's logging spell it.
LEVELS = ("debug", "info", "warn", "warning", "error")
FORMATS = ("auto", "logfmt", "json", "console")
REDACTED = "[REDACTED]"
# Field names whose values are never printed, whatever a caller passes by mistake.
_HANDLER_NAME = "koodrive-exporter"
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
    shared, renderer = _chain(fmt, out)
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.PrintLogger(out),
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        processors=[*shared, renderer],
    )


def route_stdlib_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Send the standard library's records (aiohttp, asyncio) through the same processors.

    Without this their lines, tracebacks included, come out as plain text between the JSON
    lines, which breaks log pipelines. Process-wide by nature (the root logger), so only
    the command line calls it; the handler it installs replaces any it installed before.
    """
    out = stream if stream is not None else sys.stderr
    shared, renderer = _chain(fmt, out)
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_QuietClientErrors(_level(level)))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                *shared,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    return handler


def _level(name: str) -> int:
    return logging.WARNING if name == "warn" else logging.getLevelNamesMapping()[name.upper()]


class _QuietClientErrors(logging.Filter):
    """A malformed request is the client's fault: a debug line, not an error traceback.

    aiohttp logs every unparsable request at error level with a traceback, so anyone who
    can connect could fill the log at will.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name == "aiohttp.server" and isinstance(error, HttpProcessingError):
            if self._level > logging.DEBUG:
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = f"{record.getMessage()}: {error}", None
            record.exc_info, record.exc_text = None, None
        return True


def _chain(fmt: str, out: TextIO) -> tuple[list[Any], Any]:
    """The processors every line goes through, and the renderer that ends the chain."""
    as_json = fmt == "json" or (fmt == "auto" and not _is_tty(out))
    renderer: Any
    if as_json:
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "logfmt":
        # Prometheus' binaries log `ts=… level=… msg=…`; the event is `event=` here, as in
        # the JSON lines, so a query need not change with the format.
        renderer = _logfmt
    else:
        # plain_traceback: rich's pretty tracebacks print local variables, secrets included.
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(out), exception_formatter=structlog.dev.plain_traceback
        )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if as_json or fmt == "logfmt":
        shared.append(structlog.processors.format_exc_info)
    return shared, renderer


_LOGFMT = structlog.processors.LogfmtRenderer(
    key_order=["timestamp", "level", "event"], bool_as_flag=False
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _logfmt(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
    """structlog's logfmt, with control characters escaped as go-logfmt does (`\\u001b`):
    a value cannot move the cursor of whoever reads the log on a terminal."""
    line = _LOGFMT(logger, name, event_dict)
    return _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", line)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
