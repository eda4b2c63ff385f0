"""One poll of one promotion: fetch → diff → an outcome. Nothing is reported here: the outcome
goes to the one reporting step (monitor.report)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from monitor.client import (
    UNREACHABLE,
    ApiError,
    ElasticPathClient,
    FetchResult,
    JobsTarget,
)
from monitor.diff import diff, expired
from monitor.models import Change, Job, PromotionSnapshot

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
    # Why objects were skipped.
    skipped: tuple[str, ...] = ()
    now: float = 0.0  # when the poll's answer was judged
    duration: float = 0.0
    requests: int = 1  # pages read: what a poll of this promotion costs the budget


class Poller:
    """Polls one promotion at a time and tells what changed; the store is only read."""

    def __init__(
        self,
        client: ElasticPathClient,
        snapshots: Callable[[str], PromotionSnapshot | None],
        *,
        clock: Callable[[], float],
        stuck_after: float,
        retention: float | None = None,
        lookback: float = 0.0,
    ) -> None:
        self._client = client
        self._snapshots = snapshots
        self._clock = clock
        self._stuck_after = stuck_after
        self._retention = retention
        self._lookback = lookback

    def _keeper(self, previous: PromotionSnapshot | None) -> Callable[[Job], bool] | None:
        """The diff's retention rule, applied while parsing so expired history is never held:
        a job we hold is always kept (its news must be reported), an unknown one only if recent."""
        if self._retention is None:
            return None
        horizon = self._client.store_clock.store_time(self._clock()) - self._retention
        held = previous.jobs if previous is not None else {}

        def keep(job: Job) -> bool:
            return job.id in held or not expired(job, horizon)

        return keep

    @staticmethod
    def _seen_jobs(result: FetchResult, previous: PromotionSnapshot | None) -> list[Job]:
        """The jobs to diff: those read, plus, when the listing was incomplete, the last known
        state of every job it did not show (not seen is not removed: no vanish)."""
        if result.listing.incomplete is None or previous is None:
            return result.jobs
        seen = {job.id for job in result.jobs}
        return result.jobs + [job for job in previous.jobs.values() if job.id not in seen]

    async def _fetch(self, target: JobsTarget, previous: PromotionSnapshot | None) -> FetchResult:
        known = previous.jobs if previous else None
        keep = self._keeper(previous)
        result = await self._client.fetch_jobs(target, known, keep)
        if result.listing.incomplete in UNREACHABLE:
            # The store cannot be paged past some point: its failed jobs alone (the documented
            # status filter) are few, and a failure past the pages read must still page.
            narrowed = target.narrowed(FAILED_ONLY)
            try:
                failed = await self._client.fetch_jobs(narrowed, known, keep)
            except ApiError:
                # (a store that refuses the filter still gave the listing: keep what it gave)
                return result
            result.add(failed)
        return result

    async def poll(self, target: JobsTarget) -> PollOutcome:
        pid = target.promotion_id
        started = time.perf_counter()
        previous = self._snapshots(pid)
        was_active = previous is not None and previous.has_active
        try:
            result = await self._fetch(target, previous)
        except ApiError as exc:
            # What the monitor knew stays known: no vanished jobs, gauges keep their values.
            return PollOutcome(
                pid,
                ok=False,
                reason=exc.reason,
                detail=str(exc),
                http_status=exc.http_status,
                active=was_active,
                duration=time.perf_counter() - started,
            )
        except Exception as exc:
            # An answer shaped in a way nobody foresaw must cost one poll, not the daemon.
            return PollOutcome(
                pid,
                ok=False,
                reason="bad_response",
                detail=repr(exc)[:300],
                active=was_active,
                duration=time.perf_counter() - started,
            )
        now = self._clock()
        # The store's times (ages, lookback, stuck, retention) are judged by the store's clock.
        store_now = self._client.store_clock.store_time(now)
        seen = PollOutcome(
            pid,
            ok=True,
            active=was_active,
            incomplete=result.listing.incomplete,
            skipped=tuple(result.skipped),
            requests=result.listing.pages,
            now=now,
            duration=time.perf_counter() - started,
        )
        found = diff(
            previous,
            self._seen_jobs(result, previous),
            promotion_id=pid,
            now=store_now,
            stuck_after=self._stuck_after,
            retention=self._retention,
            lookback=self._lookback,
            failures_known=result.complete or result.failures_complete,
        )
        # (Without changes, only expired history was pruned; the next write carries it.)
        changed = found.snapshot if found.snapshot is not previous else None
        return replace(
            seen,
            changes=tuple(found.changes),
            active=found.snapshot.has_active,
            snapshot=changed,
            duration=time.perf_counter() - started,
        )
