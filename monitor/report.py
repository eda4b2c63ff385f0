"""The one reporting step: a poll's outcome becomes state, events, metrics and the status view.

Written before announced, and never recorded-and-silent: a poll's changes and the announcements
they owe go into the state in one write; the announcements go out whatever became of that write
(done, failed, or its poll cancelled at shutdown) and are then marked done. Whatever a killed
process still owed is announced at the next start. The ledger of reported failures keeps a
failure that vanishes and comes back, or is seen again by a fresh baseline, from being announced
twice. The coordination fence is asked once, here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace

from monitor.events import (
    EventSink,
    JobEvent,
    JobsSkipped,
    PollFailed,
    PollIncomplete,
    job_events,
    state_written,
)
from monitor.handover import Handover, failure_keys
from monitor.models import FAILED, Change, ChangeKind
from monitor.names import PromotionNames
from monitor.planner import PollPlan
from monitor.poller import PollOutcome
from monitor.rates import JobRates
from monitor.recent_activity import RecentActivity
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import Owed, SnapshotStore

# What an operator should check, by failure reason; shown in the poll_failed event.
HINTS = {
    "auth": "check the credentials (EPCC_CLIENT_ID, EPCC_CLIENT_SECRET or api.client_secret_file, "
    "api.token_file) and that the API key may read promotions",
    "not_found": "the promotion is deleted, or its kind is wrong (rule_promotion vs promotion)",
    "rate_limited": "the store is at its request limit; lower api.max_requests_per_second",
}

# What an incomplete listing means for the operator; shown once per promotion and reason.
INCOMPLETE_DETAILS = {
    "offset_limit": "more jobs than the API pages through (offset 10,000); the rest are unseen "
    "and kept as last known",
    "offset_ignored": "the store answered every offset with the same page; jobs past it are "
    "unseen and kept as last known",
    "short": "fewer distinct jobs than meta.results.total (pages overlap: the store lists jobs in "
    "no stable order); unseen jobs are kept as last known and none is reported vanished",
}


class Reporter:
    """Reports every finished poll, and owns the state's writes."""

    def __init__(
        self,
        store: SnapshotStore,
        metrics: MonitorMetrics,
        events: EventSink,
        *,
        plan: PollPlan,
        names: PromotionNames,
        activity: RecentActivity,
        clock: Callable[[], float],
        may_report: Callable[[], bool] = lambda: True,
        handover: Handover | None = None,
        rates: JobRates,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._events = events
        self._plan = plan
        self._names = names
        self._activity = activity
        self._clock = clock
        # False once this replica may no longer poll (coordination.Fence.allows).
        self._may_report = may_report
        self._handover = handover  # with coordination.mode: lease
        self._rates = rates  # the job rates the plan works with, from the jobs the state holds
        # (promotion, reason) pairs already warned about: an unordered store makes every poll
        # incomplete, and one warning says it.
        self._incomplete_warned: set[tuple[str, str]] = set()
        self._redelivery: asyncio.Task[None] | None = None  # (kept from the garbage collector)

    async def report(self, outcome: PollOutcome) -> bool:
        """Report one poll; False when it was not (this replica may no longer poll, so another
        may already be polling; or the promotion stopped being watched while it was polled)."""
        pid = outcome.promotion_id
        self._metrics.poll_duration.observe(outcome.duration)
        if not self._may_report() or pid not in self._plan:
            return False
        if not outcome.ok:
            # What the monitor knew stays known: no vanished jobs, gauges keep their values.
            reason = outcome.reason or "unknown"
            self._metrics.poll_failed(pid, reason)
            self._events.emit(
                PollFailed(
                    promotion_id=pid,
                    reason=reason,
                    detail=outcome.detail or "",
                    http_status=outcome.http_status,
                    hint=HINTS.get(reason),
                )
            )
            self._activity.polled(outcome)
            return True
        self._listing_read(outcome)
        if outcome.snapshot is not None:
            self._store.put(outcome.snapshot)
            if outcome.changes:
                self._rates.held(outcome.snapshot, self._clock())
        self._metrics.poll_succeeded(pid, outcome.now)
        changes = outcome.changes
        if self._handover is not None:
            changes = self._handover.judge(changes, outcome.snapshot)
        changes = self._not_reported_before(changes)
        if changes:
            owed = self._store.owe(pid, changes, self._clock(), history=_history(outcome, changes))
            written = False
            try:
                written = await self.save()
                if self._handover is not None:  # (on the Lease before announced)
                    carried = await self._handover.carry(owed.changes)
                    self._metrics.handover_failures.inc(carried.unwritten)
                    for event in carried.news:
                        self._events.emit(event)
            finally:
                # Announced even when the write failed (at least once) or this poll was
                # cancelled inside it (shutdown, a lost lease): never recorded-and-silent.
                self.announce(owed)
            if written and self._store.dirty:
                await self.save()  # (marked done as soon as it can be: a restart repeats nothing)
        self._activity.polled(replace(outcome, changes=changes))
        return True

    def _listing_read(self, outcome: PollOutcome) -> None:
        """Objects skipped, and a listing read only in part: counted, the latter warned once."""
        pid = outcome.promotion_id
        if outcome.skipped:
            self._metrics.jobs_skipped.labels(pid).inc(len(outcome.skipped))
            self._events.emit(
                JobsSkipped(promotion_id=pid, count=len(outcome.skipped), reason=outcome.skipped[0])
            )
        if (incomplete := outcome.incomplete) is None:
            return
        self._metrics.polls_incomplete.labels(pid, incomplete).inc()
        if (pid, incomplete) not in self._incomplete_warned:
            self._incomplete_warned.add((pid, incomplete))
            self._events.emit(
                PollIncomplete(
                    promotion_id=pid, reason=incomplete, detail=INCOMPLETE_DETAILS[incomplete]
                )
            )

    def _not_reported_before(self, changes: Sequence[Change]) -> tuple[Change, ...]:
        """The changes, with a failure already on the ledger turned into history: a job that
        vanished and came back, or a fresh baseline's lookback, must not announce it again."""
        return tuple(
            replace(change, late=True)
            if change.is_failure
            and change.job is not None
            and self._store.reported(change.promotion_id, change.job.id)
            else change
            for change in changes
        )

    def announce(self, owed: Owed, *, redelivered: bool = False) -> None:
        """Emit what a poll owes (metrics and events), then mark it done."""
        self._metrics.record(owed.changes)
        for event in job_events(owed.changes, self._names.get):
            redone = redelivered and isinstance(event, JobEvent)
            self._events.emit(replace(event, redelivered=True) if redone else event)
        self._store.announced(owed)
        if self._handover is not None:
            self._handover.announced(owed.changes)

    async def announce_owed(self) -> None:
        """At start: what a stopped process had written but not announced goes out now. With a
        lease, in the background: first the Lease's records say which of its failures another
        replica announced meanwhile, and those are left out."""
        if owed := self._store.owed():
            self._redelivery = asyncio.create_task(self._redeliver(owed))
            if self._handover is None:  # (without a lease, before the loop starts)
                await self._redelivery

    async def _redeliver(self, owed: list[Owed]) -> None:
        keys = {key for each in owed for key in failure_keys(each.changes)}
        elsewhere = await self._handover.announced_elsewhere(keys) if self._handover else set()
        for each in owed:
            kept = tuple(c for c in each.changes if not failure_keys([c]) & elsewhere)
            self.announce(replace(each, changes=kept), redelivered=True)
        await self.save()

    async def save(self, *, compact: bool = False) -> bool:
        """Write the state; a failed write (and the first success after failed ones) is news."""
        if compact and self._redelivery is not None and self._handover is not None:
            self._handover.end_wait()  # (the last write: what start held goes out, not with a pod)
            await asyncio.wait([self._redelivery])  # (its own failure is not the last write's)
        saved = await self._store.save(compact=compact)
        if (written := state_written(saved)) is not None:
            self._events.emit(written)
        return saved.ok


def _history(outcome: PollOutcome, changes: Sequence[Change]) -> list[str]:
    """Failed jobs this poll took for history (a baseline's old failures, failures seen late):
    onto the ledger with the reported ones, so that one vanishing and coming back (an empty
    answer between) is history again, not a failure first seen in a view of every failure."""
    ids = [c.job.id for c in changes if c.late and c.job is not None and c.job.status == FAILED]
    if outcome.snapshot is not None and any(c.kind is ChangeKind.BASELINE for c in changes):
        paged = {c.job.id for c in changes if c.is_failure and c.job is not None}
        ids += [
            job.id
            for job in outcome.snapshot.jobs.values()
            if job.status == FAILED and job.id not in paged
        ]
    return ids
