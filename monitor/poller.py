"""One poll of one promotion: fetch → diff → remember → emit. The only place I/O is sequenced."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from monitor.client import (
    UNREACHABLE,
    ApiError,
    ElasticPathClient,
    FetchResult,
    JobsTarget,
    PageMemory,
)
from monitor.diff import Diff, diff, expired
from monitor.events import (
    EventSink,
    JobsSkipped,
    PollFailed,
    PollIncomplete,
    job_events,
    state_written,
)
from monitor.models import Change, Job, PromotionSnapshot
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore

# The one job filter the descriptions document for both kinds (eq on status or job_type).
FAILED_ONLY = "eq(status,failed)"

# A poll given up because this replica may no longer poll (coordination); not a failure.
ABANDONED = "abandoned"

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


@dataclass(frozen=True, slots=True)
class PollOutcome:
    promotion_id: str
    ok: bool
    changes: tuple[Change, ...] = ()
    reason: str | None = None
    detail: str | None = None  # what went wrong, as logged (secrets already scrubbed)
    # Whether the promotion has a pending, processing or cancelling job now (as last known after
    # a failed poll): the plan polls it at the active interval.
    active: bool = False
    # Why the listing could not be read whole (monitor.client.Incomplete), for a poll that worked.
    incomplete: str | None = None
    requests: int = 1  # pages read: what a poll of this promotion costs the budget

    @property
    def abandoned(self) -> bool:
        """The replica stopped being the poller mid-poll: nothing was reported."""
        return self.reason == ABANDONED


async def save(
    store: SnapshotStore, events: EventSink, now: float, *, compact: bool = False
) -> bool:
    """Write the state; a failed write (and the first success after failed ones) is news.
    The poller's writes and the scheduler's (retries, the last at shutdown) go through here."""
    saved = await store.save(now, compact=compact)
    written = state_written(saved)
    if written is not None:
        events.emit(written)
    return saved.ok


class Poller:
    """Polls promotions and turns what it sees into snapshot updates, metrics and events."""

    def __init__(
        self,
        client: ElasticPathClient,
        store: SnapshotStore,
        metrics: MonitorMetrics,
        events: EventSink,
        *,
        names: Callable[[str], str | None] = lambda _: None,
        pages: PageMemory | None = None,
        clock: Callable[[], float],
        stuck_after: float,
        retention: float | None = None,
        lookback: float = 0.0,
        may_report: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = client
        # False once this replica may no longer poll (coordination): a poll that was in flight
        # then is abandoned and reports nothing, since another replica may already be polling.
        self._may_report = may_report
        self._store = store
        self._metrics = metrics
        self._events = events
        self._names = names
        # What each promotion's pages looked like last time (bytes unchanged: not decoded).
        self._pages = pages if pages is not None else PageMemory()
        self._clock = clock
        self._stuck_after = stuck_after
        self._retention = retention
        self._lookback = lookback
        # (promotion, reason) pairs already warned about: an unordered store makes every poll
        # incomplete, and one warning says it.
        self._incomplete_warned: set[tuple[str, str]] = set()

    def _needs_diff(self, snapshot: PromotionSnapshot, now: float) -> bool:
        if snapshot.has_active:
            return True
        oldest = snapshot.oldest_finished
        return self._retention is not None and oldest is not None and oldest < now - self._retention

    def _keeper(self, previous: PromotionSnapshot | None) -> Callable[[Job], bool] | None:
        """The diff's retention rule, applied while parsing so expired history is never held:
        a job we hold is always kept (its news must be reported), an unknown one only if recent."""
        if self._retention is None:
            return None
        horizon = self._clock() - self._retention
        held = previous.jobs if previous is not None else {}

        def keep(job: Job) -> bool:
            return job.id in held or not expired(job, horizon)

        return keep

    def _seen_jobs(
        self, pid: str, result: FetchResult, previous: PromotionSnapshot | None
    ) -> list[Job]:
        """The jobs to diff: those read, plus, when the listing was incomplete, the last known
        state of every job it did not show (not seen is not removed: no vanish)."""
        incomplete = result.listing.incomplete
        if incomplete is None:
            return result.jobs
        self._metrics.polls_incomplete.labels(pid, incomplete).inc()
        if (pid, incomplete) not in self._incomplete_warned:
            self._incomplete_warned.add((pid, incomplete))
            self._events.emit(
                PollIncomplete(
                    promotion_id=pid, reason=incomplete, detail=INCOMPLETE_DETAILS[incomplete]
                )
            )
        if previous is None:
            return result.jobs
        seen = {job.id for job in result.jobs}
        return result.jobs + [job for job in previous.jobs.values() if job.id not in seen]

    async def _fetch(self, target: JobsTarget, previous: PromotionSnapshot | None) -> FetchResult:
        known = previous.jobs if previous else None
        keep = self._keeper(previous)
        result = await self._client.fetch_jobs(target, self._pages, known, keep)
        if result.listing.incomplete in UNREACHABLE:
            # The store cannot be paged past some point: its failed jobs alone (the documented
            # status filter) are few, and a failure past the pages read must still page.
            narrowed = target.narrowed(FAILED_ONLY)
            try:
                failed = await self._client.fetch_jobs(narrowed, None, known, keep)
            except ApiError:
                # (a store that refuses the filter still gave the listing: keep what it gave)
                return result
            result.add(failed, known)
        return result

    async def poll(self, target: JobsTarget) -> PollOutcome:
        pid = target.promotion_id
        started = time.perf_counter()
        previous = self._store.get(pid)
        was_active = previous is not None and previous.has_active
        try:
            result = await self._fetch(target, previous)
        except ApiError as exc:
            if not self._may_report():
                return PollOutcome(pid, ok=False, reason=ABANDONED)
            # What the monitor knew stays known: no vanished jobs, gauges keep their values.
            self._metrics.poll_failed(pid, exc.reason)
            self._events.emit(
                PollFailed(
                    promotion_id=pid,
                    reason=exc.reason,
                    detail=str(exc),
                    http_status=exc.http_status,
                    hint=HINTS.get(exc.reason),
                )
            )
            return PollOutcome(pid, ok=False, reason=exc.reason, detail=str(exc), active=was_active)
        except Exception as exc:
            if not self._may_report():
                return PollOutcome(pid, ok=False, reason=ABANDONED)
            # An answer shaped in a way nobody foresaw must cost one poll, not the daemon.
            self._metrics.poll_failed(pid, "bad_response")
            detail = repr(exc)[:300]
            self._events.emit(PollFailed(promotion_id=pid, reason="bad_response", detail=detail))
            return PollOutcome(
                pid, ok=False, reason="bad_response", detail=detail, active=was_active
            )
        finally:
            self._metrics.poll_duration.observe(time.perf_counter() - started)

        if not self._may_report():
            return PollOutcome(pid, ok=False, reason=ABANDONED)
        # Accepted: the pages read are now what this promotion looked like.
        self._pages.remember(pid, result.pages)
        if result.skipped:
            self._metrics.jobs_skipped.labels(pid).inc(len(result.skipped))
            self._events.emit(
                JobsSkipped(promotion_id=pid, count=len(result.skipped), reason=result.skipped[0])
            )
        now = self._clock()
        jobs = self._seen_jobs(pid, result, previous)  # (counts an incomplete listing too)
        if result.unchanged and previous is not None and not self._needs_diff(previous, now):
            # Same bytes as last time, nothing active that could turn stuck, nothing expiring:
            # the diff could only say "no change".
            self._metrics.poll_succeeded(pid, now)
            return PollOutcome(
                pid,
                ok=True,
                active=was_active,
                incomplete=result.listing.incomplete,
                requests=result.listing.pages,
            )
        outcome: Diff = diff(
            previous,
            jobs,
            promotion_id=pid,
            now=now,
            stuck_after=self._stuck_after,
            retention=self._retention,
            lookback=self._lookback,
        )
        if outcome.snapshot is not previous:
            # (Without changes, only expired history was pruned; the next write carries it.)
            self._store.put(outcome.snapshot)
        if outcome.changes:
            # Durable before announced: a crash now may lose these events, but a restart
            # never announces them twice.
            await save(self._store, self._events, now)
            self._metrics.record(outcome.changes)
            for event in job_events(outcome.changes, self._names):
                self._events.emit(event)
        self._metrics.poll_succeeded(pid, now)
        return PollOutcome(
            pid,
            ok=True,
            changes=tuple(outcome.changes),
            active=outcome.snapshot.has_active,
            incomplete=result.listing.incomplete,
            requests=result.listing.pages,
        )
