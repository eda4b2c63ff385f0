"""The diff rules, as one table, plus properties that must hold for any pair of polls."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.diff import apply, diff
from monitor.models import ChangeKind, Job, PromotionSnapshot

PID = "ad386702-e780-42c6-b190-0527ad768917"
NOW = 1_700_000_000.0
STUCK_AFTER = 3600.0


def job(
    job_id: str,
    status: str,
    *,
    error: str | None = None,
    job_type: str = "code_generate",
    since: float | None = NOW - 60,
) -> Job:
    return Job(job_id, job_type, status, error, created_at=since, updated_at=since)


def snap(*jobs: Job, stuck: frozenset[str] = frozenset()) -> PromotionSnapshot:
    return PromotionSnapshot(PID, {j.id: j for j in jobs}, stuck)


@dataclass(frozen=True)
class Case:
    name: str
    previous: PromotionSnapshot | None
    current: tuple[Job, ...]
    # (event, job id, previous status, status, counted as a failure)
    expected: tuple[tuple[str, str | None, str | None, str | None, bool], ...]


OLD = NOW - 2 * STUCK_AFTER

CASES = [
    Case(
        "first poll is a baseline: no per-job events, no failure counted",
        None,
        (job("a", "failed", error="codes limit exceeded"), job("b", "completed")),
        (("baseline_loaded", None, None, None, False),),
    ),
    Case(
        "empty first poll is still a baseline",
        None,
        (),
        (("baseline_loaded", None, None, None, False),),
    ),
    Case("nothing changed", snap(job("a", "pending")), (job("a", "pending"),), ()),
    Case(
        "a new job",
        snap(job("a", "completed")),
        (job("a", "completed"), job("b", "pending")),
        (("job_discovered", "b", None, "pending", False),),
    ),
    Case(
        "a new job that is already failed is a failure",
        snap(),
        (job("b", "failed", error="codes limit exceeded"),),
        (("job_discovered", "b", None, "failed", True),),
    ),
    Case(
        "a transition",
        snap(job("a", "pending")),
        (job("a", "processing"),),
        (("job_status_changed", "a", "pending", "processing", False),),
    ),
    Case(
        "a transition into failed is a failure",
        snap(job("a", "processing")),
        (job("a", "failed", error="codes limit exceeded"),),
        (("job_status_changed", "a", "processing", "failed", True),),
    ),
    Case(
        "a failed job that stays failed is not counted again",
        snap(job("a", "failed", error="x")),
        (job("a", "failed", error="x"),),
        (),
    ),
    Case(
        "error text appearing later is an update, not a second failure",
        snap(job("a", "failed")),
        (job("a", "failed", error="codes limit exceeded"),),
        (("job_updated", "a", "failed", "failed", False),),
    ),
    Case(
        "a job no longer returned has vanished",
        snap(job("a", "completed"), job("b", "failed")),
        (job("a", "completed"),),
        (("job_vanished", "b", None, "failed", False),),
    ),
    Case(
        "an unknown status is kept and reported as it is",
        snap(job("a", "processing")),
        (job("a", "paused_by_ops"),),
        (("job_status_changed", "a", "processing", "paused_by_ops", False),),
    ),
    Case(
        "a job active for longer than stuck_after is stuck, once",
        snap(job("a", "processing", since=OLD)),
        (job("a", "processing", since=OLD),),
        (("job_stuck", "a", None, "processing", False),),
    ),
    Case(
        "a job already reported stuck is not reported again",
        snap(job("a", "pending", since=OLD), stuck=frozenset({"a"})),
        (job("a", "pending", since=OLD),),
        (),
    ),
    Case(
        "terminal jobs are never stuck",
        snap(job("a", "completed", since=OLD)),
        (job("a", "completed", since=OLD),),
        (),
    ),
    Case(
        "a job without timestamps cannot be judged stuck",
        snap(job("a", "pending", since=None)),
        (job("a", "pending", since=None),),
        (),
    ),
    Case(
        "a job listed twice (pages shifted) counts once",
        snap(),
        (job("b", "pending"), job("b", "pending")),
        (("job_discovered", "b", None, "pending", False),),
    ),
    Case(
        "several changes in one poll, in a stable order",
        snap(job("a", "pending"), job("b", "processing"), job("c", "completed")),
        (job("a", "processing"), job("b", "failed", error="e"), job("d", "pending")),
        (
            ("job_status_changed", "a", "pending", "processing", False),
            ("job_status_changed", "b", "processing", "failed", True),
            ("job_discovered", "d", None, "pending", False),
            ("job_vanished", "c", None, "completed", False),
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_diff_table(case: Case) -> None:
    result = diff(case.previous, case.current, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER)
    seen = tuple(
        (
            c.kind.value,
            c.job.id if c.job else None,
            c.previous.status if c.previous else None,
            c.job.status if c.job else None,
            c.is_failure,
        )
        for c in result.changes
    )
    assert seen == case.expected
    assert all(c.promotion_id == PID for c in result.changes)


def test_baseline_counts_jobs_by_status_and_marks_stuck_silently() -> None:
    current = [job("a", "failed"), job("b", "failed"), job("c", "pending", since=OLD)]
    result = diff(None, current, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER)
    (baseline,) = result.changes
    assert baseline.kind is ChangeKind.BASELINE
    assert baseline.counts == {"failed": 2, "pending": 1}
    assert result.snapshot.stuck == {"c"}
    # The next identical poll must be quiet: the stuck job was already known at baseline.
    again = diff(result.snapshot, current, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER)
    assert again.changes == []


def test_unchanged_poll_keeps_the_same_snapshot_object() -> None:
    previous = snap(job("a", "pending"))
    result = diff(previous, [job("a", "pending")], promotion_id=PID, now=NOW, stuck_after=1e9)
    assert result.snapshot is previous


def test_a_job_leaving_active_status_leaves_the_stuck_set() -> None:
    previous = snap(job("a", "processing", since=OLD), stuck=frozenset({"a"}))
    result = diff(previous, [job("a", "completed")], promotion_id=PID, now=NOW, stuck_after=1)
    assert result.snapshot.stuck == frozenset()


def test_reached_terminal_marks_arrivals_only() -> None:
    previous = snap(job("a", "processing"), job("b", "failed"))
    current = [job("a", "completed"), job("b", "failed", error="late text"), job("c", "cancelled")]
    result = diff(previous, current, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER)
    arrivals = {c.job.id for c in result.changes if c.reached_terminal and c.job}
    assert arrivals == {"a", "c"}


# Properties over arbitrary polls: a small id space makes overlaps between polls likely.
statuses = st.sampled_from(
    ["pending", "processing", "completed", "failed", "cancelling", "cancelled", "weird"]
)
jobs_strategy = st.lists(
    st.builds(
        Job,
        id=st.sampled_from([f"job-{i}" for i in range(8)]),
        job_type=st.sampled_from(["code_generate", "code_export"]),
        status=statuses,
        error=st.none() | st.sampled_from(["codes limit exceeded", "timeout"]),
        created_at=st.none() | st.floats(NOW - 3 * STUCK_AFTER, NOW),
        updated_at=st.none() | st.floats(NOW - 3 * STUCK_AFTER, NOW),
    ),
    max_size=10,
)


def _snapshot_of(jobs: list[Job]) -> PromotionSnapshot:
    return diff(None, jobs, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER).snapshot


@given(jobs_strategy)
def test_diff_of_a_snapshot_with_itself_is_empty(jobs: list[Job]) -> None:
    previous = _snapshot_of(jobs)
    result = diff(
        previous,
        list(previous.jobs.values()),
        promotion_id=PID,
        now=NOW,
        stuck_after=STUCK_AFTER,
    )
    assert result.changes == []


@given(jobs_strategy, jobs_strategy)
def test_applying_the_changes_of_a_diff_gives_the_new_poll(a: list[Job], b: list[Job]) -> None:
    previous = _snapshot_of(a)
    result = diff(previous, b, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER)
    replayed = apply(previous, result.changes)
    expected = {j.id: j for j in b}
    assert dict(replayed.jobs) == expected
    assert replayed == result.snapshot


@given(jobs_strategy, jobs_strategy, st.sampled_from([0.0, 900.0, 86_400.0]))
def test_every_failure_is_a_job_now_failed_that_was_not_failed_before(
    a: list[Job], b: list[Job], lookback: float
) -> None:
    baseline_at = NOW - 3600
    previous = diff(
        None, a, promotion_id=PID, now=baseline_at, stuck_after=STUCK_AFTER, lookback=lookback
    ).snapshot
    result = diff(
        previous, b, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER, lookback=lookback
    )
    failures = {c.job.id for c in result.changes if c.is_failure and c.job}
    # A job listed twice counts as its last listing.
    now_failed = {j.id: j for j in {j.id: j for j in b}.values() if j.status == "failed"}
    before_failed = {j.id for j in previous.jobs.values() if j.status == "failed"}
    # A job never seen before whose failure predates the baseline (minus the lookback) is
    # history the listing showed late; one without timestamps is never silenced.
    late = {
        job_id
        for job_id, j in now_failed.items()
        if job_id not in previous.jobs
        and j.status_since is not None
        and j.status_since < baseline_at - lookback
    }
    assert failures == now_failed.keys() - before_failed - late


@given(jobs_strategy, st.sampled_from([0.0, 900.0, 86_400.0]))
def test_a_baseline_reports_exactly_the_failures_inside_the_lookback(
    jobs: list[Job], lookback: float
) -> None:
    result = diff(None, jobs, promotion_id=PID, now=NOW, stuck_after=STUCK_AFTER, lookback=lookback)
    reported = {c.job.id for c in result.changes if c.is_failure and c.job}
    assert all(c.during_baseline for c in result.changes if c.is_failure)
    latest = {j.id: j for j in jobs}.values()
    expected = {
        j.id
        for j in latest
        if lookback > 0
        and j.status == "failed"
        # (an unknown age is history at a baseline: never a page)
        and (j.status_since is not None and j.status_since >= NOW - lookback)
    }
    assert reported == expected
    assert result.snapshot.baseline_at == NOW


def test_lookback_table() -> None:
    """A new pod's first poll: what failed while no monitor ran is news, older failures are not."""
    current = [
        job("failed-5-min-ago", "failed", error="codes limit exceeded", since=NOW - 300),
        job("failed-exactly-at-the-edge", "failed", since=NOW - 900),
        job("failed-an-hour-ago", "failed", since=NOW - 3600),
        job("completed-just-now", "completed", since=NOW - 10),
        job("pending", "pending", since=NOW - 10),
    ]
    result = diff(None, current, promotion_id=PID, now=NOW, stuck_after=1e9, lookback=900)
    assert [c.kind for c in result.changes] == [
        ChangeKind.BASELINE,
        ChangeKind.DISCOVERED,
        ChangeKind.DISCOVERED,
    ]
    assert [c.job.id for c in result.changes[1:] if c.job] == [
        "failed-5-min-ago",
        "failed-exactly-at-the-edge",
    ]
    assert all(c.is_failure and c.during_baseline for c in result.changes[1:])
    assert result.changes[0].counts == {"failed": 3, "completed": 1, "pending": 1}
    # Turned off, a baseline is silent as before.
    silent = diff(None, current, promotion_id=PID, now=NOW, stuck_after=1e9, lookback=0)
    assert [c.kind for c in silent.changes] == [ChangeKind.BASELINE]


