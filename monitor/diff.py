"""The pure core: what changed between the last snapshot of a promotion and its jobs now. No I/O
and no clock reads: `now` comes in as an argument, so every rule here is a table test."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from monitor.models import ACTIVE_STATUSES, FAILED, Change, ChangeKind, Job, PromotionSnapshot


@dataclass(frozen=True, slots=True)
class Diff:
    """The changes a poll revealed and the snapshot that results from them."""

    changes: Sequence[Change]
    snapshot: PromotionSnapshot


def expired(job: Job, horizon: float) -> bool:
    """A finished job that entered its final status before `horizon` (retention has passed)."""
    since = job.status_since
    return job.is_terminal and since is not None and since < horizon


def prune(snapshot: PromotionSnapshot, horizon: float) -> PromotionSnapshot:
    """The snapshot without finished jobs that entered their status before `horizon`."""
    kept = {k: j for k, j in snapshot.jobs.items() if not expired(j, horizon)}
    if len(kept) == len(snapshot.jobs):
        return snapshot  # (the same object: nothing changed, nothing to write)
    return replace(snapshot, jobs=kept, stuck=snapshot.stuck & kept.keys())


def recent(job: Job, since: float) -> bool:
    """The job entered its status at or after `since`; a job without timestamps counts as
    recent, so that nothing is silenced on missing evidence."""
    at = job.status_since
    return at is None or at >= since


def is_stuck(job: Job, now: float, stuck_after: float, seen: float | None = None) -> bool:
    """An active job that has sat in its status longer than `stuck_after` seconds; of one whose
    age is unknown, since `seen`, when the monitor first saw it in that status."""
    since = job.status_since if job.status_since is not None else seen
    return job.is_active and since is not None and now - since > stuck_after


def first_seen(
    previous: PromotionSnapshot | None, jobs: Mapping[str, Job], now: float
) -> dict[str, float]:
    """When the monitor first saw each active job of unknown age in its current status."""
    before = previous.jobs if previous is not None else {}
    seen = previous.seen if previous is not None else {}
    return {
        job.id: seen.get(job.id, now)
        if job.id in before and before[job.id].status == job.status
        else now
        for job in jobs.values()
        if job.is_active and job.status_since is None
    }


def diff(
    previous: PromotionSnapshot | None,
    current: Iterable[Job],
    *,
    promotion_id: str,
    now: float,
    stuck_after: float,
    retention: float | None = None,
    lookback: float = 0.0,
    failures_known: bool = False,
) -> Diff:
    """Compare a successful poll's jobs with the previous snapshot of the same promotion.

    Only for a poll that succeeded: a failed poll must change nothing, and a job missing from a
    partial answer would look vanished (the poller adds the jobs an incomplete listing did not
    show). `retention`: finished jobs older than that are left out of both sides, silently
    (memory must not grow with history). `lookback`: at a baseline, failures younger than that
    are reported; later, a job first seen but last changed before the baseline minus the
    lookback is history seen late, unless the view before showed every failed job
    (`previous.failures_known`). `failures_known`: this poll's view showed every failed job.
    """
    # The API gives no order and pages can shift under us; a job seen twice counts once.
    jobs = {job.id: job for job in current}
    if retention is not None:
        horizon = now - retention
        if previous is not None:
            previous = prune(previous, horizon)
        # Only jobs we do not hold need the check: the snapshot never holds expired ones.
        known = previous.jobs if previous is not None else {}
        jobs = {k: j for k, j in jobs.items() if k in known or not expired(j, horizon)}

    if previous is None:
        # First sight of a promotion: its history is the baseline, not news, except failures
        # inside the lookback (a new pod must not swallow what failed while none watched).
        # Jobs already stuck are marked silently so the next poll does not announce them.
        counts = Counter(job.status for job in jobs.values())
        stuck = frozenset(j.id for j in jobs.values() if is_stuck(j, now, stuck_after))
        changes = [Change(ChangeKind.BASELINE, promotion_id, counts=dict(counts))]
        if lookback > 0:
            # (an unknown age is history: a fresh baseline must not page old failures again)
            changes.extend(
                Change(ChangeKind.DISCOVERED, promotion_id, job, during_baseline=True)
                for job in jobs.values()
                if job.status == FAILED
                and job.status_since is not None
                and recent(job, now - lookback)
            )
        seen = first_seen(None, jobs, now)
        baseline = PromotionSnapshot(promotion_id, jobs, stuck, now, seen, failures_known)
        return Diff(changes, baseline)

    changes = []
    seen = first_seen(previous, jobs, now)
    before = previous.jobs
    # Before this, a job we had never seen is old news that the listing hid until now.
    news_since = None if previous.baseline_at is None else previous.baseline_at - lookback
    for job in jobs.values():
        old = before.get(job.id)
        if old is None:
            late = news_since is not None and not recent(job, news_since)
            if job.status == FAILED and previous.failures_known:
                late = False  # (not failed, or not there, when every failure was in view)
            changes.append(Change(ChangeKind.DISCOVERED, promotion_id, job, late=late))
        elif old.status != job.status:
            changes.append(Change(ChangeKind.STATUS_CHANGED, promotion_id, job, old))
        elif old is not job and old != job:
            changes.append(Change(ChangeKind.UPDATED, promotion_id, job, old))
    changes.extend(
        Change(ChangeKind.VANISHED, promotion_id, old)
        for job_id, old in before.items()
        if job_id not in jobs
    )
    # The status test first: almost every job is finished, and that settles it cheaply.
    changes.extend(
        Change(ChangeKind.STUCK, promotion_id, job)
        for job in jobs.values()
        if job.status in ACTIVE_STATUSES
        and job.id not in previous.stuck
        and is_stuck(job, now, stuck_after, seen.get(job.id))
    )
    if not changes and seen == previous.seen and failures_known == previous.failures_known:
        return Diff(changes, previous)
    after = apply(previous, changes) if changes else previous
    return Diff(changes, replace(after, seen=seen, failures_known=failures_known))


def apply(previous: PromotionSnapshot, changes: Iterable[Change]) -> PromotionSnapshot:
    """Replay changes onto a snapshot; `apply(a, diff(a, b).changes)` is the snapshot of b."""
    jobs = dict(previous.jobs)
    stuck = set(previous.stuck)
    for change in changes:
        job = change.job
        if job is None:
            continue
        if change.kind is ChangeKind.VANISHED:
            jobs.pop(job.id, None)
        elif change.kind is ChangeKind.STUCK:
            stuck.add(job.id)
        else:
            jobs[job.id] = job
    # A job leaves the stuck set once it is no longer active, so a later stall is news again.
    kept = frozenset(job_id for job_id in stuck if job_id in jobs and jobs[job_id].is_active)
    return PromotionSnapshot(previous.promotion_id, jobs, kept, previous.baseline_at)
