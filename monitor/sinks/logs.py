"""Structured log events: one JSON object per line, one event per Change."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Final, TextIO

import structlog

from monitor.models import Change, ChangeKind, Job

# Keys that must never carry a value into a log line, whoever passes them.
_SECRET_KEYS: Final = ("secret", "token", "password", "authorization")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_KEYS) and key != "event":
            event[key] = "[redacted]"
    return event


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Set structlog up for the whole process: JSON (or console) lines on stdout."""
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream is None and sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        # Not cached: tests and `once` reconfigure within one process.
        cache_logger_on_first_use=False,
    )


def _job_fields(promotion_id: str, job: Job) -> dict[str, Any]:
    return {
        "promotion_id": promotion_id,
        "job_id": job.id,
        "job_type": job.job_type,
        "status": job.status,
    }


def _described(fields: dict[str, Any], job: Job, promotion_name: str | None) -> dict[str, Any]:
    """The job fields plus what a person needs to act: names and the codes, where known."""
    extra = {
        "name": job.name,
        "promotion_name": promotion_name,
        "codes_requested": job.codes_requested,
        "codes_generated": job.codes_generated,
        "codes_deleted": job.codes_deleted,
    }
    return fields | {key: value for key, value in extra.items() if value is not None}


class LogSink:
    """Turns Changes into log events; the names are the public event reference."""

    def __init__(
        self,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        *,
        names: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self._log: structlog.typing.FilteringBoundLogger = logger or structlog.get_logger()
        self._names = names

    def emit(self, changes: Iterable[Change]) -> None:
        log = self._log
        for change in changes:
            job = change.job
            if change.kind is ChangeKind.BASELINE:
                counts = dict(change.counts or {})
                log.info(
                    "baseline_loaded",
                    promotion_id=change.promotion_id,
                    jobs=sum(counts.values()),
                    by_status=counts,
                )
                continue
            if job is None:
                continue
            fields = _job_fields(change.promotion_id, job)
            if change.during_baseline:
                # Part of the baseline: only its failure is news (below).
                fields["during_baseline"] = True
            elif change.late:
                log.debug("job_discovered", late_seen=True, **fields)
            elif change.kind is ChangeKind.DISCOVERED:
                log.info("job_discovered", **fields)
            elif change.kind is ChangeKind.STATUS_CHANGED:
                previous = change.previous.status if change.previous else None
                fields = _described(fields, job, self._names(change.promotion_id))
                log.info("job_status_changed", previous_status=previous, **fields)
            elif change.kind is ChangeKind.UPDATED:
                log.debug("job_updated", **fields)
            elif change.kind is ChangeKind.VANISHED:
                log.info("job_vanished", **fields)
            elif change.kind is ChangeKind.STUCK:
                log.warning("job_stuck", since=job.status_since, **fields)
            if change.is_failure:
                fields = _described(fields, job, self._names(change.promotion_id))
                log.error("job_failed", error=job.error or "", **fields)
            elif change.is_shortfall:
                fields = _described(fields, job, self._names(change.promotion_id))
                log.warning("job_incomplete", **fields)