def test_a_failure_of_unknown_age_at_a_baseline_is_history() -> None:
    # No timestamps (or ones that say nothing): a fresh baseline must not page old failures.
    current = [job("unknown", "failed", since=None), job("recent", "failed", since=NOW - 60)]
    result = diff(None, current, promotion_id=PID, now=NOW, stuck_after=1e9, lookback=900)
    assert [c.job.id for c in result.changes if c.is_failure and c.job] == ["recent"]


def test_a_job_of_unknown_age_is_stuck_after_stuck_after_from_when_it_was_first_seen() -> None:
    later = NOW + 600
    moved = later + STUCK_AFTER - 100
    polls = [
        # (poll time, jobs: id and status, all of unknown age, the jobs reported stuck)
        (NOW, [("old", "pending")], []),  # the baseline
        # Not stuck at first sight (after the baseline too).
        (later, [("old", "pending"), ("new", "pending"), ("moving", "pending")], []),
        (NOW + STUCK_AFTER + 1, [("old", "pending"), ("new", "pending")], ["old"]),
        # A new status starts the count again.
        (moved, [("new", "pending"), ("moving", "processing")], []),
        (later + STUCK_AFTER + 1, [("new", "pending"), ("moving", "processing")], ["new"]),
        (moved + STUCK_AFTER + 1, [("new", "pending"), ("moving", "processing")], ["moving"]),
    ]
    snapshot = None
    for at, jobs, expected in polls:
        current = [job(job_id, status, since=None) for job_id, status in jobs]
        result = diff(snapshot, current, promotion_id=PID, now=at, stuck_after=STUCK_AFTER)
        stuck = [c.job.id for c in result.changes if c.kind is ChangeKind.STUCK and c.job]
        assert stuck == expected, at - NOW
        snapshot = result.snapshot


