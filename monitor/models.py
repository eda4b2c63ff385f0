"""Domain types: jobs, snapshots, and changes between them. Job objects come from an API whose
public descriptions disagree (shared/docs/elastic-path-api.md), so parsing is tolerant: anything
still identifiable is kept, anything else is dropped with a reason instead of raising."""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

PENDING: Final = "pending"
PROCESSING: Final = "processing"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLING: Final = "cancelling"
CANCELLED: Final = "cancelled"

# Statuses in which a job still has work ahead of it; the ones that can get "stuck".
ACTIVE_STATUSES: Final = frozenset({PENDING, PROCESSING, CANCELLING})
TERMINAL_STATUSES: Final = frozenset({COMPLETED, FAILED, CANCELLED})
JOB_TYPES: Final = ("code_generate", "code_export")
UNKNOWN: Final = "unknown"

# The API reference's filter example writes "complete"; everything else writes "completed".
_STATUS_ALIASES: Final = {"complete": COMPLETED}
# Raw statuses as the API writes them, already normalized: the fast path's whole vocabulary.
_CLEAN_STATUSES: Final = {s: s for s in ACTIVE_STATUSES | TERMINAL_STATUSES} | _STATUS_ALIASES

# Label values must stay one line and bounded however long the API's error text is.
MAX_ERROR_CHARS: Final = 200
# Controls (C0, DEL, C1: ESC, OSC, CSI) fold like whitespace: one line of text, never a command.
_WHITESPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
# Some Python builds reject more than 6 fractional digits; trimming the fraction to microseconds
# (only when the fast path fails) keeps nanosecond timestamps parseable everywhere.
_FRACTION = re.compile(r"(\.\d{6})\d+")
# RFC 3339 allows a leap second (23:59:60), which datetime cannot hold: read it as :59.
_LEAP_SECOND = re.compile(r"(T\d{2}:\d{2}:)60")
# 2000-01-01: no promotion job is older. An earlier time is a placeholder that says nothing
# (Go's zero time 0001-01-01, Unix's 1970-01-01): unknown, never "old".
_EARLIEST: Final = 946_684_800.0


class PromotionKind(enum.StrEnum):
    """Which API family a promotion belongs to; it decides the jobs endpoint."""

    PROMOTION = "promotion"
    RULE_PROMOTION = "rule_promotion"


def single_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Collapse whitespace and cap length, so API text is safe as a label value or log field."""
    flat = _WHITESPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def shown(text: str) -> str:
    """Text a terminal prints as is: whatever is not printable as its \\xNN or \\uNNNN escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def without_password(url: str) -> str:
    """A URL as it may be printed: the password in its user-info (a proxy's) replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:[redacted]@{host}"))


def parse_timestamp(value: object) -> float | None:
    """ISO 8601 (with up to nanosecond precision) to epoch seconds; None when unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        # Nanoseconds (Promotions Builder), and what RFC 3339 date-times may also be: a lower-case
        # "t" or "z", a leap second.
        text = _LEAP_SECOND.sub(r"\g<1>59", _FRACTION.sub(r"\1", value.strip().upper()))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    at = parsed.timestamp()
    return at if at >= _EARLIEST else None


