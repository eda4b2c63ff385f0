"""Structured log lines: one JSON object per event, on stdout."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from monitor.events import Event
from monitor.models import shown

# Keys that must never carry a value into a log line, whoever passes them.
_SECRET_KEYS: Final = ("secret", "token", "password", "authorization")
_LEVELS: Final = logging.getLevelNamesMapping()


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_KEYS) and key != "event":
            event[key] = "[redacted]"
    return event


def _printable(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For a terminal: text from the store may hold controls (ESC, OSC) it would obey."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = shown(value)
    return event


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Set structlog up for the whole process: JSON (or console) lines on stdout."""
    renderer: structlog.typing.Processor
    escape: list[structlog.typing.Processor] = []
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream is None and sys.stdout.isatty())
        escape = [_printable]
    else:
        renderer = structlog.processors.JSONRenderer()  # (JSON escapes controls itself)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _redact,
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        # Not cached: tests and `once` reconfigure within one process.
        cache_logger_on_first_use=False,
    )


class LogSink:
    """Renders events as structured log lines; the events themselves are in monitor/events.py."""

    def emit(self, event: Event) -> None:
        structlog.get_logger().log(_LEVELS[event.LEVEL.upper()], event.NAME, **event.fields())
