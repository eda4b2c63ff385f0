"""What one promotion's snapshot adds up to: jobs by type and status, active and failed jobs.

/metrics and the status page both read it at every request; a summary is computed once per
snapshot object (snapshots are immutable and replaced on change), so neither re-counts 100k jobs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from monitor.models import FAILED, Job, PromotionSnapshot

# Failed jobs kept per promotion, most recent first: one noisy promotion cannot crowd out the rest.
FAILED_PER_PROMOTION: Final = 20


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One promotion's jobs, counted and picked out."""

    counts: dict[tuple[str, str], int]  # (job_type, status) -> jobs
    active: tuple[Job, ...]
    failed: tuple[Job, ...]  # most recent first, at most FAILED_PER_PROMOTION


class Summaries:
    """Summaries by promotion, reused while the promotion's snapshot object is the same."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[PromotionSnapshot, JobSummary]] = {}

    def of(self, snapshot: PromotionSnapshot) -> JobSummary:
        cached = self._cache.get(snapshot.promotion_id)
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        jobs = snapshot.jobs.values()
        failed = sorted(
            (job for job in jobs if job.status == FAILED),
            key=lambda job: job.status_since or 0.0,
            reverse=True,
        )
        summary = JobSummary(
            dict(Counter((job.job_type, job.status) for job in jobs)),
            tuple(job for job in jobs if job.is_active),
            tuple(failed[:FAILED_PER_PROMOTION]),
        )
        self._cache[snapshot.promotion_id] = (snapshot, summary)
        return summary

    def keep_only(self, live: Iterable[str]) -> None:
        """Forget promotions that left the snapshot."""
        for gone in self._cache.keys() - set(live):
            del self._cache[gone]
