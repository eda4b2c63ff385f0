"""Every log event the monitor emits, declared once: the event contract.

An event is a frozen value with a name, a level and typed fields. Code that has something to
report builds one and hands it to an `EventSink`; the sink decides how it looks (JSON lines via
structlog in `sinks/logs.py`). Fields that are None are left out of the rendered line. The
README's event table lists the same events with the same fields (a test holds them together).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from monitor.models import Change, ChangeKind, Job
from monitor.state import Saved

Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: `NAME` and `LEVEL` are the class's, the fields the instance's."""

    NAME: ClassVar[str]
    LEVEL: ClassVar[Level]

    def fields(self) -> dict[str, object]:
        """The fields as rendered: declaration order, None left out."""
        values = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return {name: value for name, value in values if value is not None}


class EventSink(Protocol):
    """Where events go; the one way any part of the monitor reports one."""

    def emit(self, event: Event) -> None: ...


class Discard:
    """An EventSink for parts built without one (scripts, unit tests of other concerns)."""

    def emit(self, event: Event) -> None:
        return None


class Recorder:
    """An EventSink that keeps what it is given (for code that reads events back, e.g. tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


# lifecycle


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorStarted(Event):
    NAME = "monitor_started"
    LEVEL = "info"
    version: str
    promotions: int
    discovery: bool
    shard: str
    base_url: str
    metrics_port: int
    interval_seconds: float
    active_interval_seconds: float
    requests_per_second: float
    state_path: str
    coordination: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorStopped(Event):
    NAME = "monitor_stopped"
    LEVEL = "info"
    state_saved: bool


# jobs


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent(Event):
    """The fields every job event carries."""

    promotion_id: str
    job_id: str
    job_type: str
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribedJobEvent(JobEvent):
    """A job event a person acts on: names and codes, where known."""

    name: str | None = None
    promotion_name: str | None = None
    codes_requested: int | None = None
    codes_generated: int | None = None
    codes_deleted: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineLoaded(Event):
    NAME = "baseline_loaded"
    LEVEL = "info"
    promotion_id: str
    jobs: int
    by_status: Mapping[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDiscovered(JobEvent):
    NAME = "job_discovered"
    LEVEL = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSeenLate(JobEvent):
    """A job first seen long after it last changed: history an incomplete listing hid."""

    NAME = "job_discovered"
    LEVEL = "debug"
    late_seen: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatusChanged(DescribedJobEvent):
    NAME = "job_status_changed"
    LEVEL = "info"
    previous_status: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFailed(DescribedJobEvent):
    NAME = "job_failed"
    LEVEL = "error"
    error: str
    # Found by the baseline lookback (True), or seen turning failed (left out).
    during_baseline: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobIncomplete(DescribedJobEvent):
    NAME = "job_incomplete"
    LEVEL = "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStuck(JobEvent):
    NAME = "job_stuck"
    LEVEL = "warning"
    since: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobVanished(JobEvent):
    NAME = "job_vanished"
    LEVEL = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobUpdated(JobEvent):
    NAME = "job_updated"
    LEVEL = "debug"


# polls and requests


@dataclass(frozen=True, slots=True, kw_only=True)
class PollFailed(Event):
    NAME = "poll_failed"
    LEVEL = "warning"
    promotion_id: str
    reason: str
    detail: str
    http_status: int | None = None
    hint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PollIncomplete(Event):
    NAME = "poll_incomplete"
    LEVEL = "warning"
    promotion_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsSkipped(Event):
    NAME = "jobs_skipped"
    LEVEL = "warning"
    promotion_id: str
    count: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRetried(Event):
    NAME = "request_retried"
    LEVEL = "info"
    endpoint: str
    reason: str
    attempt: int
    http_status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRefreshed(Event):
    NAME = "token_refreshed"
    LEVEL = "info"
    expires_in: float


# what is watched


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionAdded(Event):
    NAME = "promotion_added"
    LEVEL = "info"
    promotion_id: str
    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionRemoved(Event):
    NAME = "promotion_removed"
    LEVEL = "info"
    promotion_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryCompleted(Event):
    NAME = "discovery_completed"
    LEVEL = "info"
    promotions: int
    discovered: int
    added: int
    removed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryFailed(Event):
    NAME = "discovery_failed"
    LEVEL = "warning"
    reason: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryIncomplete(Event):
    NAME = "discovery_incomplete"
    LEVEL = "warning"
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NameLookupFailed(Event):
    NAME = "name_lookup_failed"
    LEVEL = "warning"
    promotion_id: str
    reason: str
    detail: str


# state


@dataclass(frozen=True, slots=True, kw_only=True)
class StateDiscarded(Event):
    NAME = "state_discarded"
    LEVEL = "warning"
    path: str
    reason: str
    kept_as: str
    detail: str = "starting from a fresh baseline"


@dataclass(frozen=True, slots=True, kw_only=True)
class StatePruned(Event):
    NAME = "state_pruned"
    LEVEL = "info"
    promotions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StateWriteFailed(Event):
    NAME = "state_write_failed"
    LEVEL = "error"
    path: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateWriteRecovered(Event):
    NAME = "state_write_recovered"
    LEVEL = "info"
    path: str


# coordination


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderElected(Event):
    NAME = "leader_elected"
    LEVEL = "info"
    identity: str
    lease: str
    transitions: int
    kept_state: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderLost(Event):
    NAME = "leader_lost"
    LEVEL = "warning"
    identity: str
    lease: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseUnavailable(Event):
    """The Lease could not be read or written; debug while standing by, warning while leading."""

    NAME = "lease_unavailable"
    LEVEL: ClassVar[Level] = "debug"
    lease: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseUnreachable(LeaseUnavailable):
    LEVEL = "warning"


def all_events() -> list[type[Event]]:
    """Every concrete event class (those with a NAME), for the reference and its test."""
    found: list[type[Event]] = []
    pending: list[type[Event]] = [Event]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if hasattr(cls, "NAME"):
            found.append(cls)
    return found


# from changes

D = TypeVar("D", bound=DescribedJobEvent)


def _describe(
    cls: type[D], change: Change, job: Job, names: Callable[[str], str | None], **extra: Any
) -> D:
    return cls(
        promotion_id=change.promotion_id,
        job_id=job.id,
        job_type=job.job_type,
        status=job.status,
        name=job.name,
        promotion_name=names(change.promotion_id),
        codes_requested=job.codes_requested,
        codes_generated=job.codes_generated,
        codes_deleted=job.codes_deleted,
        **extra,
    )


def job_events(
    changes: Iterable[Change], names: Callable[[str], str | None] = lambda _: None
) -> Iterator[Event]:
    """The events a poll's changes announce, in order; pure."""
    for change in changes:
        if change.kind is ChangeKind.BASELINE:
            counts = dict(change.counts or {})
            yield BaselineLoaded(
                promotion_id=change.promotion_id, jobs=sum(counts.values()), by_status=counts
            )
            continue
        job = change.job
        if job is None:
            continue
        pid = change.promotion_id
        if change.late:
            yield JobSeenLate(
                promotion_id=pid, job_id=job.id, job_type=job.job_type, status=job.status
            )
        elif change.during_baseline:
            pass  # part of the baseline: only its failure is news (below)
        elif change.kind is ChangeKind.STATUS_CHANGED:
            previous = change.previous.status if change.previous else None
            yield _describe(JobStatusChanged, change, job, names, previous_status=previous)
        else:
            yield from _plain(change.kind, pid, job)
        if change.is_failure:
            during = True if change.during_baseline else None
            yield _describe(
                JobFailed, change, job, names, error=job.error or "", during_baseline=during
            )
        elif change.is_shortfall:
            yield _describe(JobIncomplete, change, job, names)


_PLAIN: dict[ChangeKind, type[JobEvent]] = {
    ChangeKind.DISCOVERED: JobDiscovered,
    ChangeKind.UPDATED: JobUpdated,
    ChangeKind.VANISHED: JobVanished,
}


def _plain(kind: ChangeKind, promotion_id: str, job: Job) -> Iterator[JobEvent]:
    ids = {
        "promotion_id": promotion_id,
        "job_id": job.id,
        "job_type": job.job_type,
        "status": job.status,
    }
    if kind is ChangeKind.STUCK:
        yield JobStuck(**ids, since=job.status_since)
    elif kind in _PLAIN:
        yield _PLAIN[kind](**ids)


# from a state write


def state_written(saved: Saved) -> Event | None:
    """What a save() is news for: a failure (every time), or the first success after one."""
    if not saved.ok:
        return StateWriteFailed(path=str(saved.path), detail=saved.error or "write failed")
    if saved.recovered:
        return StateWriteRecovered(path=str(saved.path))
    return None