def test_a_job_seen_late_is_history_unless_it_changed_after_the_baseline() -> None:
    """An unordered listing hid these jobs at the baseline; they show up an hour later."""
    baseline_at = NOW - 3600
    previous = PromotionSnapshot(PID, {"seen": job("seen", "completed")}, baseline_at=baseline_at)
    current = [
        job("seen", "completed"),
        job("failed-before-baseline", "failed", since=baseline_at - 2000),
        job("failed-in-lookback", "failed", since=baseline_at - 600),
        job("failed-after-baseline", "failed", since=baseline_at + 60),
        job("no-timestamps", "failed", since=None),
    ]
    result = diff(previous, current, promotion_id=PID, now=NOW, stuck_after=1e9, lookback=900)
    by_id = {c.job.id: c for c in result.changes if c.job}
    assert by_id["failed-before-baseline"].late
    assert not by_id["failed-before-baseline"].is_failure
    assert not by_id["failed-before-baseline"].reached_terminal
    assert {pid for pid, c in by_id.items() if c.is_failure} == {
        "failed-in-lookback",
        "failed-after-baseline",
        "no-timestamps",
    }
    # Seen late or not, every job is now in the snapshot: it is never announced again.
    assert set(result.snapshot.jobs) == {j.id for j in current}
    again = diff(result.snapshot, current, promotion_id=PID, now=NOW, stuck_after=1e9, lookback=900)
    assert again.changes == []


