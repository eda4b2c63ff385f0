"""Every log event the monitor emits, declared once: the event contract (docs/hooks.py renders
its reference). Code with something to report builds an event and hands it to an `EventSink`;
the sink decides how it looks (JSON lines via structlog in `sinks/logs.py`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar, dataclass_transform

from monitor.models import Change, ChangeKind, Job, without_password
from monitor.state import Saved

Level = Literal["debug", "info", "warning", "error"]


@dataclass_transform(kw_only_default=True, frozen_default=True)
class Event:
    """Base of every event: `NAME` and `LEVEL` are the class's, the fields the instance's (a
    frozen, keyword-only dataclass: the class line and fields are the whole declaration)."""

    NAME: ClassVar[str]
    LEVEL: ClassVar[Level]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # (every subclass's)

    def __init_subclass__(cls, *, name: str | None = None, level: Level | None = None) -> None:
        super().__init_subclass__()
        if name is not None:
            cls.NAME = name
        if level is not None:
            cls.LEVEL = level
        dataclass(frozen=True, kw_only=True)(cls)

    def fields(self) -> dict[str, object]:
        """The fields as rendered: declaration order, None left out."""
        values = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return {name: value for name, value in values if value is not None}


class EventSink(Protocol):
    """Where events go; the one way any part of the monitor reports one."""

    def emit(self, event: Event) -> None: ...


class MonitorStarted(Event, name="monitor_started", level="info"):
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", without_password(self.base_url))


class MonitorStopped(Event, name="monitor_stopped", level="info"):
    state_saved: bool


class JobEvent(Event):
    """The fields every job event carries."""

    promotion_id: str
    job_id: str
    job_type: str
    status: str
    # True: announced at start from what a killed process owed, which may have announced it
    # already (monitor.report); dedupe such an event on (event, promotion_id, job_id, status).
    redelivered: bool | None = None


class DescribedJobEvent(JobEvent):
    """A job event a person acts on: names and codes, where known."""

    name: str | None = None
    promotion_name: str | None = None
    codes_requested: int | None = None
    codes_generated: int | None = None
    codes_deleted: int | None = None


class BaselineLoaded(Event, name="baseline_loaded", level="info"):
    promotion_id: str
    jobs: int
    by_status: Mapping[str, int]


class JobDiscovered(JobEvent, name="job_discovered", level="info"):
    """A job first seen after the baseline."""


class JobSeenLate(JobEvent, name="job_discovered", level="debug"):
    """A job first seen long after it last changed: history an incomplete listing hid."""

    late_seen: bool = True


class JobStatusChanged(DescribedJobEvent, name="job_status_changed", level="info"):
    previous_status: str | None = None


class JobFailed(DescribedJobEvent, name="job_failed", level="error"):
    error: str
    # Found by the baseline lookback (True), or seen turning failed (left out).
    during_baseline: bool | None = None


class JobIncomplete(DescribedJobEvent, name="job_incomplete", level="warning"):
    """A job that finished with fewer codes than it asked for."""


class JobStuck(JobEvent, name="job_stuck", level="warning"):
    since: float | None = None


class JobVanished(JobEvent, name="job_vanished", level="info"):
    """A job no longer listed (a complete listing only)."""


class JobUpdated(JobEvent, name="job_updated", level="debug"):
    """A job changed without changing status."""


class PollFailed(Event, name="poll_failed", level="warning"):
    promotion_id: str
    reason: str
    detail: str
    http_status: int | None = None
    hint: str | None = None


class PollIncomplete(Event, name="poll_incomplete", level="warning"):
    promotion_id: str
    reason: str
    detail: str


class JobsSkipped(Event, name="jobs_skipped", level="warning"):
    promotion_id: str
    count: int
    reason: str


class StoreClockSkewed(Event, name="store_clock_skewed", level="warning"):
    skew_seconds: float


class RequestRetried(Event, name="request_retried", level="info"):
    endpoint: str
    reason: str
    attempt: int
    http_status: int | None = None
    retry_after: float | None = None


class TokenRefreshed(Event, name="token_refreshed", level="info"):
    expires_in: float


class PromotionAdded(Event, name="promotion_added", level="info"):
    promotion_id: str
    kind: str


class PromotionRemoved(Event, name="promotion_removed", level="info"):
    promotion_id: str


class DiscoveryCompleted(Event, name="discovery_completed", level="info"):
    promotions: int
    discovered: int
    added: int
    removed: int


class DiscoveryFailed(Event, name="discovery_failed", level="warning"):
    reason: str
    detail: str


class DiscoveryIncomplete(Event, name="discovery_incomplete", level="warning"):
    detail: str


class NameLookupFailed(Event, name="name_lookup_failed", level="warning"):
    promotion_id: str
    reason: str
    detail: str


class StateDiscarded(Event, name="state_discarded", level="warning"):
    path: str
    reason: str
    kept_as: str
    detail: str = "starting from a fresh baseline"


class StatePruned(Event, name="state_pruned", level="info"):
    promotions: int


class StateWriteFailed(Event, name="state_write_failed", level="error"):
    path: str
    detail: str


class StateWriteRecovered(Event, name="state_write_recovered", level="info"):
    path: str


class LeaderElected(Event, name="leader_elected", level="info"):
    identity: str
    lease: str
    transitions: int
    kept_state: bool


class LeaderLost(Event, name="leader_lost", level="warning"):
    identity: str
    lease: str
    reason: str


class LeaseUnavailable(Event, name="lease_unavailable", level="debug"):
    """The Lease could not be read or written; debug while standing by, warning while leading."""

    lease: str
    detail: str


class LeaseUnreachable(LeaseUnavailable, level="warning"):
    """The leader could not renew the Lease: its fence is closing."""


class HandoverIgnored(Event, name="handover_ignored", level="warning"):
    """The Lease's handover record could not be read: failures may be reported again."""

    lease: str
    reason: str


