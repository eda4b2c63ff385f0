"""One poll of one promotion: fetch → diff → an outcome. Nothing is reported here: the outcome
goes to the one reporting step (monitor.report)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from monitor.client import UNREACHABLE, ApiError, ElasticPathClient, FetchResult, JobsTarget
from monitor.diff import diff
from monitor.models import Change, PromotionSnapshot

# The one job filter the descriptions document for both kinds (eq on status or job_type).
FAILED_ONLY = "eq(status,failed)"


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll saw: for a poll that worked, the changes and the snapshot they lead to."""

    promotion_id: str
    ok: bool
    changes: tuple[Change, ...] = ()
    reason: str | None = None
    detail: str | None = None  # what went wrong, as logged (secrets already scrubbed)
    http_status: int | None = None
    # Whether the promotion has a pending, processing or cancelling job now (as last known after
    # a failed poll): the plan polls it at the active interval.
    active: bool = False
    # Why the listing could not be read whole (monitor.client.Incomplete), for a poll that worked.
    incomplete: str | None = None
    # The snapshot to record (None: the one held is still right).
    snapshot: PromotionSnapshot | None = None
    skipped: tuple[str, ...] = ()  # why objects were skipped
    now: float = 0.0  # when the poll's answer was judged
    duration: float = 0.0
    requests: int = 1  # pages read: what a poll of this promotion costs the budget


@dataclass(frozen=True, slots=True)
class Poller:
    """Polls one promotion at a time and tells what changed; the store is only read."""

    client: ElasticPathClient
    snapshots: Callable[[str], PromotionSnapshot | None]
    _: KW_ONLY
    clock: Callable[[], float]
    stuck_after: float
    retention: float | None = None
    lookback: float = 0.0

    async def _fetch(self, target: JobsTarget, previous: PromotionSnapshot | None) -> FetchResult:
        known = previous.jobs if previous else None
        result = await self.client.fetch_jobs(target, known)
        if result.listing.incomplete in UNREACHABLE:
            # The store cannot be paged past some point: its failed jobs alone (the documented
            # status filter) are few, and a failure past the pages read must still page.
            narrowed = target.narrowed(FAILED_ONLY)
            try:
                failed = await self.client.fetch_jobs(narrowed, known)
            except ApiError:
                # (a store that refuses the filter still gave the listing: keep what it gave)
                return result
            # Its jobs that the listing did not show; the listing stays as incomplete as it was
            # (and the failed jobs' skipped objects are the listing's too: not counted twice).
            listed = {job.id for job in result.jobs}
            result.jobs.extend(job for job in failed.jobs if job.id not in listed)
            result.failures_complete = failed.complete
        return result

    async def poll(self, target: JobsTarget) -> PollOutcome:
        pid = target.promotion_id
        started = time.perf_counter()
        previous = self.snapshots(pid)
        try:
            result = await self._fetch(target, previous)
        except Exception as exc:
            # What the monitor knew stays known: no vanished jobs, gauges keep their values. An
            # answer shaped in a way nobody foresaw must cost one poll, not the daemon.
            error = exc if isinstance(exc, ApiError) else ApiError("bad_response", repr(exc)[:300])
            return PollOutcome(
                pid,
                ok=False,
                reason=error.reason,
                detail=str(error),
                http_status=error.http_status,
                active=previous is not None and previous.has_active,
                duration=time.perf_counter() - started,
            )
        jobs = result.jobs
        if result.listing.incomplete is not None and previous is not None:
            # Not seen is not removed (no vanish): a job the listing did not show keeps its state.
            read = {job.id for job in jobs}
            jobs = jobs + [job for job in previous.jobs.values() if job.id not in read]
        now = self.clock()
        found = diff(
            previous,
            jobs,
            promotion_id=pid,
            # The store's times (ages, lookback, stuck, retention) are judged by the store's clock.
            now=self.client.store_clock.store_time(now),
            stuck_after=self.stuck_after,
            retention=self.retention,
            lookback=self.lookback,
            failures_known=result.complete or result.failures_complete,
        )
        return PollOutcome(
            pid,
            ok=True,
            changes=tuple(found.changes),
            active=found.snapshot.has_active,
            incomplete=result.listing.incomplete,
            # (Without changes, only expired history was pruned; the next write carries it.)
            snapshot=found.snapshot if found.snapshot is not previous else None,
            skipped=tuple(result.skipped),
            now=now,
            duration=time.perf_counter() - started,
            requests=result.listing.pages,
        )
