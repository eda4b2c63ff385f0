"""The status view: what the monitor sees now, for a person at `/` and a script at `/status.json`.

`build_status` is a pure function of the snapshot, the recent activity and the monitor's own facts;
it never calls Elastic Path. What needs attention sorts first, and the page is bounded at any scale.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from monitor.diff import is_stuck
from monitor.job_summary import Summaries
from monitor.models import FAILED, PromotionSnapshot
from monitor.recent_activity import FailureReport, PollError, PollRecord, RecentActivity

PER_PAGE: Final = 100
FAILURES_SHOWN: Final = 100

# What needs a person's attention, most urgent first; the rank sorts the promotion rows.
ATTENTION: Final = ("poll_failing", "stuck", "failed", "no_baseline", "active", "ok")

Names = Callable[[str], str | None]
# A promotion's poll interval as planned and its estimated jobs per day (None: not planned).
Planned = Callable[[str], tuple[float | None, float | None]]


class QueryError(ValueError):
    """A query parameter the status page cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """What the reader asked for: one promotion, a page of rows, an auto-refresh."""

    promotion: str | None = None
    page: int = 1
    per_page: int = PER_PAGE
    refresh: int | None = None


def _int_param(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if not (raw := query.get(name)):
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise QueryError(f"{name}: must be a whole number from {low} to {high}")
    return int(raw)


def parse_query(query: Mapping[str, str]) -> StatusQuery:
    """Read ?promotion=, ?page=, ?per_page=, ?refresh=; raises QueryError naming a bad one."""
    promotion = (query.get("promotion") or "").strip().lower() or None
    page = _int_param(query, "page", 1, 1_000_000) or 1
    per_page = _int_param(query, "per_page", 1, 1000) or PER_PAGE
    refresh = _int_param(query, "refresh", 5, 3600)
    return StatusQuery(promotion, page, per_page, refresh)


@dataclass(frozen=True, slots=True)
class MonitorFacts:
    """The monitor's own state, as the app knows it at the moment of the request."""

    version: str
    started_at: float
    ready: bool
    requests_budget: float  # requests/s this replica may make
    requests_rate_in_force: float  # lower than the budget while the store answers 429
    requests_per_second: float  # used, over the last minute
    shard_index: int = 0
    shard_count: int = 1
    detection_delay: tuple[float, float] | None = None  # p50, p99 over the last hour


@dataclass(frozen=True, slots=True)
class PromotionRow:
    id: str
    name: str | None
    kind: str | None
    attention: str
    jobs: dict[str, int]  # by status
    stuck: int = 0
    stuck_since: float | None = None  # the oldest stuck job entered its status
    last_failure_at: float | None = None
    last_poll: PollRecord | None = None  # None: not polled since the monitor started
    poll_interval_seconds: float | None = None  # as planned now (monitor.planner)
    jobs_per_day: float | None = None  # the rate the plan works with (monitor.rates)


@dataclass(frozen=True, slots=True)
class FailureRow:
    report: FailureReport
    promotion_name: str | None


@dataclass(frozen=True, slots=True)
class PollErrorRow:
    error: PollError
    promotion_name: str | None
    still_failing: bool


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    name: str | None
    job_type: str
    status: str
    since: float | None
    error: str | None
    stuck: bool


@dataclass(frozen=True, slots=True)
class StatusView:
    now: float
    monitor: MonitorFacts
    last_success: float | None
    watched: int
    attention: dict[str, int]  # promotions by attention
    promotions: tuple[PromotionRow, ...]
    total: int  # rows before paging
    page: int
    pages: int
    per_page: int
    failures: tuple[FailureRow, ...]
    poll_errors: tuple[PollErrorRow, ...]
    promotion: str | None = None
    jobs: tuple[JobRow, ...] | None = None  # every job of the one promotion asked for
    refresh: int | None = None


def _urgency(row: PromotionRow) -> tuple[int, float, str]:
    # Within a rank, the newest trouble first: failing longest is not more urgent than news.
    moment = {
        "poll_failing": row.last_poll and row.last_poll.failing_since,
        "stuck": row.stuck_since,
        "failed": row.last_failure_at,
    }.get(row.attention)
    return ATTENTION.index(row.attention), -(moment or 0.0), row.id


def _failures(
    recent: Iterable[FailureReport],
    snapshots: Iterable[PromotionSnapshot],
    summaries: Summaries,
    names: Names,
) -> tuple[FailureRow, ...]:
    """Failures the monitor saw, and failed jobs still in the snapshot (they survive restarts)."""
    held = heapq.nlargest(
        FAILURES_SHOWN,
        ((job, s.promotion_id) for s in snapshots for job in summaries.of(s).failed),
        key=lambda pair: pair[0].status_since or 0.0,
    )
    # One report per job, the one seen live if any: it knows when the monitor saw it.
    reports = [FailureReport.of_job(pid, job) for job, pid in held] + list(recent)
    merged = {(r.promotion_id, r.job_id, r.kind): r for r in reports}
    newest = heapq.nlargest(FAILURES_SHOWN, merged.values(), key=lambda r: r.when)
    return tuple(FailureRow(r, names(r.promotion_id)) for r in newest)


def build_status(
    *,
    snapshots: Mapping[str, PromotionSnapshot],
    watched: Mapping[str, str],
    activity: RecentActivity,
    monitor: MonitorFacts,
    now: float,
    stuck_after: float,
    query: StatusQuery = StatusQuery(),  # frozen: a shared default is safe
    names: Names = lambda _: None,
    summaries: Summaries | None = None,
    planned: Planned = lambda _: (None, None),
    store_now: float | None = None,
) -> StatusView | None:
    """The status as of `now`; None when `query.promotion` is neither watched nor known.

    `watched` maps promotion ids to kinds; those only in the snapshot (kept until discovery
    confirms them) are shown too, with no kind."""
    summaries = summaries or Summaries()
    ids = list(watched) + [pid for pid in snapshots if pid not in watched]
    one = query.promotion
    if one is not None and one not in watched and one not in snapshots:
        return None
    judged = now if store_now is None else store_now  # (the store's times, by its clock)

    def row_of(pid: str) -> PromotionRow:
        snapshot = snapshots.get(pid)
        jobs: dict[str, int] = {}
        stuck: list[float] = []
        last_failure = None
        if snapshot is not None:
            summary = summaries.of(snapshot)
            by_status: Counter[str] = Counter()
            for (_, status), count in summary.counts.items():
                by_status[status] += count
            jobs = dict(sorted(by_status.items()))
            seen = snapshot.seen  # (a job of unknown age is stuck from when it was first seen)
            stuck = [
                job.status_since or seen.get(job.id, judged)
                for job in summary.active
                if is_stuck(job, judged, stuck_after, seen.get(job.id))
            ]
            if summary.failed:
                last_failure = summary.failed[0].status_since
        record = activity.poll(pid)
        if record is not None and not record.ok:
            attention = "poll_failing"
        elif stuck:
            attention = "stuck"
        elif jobs.get(FAILED):
            attention = "failed"
        elif snapshot is None:
            attention = "no_baseline"
        elif snapshot.has_active:
            attention = "active"
        else:
            attention = "ok"
        interval, per_day = planned(pid)
        return PromotionRow(
            pid,
            names(pid),
            watched.get(pid),
            attention,
            jobs,
            len(stuck),
            min(stuck) if stuck else None,
            last_failure,
            record,
            None if interval is None else round(interval, 1),
            None if per_day is None else round(per_day, 3),
        )

    # Every row is built even for one promotion: the header counts what needs attention overall.
    rows = sorted(map(row_of, ids), key=_urgency)
    summaries.keep_only(snapshots)
    listed = rows if one is None else [row for row in rows if row.id == one]
    pages = max(1, math.ceil(len(listed) / query.per_page))
    page = min(query.page, pages)
    shown = listed[(page - 1) * query.per_page : page * query.per_page]

    scope = [snapshots[pid] for pid in ids if pid in snapshots and (one is None or pid == one)]
    recent = [f for f in activity.failures if one is None or f.promotion_id == one]
    failing = {row.id for row in rows if row.attention == "poll_failing"}
    poll_errors = tuple(
        PollErrorRow(e, names(e.promotion_id), e.promotion_id in failing)
        for e in sorted(activity.poll_errors, key=lambda e: e.last_at, reverse=True)
        if one is None or e.promotion_id == one
    )
    jobs = None
    if one is not None:
        held = snapshots[one].jobs.values() if one in snapshots else ()
        jobs = tuple(
            JobRow(
                j.id,
                j.name,
                j.job_type,
                j.status,
                j.status_since,
                j.error,
                is_stuck(j, judged, stuck_after),
            )
            for j in sorted(held, key=lambda j: j.status_since or 0.0, reverse=True)
        )
    polls = [row.last_poll.last_success for row in rows if row.last_poll is not None]
    return StatusView(
        now=now,
        monitor=monitor,
        last_success=max((at for at in polls if at is not None), default=None),
        watched=len(watched),
        attention=dict(Counter(row.attention for row in rows)),
        promotions=tuple(shown),
        total=len(listed),
        page=page,
        pages=pages,
        per_page=query.per_page,
        failures=_failures(recent, scope, summaries, names),
        poll_errors=poll_errors,
        promotion=one,
        jobs=jobs,
        refresh=query.refresh,
    )


@dataclass(frozen=True, kw_only=True)
class StatusBoard:
    """Gathers the live inputs of `build_status` at each request; the web handler calls it."""

    snapshots: Callable[[], Iterable[PromotionSnapshot]]
    watched: Callable[[], Mapping[str, str]]
    activity: RecentActivity
    facts: Callable[[], MonitorFacts]
    clock: Callable[[], float]
    stuck_after: float
    names: Names = lambda _: None
    planned: Planned = lambda _: (None, None)
    store_now: Callable[[], float] | None = None  # the store's clock (monitor.client.clock)
    summaries: Summaries = field(default_factory=Summaries)

    def view(self, query: StatusQuery) -> StatusView | None:
        return build_status(
            snapshots={s.promotion_id: s for s in self.snapshots()},
            watched=self.watched(),
            activity=self.activity,
            monitor=self.facts(),
            now=self.clock(),
            stuck_after=self.stuck_after,
            query=query,
            names=self.names,
            summaries=self.summaries,
            planned=self.planned,
            store_now=self.store_now() if self.store_now is not None else None,
        )