class HandoverNotWritten(Event, name="handover_not_written", level="warning"):
    """Failures announced before the handover record holding them reached the Lease."""

    lease: str
    failures: int


class HandoverTruncated(Event, name="handover_truncated", level="warning"):
    """The record is at its cap: its oldest entries are left out (reported again, if ever)."""

    lease: str
    dropped: int
    cap: int


def all_events() -> list[type[Event]]:
    """Every concrete event class (those with a NAME), in declaration order, for the reference."""
    found = globals().values()
    return [c for c in found if isinstance(c, type) and issubclass(c, Event) and hasattr(c, "NAME")]


# from changes

D = TypeVar("D", bound=DescribedJobEvent)

_PLAIN: dict[ChangeKind, type[JobEvent]] = {
    ChangeKind.DISCOVERED: JobDiscovered,
    ChangeKind.UPDATED: JobUpdated,
    ChangeKind.VANISHED: JobVanished,
}


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
        pid, job = change.promotion_id, change.job
        if change.kind is ChangeKind.BASELINE:
            counts = dict(change.counts or {})
            yield BaselineLoaded(promotion_id=pid, jobs=sum(counts.values()), by_status=counts)
            continue
        if job is None:
            continue
        ids: dict[str, Any] = {
            "promotion_id": pid,
            "job_id": job.id,
            "job_type": job.job_type,
            "status": job.status,
        }
        if change.late:
            yield JobSeenLate(**ids)
        elif change.during_baseline:
            pass  # part of the baseline: only its failure is news (below)
        elif change.kind is ChangeKind.STATUS_CHANGED:
            previous = change.previous.status if change.previous else None
            yield _describe(JobStatusChanged, change, job, names, previous_status=previous)
        elif change.kind is ChangeKind.STUCK:
            yield JobStuck(**ids, since=job.status_since)
        else:
            yield _PLAIN[change.kind](**ids)
        if change.is_failure:
            during = True if change.during_baseline else None
            yield _describe(
                JobFailed, change, job, names, error=job.error or "", during_baseline=during
            )
        elif change.is_shortfall:
            yield _describe(JobIncomplete, change, job, names)


# from a state write


def state_written(saved: Saved) -> Event | None:
    """What a save() is news for: a failure (every time), or the first success after one."""
    if not saved.ok:
        return StateWriteFailed(path=str(saved.path), detail=saved.error or "write failed")
    if saved.recovered:
        return StateWriteRecovered(path=str(saved.path))
    return None