def test_state_without_a_baseline_time_treats_every_new_job_as_news() -> None:
    # (state files written before baseline_at was kept)
    previous = PromotionSnapshot(PID, {})
    current = [job("old", "failed", since=NOW - 30 * DAY)]
    result = diff(previous, current, promotion_id=PID, now=NOW, stuck_after=1e9, lookback=900)
    assert [c.is_failure for c in result.changes] == [True]


DAY = 86_400.0


def test_retention_drops_old_finished_jobs_silently_from_both_sides() -> None:
    old = NOW - 10 * DAY
    previous = snap(
        job("old-done", "completed", since=old),
        job("old-failed", "failed", since=old),
        job("old-but-active", "pending", since=old),
        job("recent", "completed"),
    )
    # The API still returns the old jobs: they must neither vanish nor come back as new.
    current = [
        job("old-done", "completed", since=old),
        job("old-but-active", "pending", since=old),
        job("recent", "completed"),
        job("older-new", "failed", since=old),
    ]
    result = diff(previous, current, promotion_id=PID, now=NOW, stuck_after=1e9, retention=7 * DAY)
    assert result.changes == []
    assert set(result.snapshot.jobs) == {"old-but-active", "recent"}


def test_retention_keeps_the_snapshot_object_when_nothing_expired() -> None:
    previous = snap(job("a", "completed"))
    result = diff(
        previous,
        [job("a", "completed")],
        promotion_id=PID,
        now=NOW,
        stuck_after=1e9,
        retention=7 * DAY,
    )
    assert result.snapshot is previous


def test_a_baseline_leaves_out_expired_history() -> None:
    current = [job("old", "failed", since=NOW - 30 * DAY), job("new", "failed")]
    result = diff(None, current, promotion_id=PID, now=NOW, stuck_after=1e9, retention=7 * DAY)
    assert set(result.snapshot.jobs) == {"new"}
    assert result.changes[0].counts == {"failed": 1}


@pytest.mark.parametrize(("known", "news"), [(True, True), (False, False)])
def test_a_failure_first_seen_after_a_view_of_every_failure_is_news_whatever_its_age(
    known: bool, news: bool
) -> None:
    # Its timestamps say it failed long before the baseline; only whether the view before showed
    # every failed job tells whether it could have been there, failed, unseen.
    before = PromotionSnapshot("p", {}, baseline_at=10_000.0, failures_known=known)
    old_failure = Job("j", "code_generate", "failed", "codes limit exceeded", 100.0, 100.0)

    found = diff(before, [old_failure], promotion_id="p", now=10_060.0, stuck_after=3600)

    (change,) = found.changes
    assert change.kind is ChangeKind.DISCOVERED
    assert change.is_failure is news


def test_pruning_expired_history_keeps_the_view_of_every_failure() -> None:
    # The same poll prunes a finished job past retention: the failure first seen is news all the
    # same (the pruned snapshot once forgot that the view before showed every failed job).
    finished = Job("done", "code_export", "completed", None, DAY, DAY)
    before = PromotionSnapshot("p", {"done": finished}, baseline_at=10 * DAY, failures_known=True)
    old_failure = Job("j", "code_generate", "failed", "codes limit exceeded", 5 * DAY, 5 * DAY)

    found = diff(
        before,
        [old_failure],
        promotion_id="p",
        now=10 * DAY + 60,
        stuck_after=3600,
        retention=7 * DAY,
    )

    (change,) = found.changes
    assert change.kind is ChangeKind.DISCOVERED
    assert change.is_failure