@dataclass(frozen=True, slots=True)
class Job:
    """One promotion job, reduced to what monitoring needs."""

    id: str
    job_type: str
    status: str
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    name: str | None = None
    # What a code_generate job was asked for (parameters.number_of_codes) and what it produced
    # (result.generated; result.deleted for codes a cancellation removed). None when not given.
    codes_requested: int | None = None
    codes_generated: int | None = None
    codes_deleted: int | None = None
    # hash() of updated_at as the API wrote it: the next poll compares it instead of re-parsing
    # (an int is a third of the string's memory). Not part of the job's identity, not persisted.
    updated_key: int | None = field(default=None, compare=False, repr=False)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def status_since(self) -> float | None:
        """When the job entered its current status, as near as the API tells."""
        return self.updated_at if self.updated_at is not None else self.created_at

    @property
    def shortfall(self) -> bool:
        """A code_generate job that completed with fewer codes than it was asked for."""
        return (
            self.status == COMPLETED
            and self.job_type == "code_generate"
            and self.codes_requested is not None
            and self.codes_generated is not None
            and self.codes_generated < self.codes_requested
        )

    @property
    def duration(self) -> float | None:
        """created_at → updated_at, for jobs that reached a terminal status."""
        if self.created_at is None or self.updated_at is None:
            return None
        elapsed = self.updated_at - self.created_at
        return elapsed if elapsed >= 0 else None


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Jobs parsed from one page, and a reason for each object that had to be skipped."""

    jobs: list[Job]
    skipped: list[str]


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return (value.strip() or None) if isinstance(value, str) else None


def _count(obj: object, key: str) -> int | None:
    """A non-negative integer field of an object, or None (absent, null, or not a count)."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def code_result(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The code result object: `result` (Promotions Builder, Standard prose) or
    `generate_result` (Builder's SDK description); `result` wins when both are there."""
    for key in ("result", "generate_result"):
        value = obj.get(key)
        if isinstance(value, Mapping):
            return value
    return None


def _unchanged(obj: dict[str, Any], known: Mapping[str, Job]) -> Job | None:
    """The known Job when the object shows the same status, error and updated_at text: nearly
    every job is unchanged since the last poll, and its parsing is the bulk of a poll's CPU.
    (A job's id, type and created_at never change, so they need no comparison.)"""
    previous = known.get(obj["id"])
    if previous is None or previous.updated_key is None:
        return None
    status = obj.get("status")
    if type(status) is not str or _CLEAN_STATUSES.get(status) != previous.status:
        return None
    meta = obj.get("meta")
    timestamps = meta.get("timestamps") if type(meta) is dict else None
    updated = timestamps.get("updated_at") if type(timestamps) is dict else None
    if type(updated) is not str or hash(updated) != previous.updated_key:
        return None
    if obj.get("error") != previous.error:
        return None
    # A result that arrives after the status (same updated_at) must not be missed.
    result = code_result(obj)
    generated = result.get("generated") if result is not None else None
    return previous if generated == previous.codes_generated else None


def parse_job(obj: object, known: Mapping[str, Job] | None = None) -> Job | str:
    """Parse one API job object into a Job, or a short reason why it was skipped; `known` (the
    jobs of the last snapshot, by id) lets an unchanged job be reused as is."""
    if known and type(obj) is dict and type(obj.get("id")) is str:
        reused = _unchanged(obj, known)
        if reused is not None:
            return reused
    if not isinstance(obj, Mapping):
        return f"job is {type(obj).__name__}, not an object"
    job_id = _text(obj, "id")
    if job_id is None:
        return "job has no id"
    status = (_text(obj, "status") or UNKNOWN).lower()
    job_type = _text(obj, "job_type") or UNKNOWN
    error = _text(obj, "error")
    meta = obj.get("meta")
    timestamps = meta.get("timestamps") if isinstance(meta, Mapping) else None
    if not isinstance(timestamps, Mapping):
        timestamps = {}
    updated_raw = timestamps.get("updated_at")
    updated_at = parse_timestamp(updated_raw)
    created_at = parse_timestamp(timestamps.get("created_at"))
    if updated_at is not None and created_at is not None and updated_at < created_at:
        updated_at = None  # (a job changes only after it exists: this time says nothing)
    name = _text(obj, "name")
    result = code_result(obj)
    return Job(
        id=job_id,
        # A handful of distinct values shared by every job: one copy each, not one per job.
        job_type=sys.intern(single_line(job_type, 64) or UNKNOWN),
        status=sys.intern(single_line(_STATUS_ALIASES.get(status, status), 64) or UNKNOWN),
        error=(single_line(error) or None) if error else None,  # (controls alone are no text)
        created_at=created_at,
        updated_at=updated_at,
        # Most jobs share a handful of names ("job", "Export codes"): one copy each.
        name=(sys.intern(single_line(name, 100)) or None) if name else None,
        codes_requested=_count(obj.get("parameters"), "number_of_codes"),
        codes_generated=_count(result, "generated"),
        codes_deleted=_count(result, "deleted"),
        updated_key=hash(updated_raw) if updated_at is not None else None,
    )


def parse_jobs(data: Iterable[object], known: Mapping[str, Job] | None = None) -> ParseResult:
    """Parse the `data` array of a jobs page, keeping every job that can be identified."""
    jobs: list[Job] = []
    skipped: list[str] = []
    for obj in data:
        parsed = parse_job(obj, known)
        if isinstance(parsed, Job):
            jobs.append(parsed)
        else:
            skipped.append(parsed)
    return ParseResult(jobs, skipped)


@dataclass(frozen=True, slots=True)
class PromotionSnapshot:
    """What the monitor last knew about one promotion's jobs."""

    promotion_id: str
    jobs: Mapping[str, Job]
    # Jobs already reported stuck, so the event fires once per job and survives restarts.
    stuck: frozenset[str] = field(default_factory=frozenset)
    # When the promotion's baseline was taken (None in state written before it was kept): a job
    # first seen later but last changed before it (minus the lookback) is history seen late.
    baseline_at: float | None = None
    # When the monitor first saw each active job of unknown age in its current status: its stuck
    # clock (kept in memory only: after a restart it starts again).
    seen: Mapping[str, float] = field(default_factory=dict, compare=False)
    # The view this came from showed every failed job (a complete listing, or a complete read of
    # the failed jobs alone): a job not failed in it that is failed later is news, whatever its
    # timestamps say.
    failures_known: bool = False
    # Whether any job is pending/processing/cancelling (and so could become stuck).
    has_active: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        active = any(job.status in ACTIVE_STATUSES for job in self.jobs.values())
        object.__setattr__(self, "has_active", active)


class ChangeKind(enum.StrEnum):
    """What happened to a job between two polls; values are the log event names."""

    BASELINE = "baseline_loaded"
    DISCOVERED = "job_discovered"
    STATUS_CHANGED = "job_status_changed"
    UPDATED = "job_updated"
    VANISHED = "job_vanished"
    STUCK = "job_stuck"


@dataclass(frozen=True, slots=True)
class Change:
    """One observed change. `job` is the job as now seen (as last seen, for vanished jobs)."""

    kind: ChangeKind
    promotion_id: str
    job: Job | None = None
    previous: Job | None = None
    # For BASELINE only: how many jobs the promotion had, by status.
    counts: Mapping[str, int] | None = None
    # DISCOVERED at a baseline: a job that failed within the lookback before the monitor first
    # saw the promotion (e.g. while a replaced pod was starting), reported rather than absorbed.
    during_baseline: bool = False
    # History, not news: DISCOVERED long after it last changed (a listing in no stable order hid
    # it), or a failure already on the ledger of reported failures (monitor.report).
    late: bool = False

    def _arrived(self, at: Callable[[Job], bool]) -> bool:
        """The job was seen arriving where `at` holds (history seen late is not arriving)."""
        if self.job is None or self.late or not at(self.job):
            return False
        return self.kind is ChangeKind.DISCOVERED or (
            self.kind is ChangeKind.STATUS_CHANGED
            and self.previous is not None
            and not at(self.previous)
        )

    @property
    def is_failure(self) -> bool:
        """A job that became failed while we watched (not one that already was at baseline)."""
        return self._arrived(lambda job: job.status == FAILED)

    def detection_delay(self, seen_at: float) -> float | None:
        """How long after its creation a job first seen after its promotion's baseline was seen
        (clamped at 0: the store's clock may run ahead); None for any other change."""
        if self.kind is not ChangeKind.DISCOVERED or self.during_baseline or self.late:
            return None
        created = self.job.created_at if self.job is not None else None
        return None if created is None else max(0.0, seen_at - created)

    @property
    def is_shortfall(self) -> bool:
        """A code_generate job seen completing with fewer codes than it was asked for."""
        return self.job is not None and self.job.shortfall and self.reached_terminal

    @property
    def reached_terminal(self) -> bool:
        """The job was seen arriving in a terminal status (for duration histograms)."""
        return self._arrived(lambda job: job.is_terminal)


def utc_now() -> float:
    """Wall-clock epoch seconds; the one clock the app injects everywhere."""
    return datetime.now(UTC).timestamp()
