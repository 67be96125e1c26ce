"""Logging: JSON for machines, console for people, secrets redacted by field name."""

from __future__ import annotations

import io
import json

from exporter.log import REDACTED, make_logger


def test_json_lines_with_level_and_utc_timestamp() -> None:
    stream = io.StringIO()
    make_logger("info", "json", stream).info("poll", account="a", duration_ms=1.5)
    event = json.loads(stream.getvalue())
    assert event["event"] == "poll"
    assert event["level"] == "info"
    assert event["account"] == "a"
    assert event["timestamp"].endswith("Z")


def test_level_filters_with_prometheus_spelling_and_pythons() -> None:
    for level in ("warn", "warning"):
        stream = io.StringIO()
        log = make_logger(level, "json", stream)
        log.info("hidden")
        log.debug("hidden")
        log.warning("shown")
        log.error("shown too")
        events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
        assert events == ["shown", "shown too"]


def test_logfmt_is_one_line_a_record_whatever_the_values() -> None:
    """Prometheus' binaries log logfmt; a value with quotes, a newline or an escape stays on
    its line, quoted, and a traceback is one quoted field."""
    stream = io.StringIO()
    log = make_logger("info", "logfmt", stream)
    log.info("poll", account='a "b"\nc\x1b[2J', attempts=2, token="s3cret")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = stream.getvalue().splitlines()
    assert first.startswith("timestamp=")
    assert " level=info event=poll " in first
    assert 'account="a \\"b\\"\\nc\\u001b[2J"' in first
    assert "attempts=2" in first
    assert f"token={REDACTED}" in first
    assert "s3cret" not in first
    assert " level=error event=failed exception=" in second
    assert "ValueError: boom" in second


def test_auto_is_json_when_not_a_tty_and_console_can_be_forced() -> None:
    auto = io.StringIO()
    make_logger("info", "auto", auto).info("x", k=1)
    assert json.loads(auto.getvalue())["k"] == 1
    console = io.StringIO()
    make_logger("info", "console", console).info("hello", k=1)
    assert "hello" in console.getvalue()
    assert "k=1" in console.getvalue()
    assert not console.getvalue().startswith("{")


def test_secret_looking_fields_are_redacted_in_both_formats() -> None:
    for fmt in ("json", "console"):
        stream = io.StringIO()
        make_logger("info", fmt, stream).info(
            "oops", token="t0k", app_secret="s3c", Authorization="HMAC x", password="p", ok="fine"
        )
        out = stream.getvalue()
        for secret in ("t0k", "s3c", "HMAC x"):
            assert secret not in out
        assert REDACTED in out
        assert "fine" in out


def test_console_tracebacks_are_plain_without_locals() -> None:
    stream = io.StringIO()
    log = make_logger("info", "console", stream)
    app_secret_local = "do-not-print-me"  # noqa: F841 - a local a rich traceback would show
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    assert "RuntimeError: boom" in stream.getvalue()
    assert "do-not-print-me" not in stream.getvalue()


def test_standard_logging_goes_through_the_same_processors() -> None:
    """aiohttp and asyncio log through `logging`; their lines must be JSON too."""
    import logging

    from exporter.log import route_stdlib_logging

    stream = io.StringIO()
    handler = route_stdlib_logging("info", "json", stream)
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("asyncio").info("secret %s", "value", extra={"token": "t0k3n"})
        logging.getLogger("asyncio").debug("below the level")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2  # every line is JSON, the traceback inside its line
    error, info = lines
    assert error["event"] == "Error handling request"
    assert error["level"] == "error"
    assert error["logger"] == "aiohttp.server"
    assert "RuntimeError: boom" in error["exception"]
    assert info["event"] == "secret value"
    assert info["token"] == REDACTED  # extras are kept, and redacted like our own fields
    assert "t0k3n" not in stream.getvalue()


def test_malformed_requests_are_not_logged_as_errors() -> None:
    """Anyone can send garbage: it must not fill the log with error tracebacks."""
    import logging

    from aiohttp.http_exceptions import BadHttpMessage

    from exporter.log import route_stdlib_logging

    for level, expected in (("info", 0), ("debug", 1)):
        stream = io.StringIO()
        handler = route_stdlib_logging(level, "json", stream)
        try:
            try:
                raise BadHttpMessage("Invalid character in Content-Length")
            except BadHttpMessage:
                logging.getLogger("aiohttp.server").exception("Error handling request")
        finally:
            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(logging.WARNING)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert len(lines) == expected
        for line in lines:
            assert line["level"] == "debug"
            assert "exception" not in line
