"""MonitorMetrics on a fresh registry, fed real diffs and snapshots, judged by its exposition."""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import replace
from itertools import product

import pytest
from prometheus_client import CollectorRegistry

from monitor.diff import diff
from monitor.models import MAX_ERROR_CHARS, Change, ChangeKind, Job, PromotionSnapshot
from monitor.sinks.error_kinds import ErrorKinds, normalize_error
from monitor.sinks.metrics import MonitorMetrics
from tests.support import (
    FakeClock,
    Sample,
    parse_metrics,
    promtool_check_metrics,
    require_tool,
    series,
    value,
)

PID = "ad386702-e780-42c6-b190-0527ad768917"
OTHER_PID = "5f0c2a8e-93d1-4b7a-a6e4-1c2d3e4f5a6b"
NOW = 1_700_000_000.0
STUCK_AFTER = 300.0
VERSION = "9.8.7"


class Snapshots:
    """What the app's store would hand the collector; a test swaps snapshots in and out."""

    def __init__(self, *snapshots: PromotionSnapshot) -> None:
        self.current = list(snapshots)

    def __call__(self) -> list[PromotionSnapshot]:
        return list(self.current)


def build(snapshots: Snapshots | None = None, clock: FakeClock | None = None) -> MonitorMetrics:
    return MonitorMetrics(
        CollectorRegistry(),
        version=VERSION,
        snapshots=snapshots or Snapshots(),
        clock=clock or FakeClock(NOW),
        stuck_after=STUCK_AFTER,
    )


def scrape(metrics: MonitorMetrics) -> dict[Sample, float]:
    """What /metrics serves, as prometheus_client's parser reads it."""
    return parse_metrics(metrics.exposition.render("")[0].decode())


def job(
    job_id: str,
    status: str,
    *,
    job_type: str = "code_generate",
    error: str | None = None,
    created: float = NOW - 600,
    updated: float | None = NOW - 60,
) -> Job:
    return Job(job_id, job_type, status, error, created_at=created, updated_at=updated)


def snapshot(pid: str, jobs: Iterable[Job]) -> PromotionSnapshot:
    return PromotionSnapshot(pid, {j.id: j for j in jobs})


def poll(
    previous: PromotionSnapshot | None, *jobs: Job, pid: str = PID
) -> tuple[list[Change], PromotionSnapshot]:
    """The changes one poll seeing `jobs` would record, and the snapshot after it.

    A baseline is dated an hour before NOW, so that the jobs of later polls are news.
    """
    result = diff(previous, jobs, promotion_id=pid, now=NOW, stuck_after=STUCK_AFTER)
    if previous is None:
        return list(result.changes), replace(result.snapshot, baseline_at=NOW - 3600)
    return list(result.changes), result.snapshot


def labelled(samples: dict[Sample, float], name: str) -> list[dict[str, str]]:
    return [dict(labels) for labels in series(samples, name)]


# normalize_error and ErrorKinds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("database timeout after 30s", "database timeout after <n>s"),
        ("codes limit exceeded", "codes limit exceeded"),
        (
            "code generation aborted after 12 of 5000 codes: duplicate code collision",
            "code generation aborted after <n> of <n> codes: duplicate code collision",
        ),
        ("retry in 2.5 seconds", "retry in <n> seconds"),
        (
            "export failed: storage unavailable (request id 9f86d081884c7d65)",
            "export failed: storage unavailable (request id <id>)",
        ),
        ("request-id=4f2a9c1e rejected", "request-id=<id> rejected"),
        ("job 0b9f6c1e-2d4a-4e6b-9c8d-7a6b5c4d3e2f failed", "job <id> failed"),
        ("job 0B9F6C1E-2D4A-4E6B-9C8D-7A6B5C4D3E2F failed", "job <id> failed"),
        # English words made only of hex letters are text, not ids.
        ("cannot deface a decade old facade", "cannot deface a decade old facade"),
        ("  codes \t limit\n\n exceeded  ", "codes limit exceeded"),
        ("", "unknown"),
        (" \n\t ", "unknown"),
    ],
)
def test_normalize_error(text: str, expected: str) -> None:
    assert normalize_error(text) == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            "job 0b9f6c1e-2d4a-4e6b-9c8d-7a6b5c4d3e2f failed (request id 9f86d081884c7d65)",
            "job 7c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f failed (request id 2c26b46b68ffc68f)",
        ),
        (
            "Promotion code generation failed: database timeout after 30s",
            "Promotion code generation failed: database timeout after 90s",
        ),
        ("upload of 100 codes timed out after 45s", "upload of 10000 codes timed out after 60s"),
    ],
)
def test_normalize_error_is_one_kind_whatever_ids_and_numbers_it_mentions(
    first: str, second: str
) -> None:
    assert first != second
    assert normalize_error(first) == normalize_error(second)


def test_normalize_error_masks_large_numbers_like_small_ones() -> None:
    # Six digits or more once looked like a hex id: 250000 became <id> while 5000 became <n>.
    small = "upload of 5000 codes timed out after 30s"
    large = "upload of 250000 codes timed out after 30s"
    expected = "upload of <n> codes timed out after <n>s"
    assert normalize_error(large) == normalize_error(small) == expected


def test_normalize_error_keeps_label_values_bounded() -> None:
    normalized = normalize_error("codes limit exceeded " * 100)
    assert normalized.startswith("codes limit exceeded codes limit exceeded")
    assert len(normalized) <= MAX_ERROR_CHARS


def distinct_kinds(count: int) -> list[str]:
    # Letters outside a-f, so nothing in them is masked and every text is its own kind.
    words = ("".join(pair) for pair in product(string.ascii_lowercase[6:], repeat=2))
    return [f"failure {word}" for word, _ in zip(words, range(count), strict=False)]


def test_error_kinds_cap_at_50_then_other_but_known_kinds_stay() -> None:
    kinds = ErrorKinds()
    texts = distinct_kinds(51)
    assert [kinds.label(text) for text in texts[:50]] == texts[:50]
    assert kinds.label(texts[50]) == "other"
    assert kinds.label("yet another new failure") == "other"
    # Kinds seen before the cap keep their own label, however their ids and numbers differ.
    assert kinds.label(texts[0]) == texts[0]
    assert kinds.label(f"  {texts[7]}  ") == texts[7]


def test_error_kinds_count_masked_variants_once() -> None:
    kinds = ErrorKinds(cap=2)
    assert kinds.label("timeout after 30s") == "timeout after <n>s"
    assert kinds.label("timeout after 45s") == "timeout after <n>s"
    assert kinds.label(None) == "unknown"
    # Two kinds so far (the masked timeout and the missing text): the cap is reached.
    assert kinds.label("disk full") == "other"


def test_errors_counter_folds_kinds_past_the_cap_into_other() -> None:
    metrics = build()
    _, base = poll(None)
    texts = distinct_kinds(55)
    changes, _ = poll(base, *(job(f"j{i}", "failed", error=text) for i, text in enumerate(texts)))
    metrics.record(changes)
    samples = scrape(metrics)
    errors = {
        dict(labels)["error"]: v
        for labels, v in series(samples, "epcc_promotion_job_errors_total").items()
    }
    assert errors == {**dict.fromkeys(texts[:50], 1.0), "other": 5.0}
    assert (
        value(
            samples, "epcc_promotion_job_failures_total", promotion_id=PID, job_type="code_generate"
        )
        == 55
    )


# counters fed from real diffs


def test_watch_presets_failures_to_zero_for_both_job_types() -> None:
    metrics = build()
    assert series(scrape(metrics), "epcc_promotion_job_failures_total") == {}
    metrics.watch(PID)
    samples = scrape(metrics)
    assert series(samples, "epcc_promotion_job_failures_total") == {
        frozenset({("promotion_id", PID), ("job_type", job_type)}): 0.0
        for job_type in ("code_generate", "code_export")
    }


def test_baseline_counts_nothing() -> None:
    metrics = build()
    metrics.watch(PID)
    changes, _ = poll(
        None,
        job("a", "failed", error="codes limit exceeded"),
        job("b", "completed"),
        job("c", "processing"),
    )
    assert [c.kind for c in changes] == [ChangeKind.BASELINE]
    metrics.record(changes)
    samples = scrape(metrics)
    assert series(samples, "epcc_promotion_job_failures_total") == {
        frozenset({("promotion_id", PID), ("job_type", job_type)}): 0.0
        for job_type in ("code_generate", "code_export")
    }
    assert series(samples, "epcc_promotion_job_errors_total") == {}
    assert series(samples, "epcc_promotion_job_transitions_total") == {}
    assert series(samples, "epcc_promotion_job_duration_seconds_count") == {}


def test_new_failed_job_after_baseline_is_a_failure() -> None:
    metrics = build()
    metrics.watch(PID)
    baseline_changes, base = poll(None, job("a", "completed"))
    metrics.record(baseline_changes)
    failed = job(
        "b", "failed", job_type="code_export", error="database timeout after 30s", created=NOW - 90
    )
    changes, _ = poll(base, job("a", "completed"), failed)
    metrics.record(changes)

    samples = scrape(metrics)
    assert (
        value(
            samples, "epcc_promotion_job_failures_total", promotion_id=PID, job_type="code_export"
        )
        == 1
    )
    assert (
        value(
            samples, "epcc_promotion_job_failures_total", promotion_id=PID, job_type="code_generate"
        )
        == 0
    )
    assert series(samples, "epcc_promotion_job_errors_total") == {
        frozenset(
            {
                ("promotion_id", PID),
                ("job_type", "code_export"),
                ("error", "database timeout after <n>s"),
            }
        ): 1.0
    }
    assert series(samples, "epcc_promotion_job_transitions_total") == {
        frozenset(
            {
                ("promotion_id", PID),
                ("job_type", "code_export"),
                ("from_status", "new"),
                ("to_status", "failed"),
            }
        ): 1.0
    }


def test_last_failure_timestamp_is_the_clock_when_a_failure_is_reported() -> None:
    clock = FakeClock(NOW)
    metrics = build(clock=clock)
    metrics.watch(PID)
    name = "epcc_promotion_job_last_failure_timestamp_seconds"
    # A job already failed at baseline is history, not a report: no timestamp, not even 0.
    changes, base = poll(
        None, job("a", "failed", error="codes limit exceeded"), job("b", "processing")
    )
    metrics.record(changes)
    assert series(scrape(metrics), name) == {}

    clock.now = NOW + 30
    changes, base = poll(
        base, job("a", "failed", error="codes limit exceeded"), job("b", "failed", error="timeout")
    )
    metrics.record(changes)
    assert series(scrape(metrics), name) == {
        frozenset({("promotion_id", PID), ("job_type", "code_generate")}): NOW + 30
    }

    # A later failure of the same type moves it; the job type that never failed stays absent.
    clock.now = NOW + 600
    new = job("c", "failed", error="timeout", created=NOW + 500, updated=NOW + 590)
    changes, _ = poll(
        base,
        job("a", "failed", error="codes limit exceeded"),
        job("b", "failed", error="timeout"),
        new,
    )
    metrics.record(changes)
    assert series(scrape(metrics), name) == {
        frozenset({("promotion_id", PID), ("job_type", "code_generate")}): NOW + 600
    }


def test_processing_to_failed_is_one_transition_and_one_failure() -> None:
    metrics = build()
    metrics.watch(PID)
    _, base = poll(None, job("a", "processing", updated=NOW - 120))
    changes, _ = poll(base, job("a", "failed", error="codes limit exceeded"))
    metrics.record(changes)
    samples = scrape(metrics)
    assert labelled(samples, "epcc_promotion_job_transitions_total") == [
        {
            "promotion_id": PID,
            "job_type": "code_generate",
            "from_status": "processing",
            "to_status": "failed",
        }
    ]
    assert (
        value(
            samples, "epcc_promotion_job_failures_total", promotion_id=PID, job_type="code_generate"
        )
        == 1
    )
    assert (
        value(
            samples,
            "epcc_promotion_job_errors_total",
            promotion_id=PID,
            job_type="code_generate",
            error="codes limit exceeded",
        )
        == 1
    )


def test_a_job_already_failed_staying_failed_counts_nothing() -> None:
    metrics = build()
    metrics.watch(PID)
    changes, base = poll(None, job("a", "failed", error="codes limit exceeded"))
    metrics.record(changes)
    # Same job, still failed, with a newer timestamp and a reworded error: an UPDATED change.
    later = job("a", "failed", error="codes limit exceeded (retried)", updated=NOW - 5)
    changes, _ = poll(base, later)
    assert [c.kind for c in changes] == [ChangeKind.UPDATED]
    metrics.record(changes)
    samples = scrape(metrics)
    assert set(series(samples, "epcc_promotion_job_failures_total").values()) == {0.0}
    assert series(samples, "epcc_promotion_job_errors_total") == {}
    assert series(samples, "epcc_promotion_job_transitions_total") == {}
    assert series(samples, "epcc_promotion_job_duration_seconds_count") == {}


def test_duration_is_observed_once_when_a_job_reaches_a_terminal_status() -> None:
    metrics = build()
    created = NOW - 1000
    _, snap = poll(None, job("a", "pending", created=created, updated=created))
    steps = [
        job("a", "processing", created=created, updated=NOW - 900),
        job("a", "completed", created=created, updated=NOW - 700),
        # Terminal and touched again: an UPDATED change, which must not observe a second time.
        job("a", "completed", created=created, updated=NOW - 10),
    ]
    kinds = []
    for step in steps:
        changes, snap = poll(snap, step)
        kinds.append([c.kind for c in changes])
        metrics.record(changes)
    assert kinds == [[ChangeKind.STATUS_CHANGED], [ChangeKind.STATUS_CHANGED], [ChangeKind.UPDATED]]

    samples = scrape(metrics)
    completed = {"job_type": "code_generate", "status": "completed"}
    assert value(samples, "epcc_promotion_job_duration_seconds_count", **completed) == 1
    # created_at → updated_at of the poll that saw it complete: (NOW - 700) - (NOW - 1000).
    assert value(samples, "epcc_promotion_job_duration_seconds_sum", **completed) == 300
    assert labelled(samples, "epcc_promotion_job_duration_seconds_count") == [completed]
    transitions = {
        (labels["from_status"], labels["to_status"])
        for labels in labelled(samples, "epcc_promotion_job_transitions_total")
    }
    assert transitions == {("pending", "processing"), ("processing", "completed")}


def test_duration_of_a_failure_is_created_to_updated() -> None:
    metrics = build()
    _, base = poll(None, job("a", "processing", created=NOW - 5000, updated=NOW - 4000))
    changes, _ = poll(base, job("a", "failed", created=NOW - 5000, updated=NOW - 1234.5))
    metrics.record(changes)
    samples = scrape(metrics)
    failed = {"job_type": "code_generate", "status": "failed"}
    assert value(samples, "epcc_promotion_job_duration_seconds_count", **failed) == 1
    assert value(samples, "epcc_promotion_job_duration_seconds_sum", **failed) == 5000 - 1234.5


# gauges rendered from snapshots at scrape time


def test_job_counts_per_promotion_type_and_status() -> None:
    jobs = [
        *(job(f"g{i}", "completed") for i in range(3)),
        *(job(f"x{i}", "failed", job_type="code_export", error="export failed") for i in range(2)),
        job("p", "processing"),
        job("q", "pending", job_type="code_export"),
    ]
    other = [job("o1", "completed", job_type="code_export"), job("o2", "cancelled")]
    snapshots = Snapshots(snapshot(PID, jobs), snapshot(OTHER_PID, other))
    metrics = build(snapshots)

    def key(pid: str, job_type: str, status: str) -> frozenset[tuple[str, str]]:
        return frozenset({("promotion_id", pid), ("job_type", job_type), ("status", status)})

    assert series(scrape(metrics), "epcc_promotion_jobs") == {
        key(PID, "code_generate", "completed"): 3.0,
        key(PID, "code_export", "failed"): 2.0,
        key(PID, "code_generate", "processing"): 1.0,
        key(PID, "code_export", "pending"): 1.0,
        key(OTHER_PID, "code_export", "completed"): 1.0,
        key(OTHER_PID, "code_generate", "cancelled"): 1.0,
    }

    # A new snapshot without the pending export and with one more completed job.
    snapshots.current[0] = snapshot(PID, [*jobs[:-1], job("g9", "completed")])
    samples = scrape(metrics)
    assert (
        value(
            samples,
            "epcc_promotion_jobs",
            promotion_id=PID,
            job_type="code_export",
            status="pending",
        )
        is None
    )
    assert (
        value(
            samples,
            "epcc_promotion_jobs",
            promotion_id=PID,
            job_type="code_generate",
            status="completed",
        )
        == 4
    )

    # A promotion no longer in the store leaves /metrics entirely.
    del snapshots.current[1]
    samples = scrape(metrics)
    assert {labels["promotion_id"] for labels in labelled(samples, "epcc_promotion_jobs")} == {PID}


def test_a_removed_failed_job_leaves_every_gauge() -> None:
    doomed = job("x", "failed", job_type="code_export", error="export failed")
    kept = job("a", "completed")
    snapshots = Snapshots(snapshot(PID, [kept, doomed]))
    metrics = build(snapshots)
    samples = scrape(metrics)
    assert [labels["job_id"] for labels in labelled(samples, "epcc_promotion_job_failed_info")] == [
        "x"
    ]
    snapshots.current = [snapshot(PID, [kept])]
    samples = scrape(metrics)
    assert series(samples, "epcc_promotion_job_failed_info") == {}
    assert labelled(samples, "epcc_promotion_jobs") == [
        {"promotion_id": PID, "job_type": "code_generate", "status": "completed"}
    ]


def test_stuck_counts_only_active_jobs_older_than_stuck_after() -> None:
    jobs = [
        job("pending-old", "pending", created=NOW - 1000, updated=None),
        job("processing", "processing", updated=NOW - 100),
        job("cancelling", "cancelling", updated=NOW - 10),
        # Old but finished: never stuck.
        job("done", "completed", updated=NOW - 10_000),
        job("failed", "failed", updated=NOW - 10_000, error="codes limit exceeded"),
    ]
    clock = FakeClock(NOW)
    metrics = build(Snapshots(snapshot(PID, jobs)), clock)

    def stuck() -> dict[str, float]:
        return {
            dict(labels)["status"]: v
            for labels, v in series(scrape(metrics), "epcc_promotion_jobs_stuck").items()
        }

    assert stuck() == {"pending": 1.0}
    # 250 s later the processing job has sat 350 s (> 300) in its status; cancelling only 260 s.
    clock.now = NOW + 250
    assert stuck() == {"pending": 1.0, "processing": 1.0}
    clock.now = NOW + 400
    assert stuck() == {"pending": 1.0, "processing": 1.0, "cancelling": 1.0}


def test_failed_info_is_the_20_most_recently_updated_failures_per_promotion() -> None:
    # 25 failures updated one minute apart, listed oldest-first and newest-first alternately
    # so no input order can stand in for the ordering by time.
    failures = [
        job(
            f"f{i:02}",
            "failed",
            job_type="code_export" if i % 2 else "code_generate",
            error=f"export failed: storage unavailable (request id {i:016x})",
            updated=NOW - 60 * i,
        )
        for i in range(25)
    ]
    shuffled = failures[::2] + failures[1::2][::-1]
    other = [job("o1", "failed", error="codes limit exceeded"), job("o2", "failed", error=None)]
    metrics = build(Snapshots(snapshot(PID, shuffled), snapshot(OTHER_PID, other)))

    info = labelled(scrape(metrics), "epcc_promotion_job_failed_info")
    mine = [labels for labels in info if labels["promotion_id"] == PID]
    newest = sorted(failures, key=lambda j: j.updated_at or 0.0, reverse=True)[:20]
    assert len(mine) == 20
    assert {labels["job_id"] for labels in mine} == {j.id for j in newest}
    by_id = {j.id: j for j in failures}
    for labels in mine:
        assert labels["error"] == by_id[labels["job_id"]].error
        assert labels["job_type"] == by_id[labels["job_id"]].job_type
    theirs = [labels for labels in info if labels["promotion_id"] == OTHER_PID]
    assert sorted(labels["job_id"] for labels in theirs) == ["o1", "o2"]
    assert all("error" in labels for labels in theirs)


# forget, poll health, build info


def test_forget_removes_every_series_of_the_promotion_only() -> None:
    metrics = build()
    for pid in (PID, OTHER_PID):
        metrics.watch(pid)
        _, base = poll(None, job("a", "processing"), pid=pid)
        changes, _ = poll(base, job("a", "failed", error="codes limit exceeded"), pid=pid)
        metrics.record(changes)
        metrics.poll_succeeded(pid, NOW)
        metrics.poll_failed(pid, "timeout")
        metrics.jobs_skipped.labels(pid).inc()

    def with_promotion(samples: dict[Sample, float], pid: str) -> dict[str, float]:
        return {name: v for (name, labels), v in samples.items() if ("promotion_id", pid) in labels}

    before = scrape(metrics)
    families = {
        "epcc_promotion_job_failures_total",
        "epcc_promotion_job_errors_total",
        "epcc_promotion_job_transitions_total",
        "epcc_promotion_job_last_failure_timestamp_seconds",
        "epcc_monitor_up",
        "epcc_monitor_last_success_timestamp_seconds",
        "epcc_monitor_poll_errors_total",
        "epcc_monitor_jobs_skipped_total",
    }
    assert families <= with_promotion(before, PID).keys()
    other_before = {k: v for k, v in before.items() if ("promotion_id", OTHER_PID) in k[1]}

    metrics.forget(PID)
    after = scrape(metrics)
    assert with_promotion(after, PID) == {}
    assert {k: v for k, v in after.items() if ("promotion_id", OTHER_PID) in k[1]} == (other_before)
    # Forgetting a promotion that has no series is harmless.
    metrics.forget(PID)
    assert scrape(metrics) == after


def test_poll_outcomes_set_up_and_last_success() -> None:
    metrics = build()
    metrics.poll_succeeded(PID, NOW)
    samples = scrape(metrics)
    assert value(samples, "epcc_monitor_up", promotion_id=PID) == 1
    assert value(samples, "epcc_monitor_last_success_timestamp_seconds", promotion_id=PID) == NOW

    metrics.poll_failed(PID, "timeout")
    metrics.poll_failed(PID, "timeout")
    metrics.poll_failed(PID, "not_found")
    samples = scrape(metrics)
    assert value(samples, "epcc_monitor_up", promotion_id=PID) == 0
    # A failure does not pretend to be a success: the timestamp stays at the last good poll.
    assert value(samples, "epcc_monitor_last_success_timestamp_seconds", promotion_id=PID) == NOW
    assert value(samples, "epcc_monitor_poll_errors_total", promotion_id=PID, reason="timeout") == 2
    assert (
        value(samples, "epcc_monitor_poll_errors_total", promotion_id=PID, reason="not_found") == 1
    )

    metrics.poll_succeeded(PID, NOW + 60)
    samples = scrape(metrics)
    assert value(samples, "epcc_monitor_up", promotion_id=PID) == 1
    assert (
        value(samples, "epcc_monitor_last_success_timestamp_seconds", promotion_id=PID) == NOW + 60
    )


def test_build_info_carries_the_version() -> None:
    metrics = build()
    assert series(scrape(metrics), "epcc_monitor_build_info") == {
        frozenset({("version", VERSION)}): 1.0
    }


def test_promtool_accepts_the_exposition_with_every_metric_populated() -> None:
    promtool = require_tool("promtool")
    jobs = [
        job("stuck", "pending", created=NOW - 10_000, updated=None),
        job("done", "completed"),
        job("failed", "failed", job_type="code_export", error='quote " and \\ backslash'),
    ]
    metrics = build(Snapshots(snapshot(PID, jobs)))
    metrics.watch(PID)
    _, base = poll(None, job("a", "processing"))
    changes, _ = poll(base, job("a", "failed", error="database timeout after 30s"))
    metrics.record(changes)
    metrics.poll_succeeded(PID, NOW)
    metrics.poll_failed(PID, "timeout")
    metrics.poll_duration.observe(0.3)
    metrics.api_requests.labels("jobs", "200").inc()
    metrics.retries.labels("jobs", "timeout").inc()
    metrics.budget_wait.inc(0.25)
    metrics.jobs_skipped.labels(PID).inc()
    metrics.schedule_lag.set(0.5)
    metrics.active_promotions.set(1)
    metrics.promotions.labels("promotion").set(1)
    metrics.discovery_errors.labels("timeout").inc()
    text = metrics.exposition.render("")[0].decode()
    samples = parse_metrics(text)
    for name in (
        "epcc_promotion_jobs",
        "epcc_promotion_jobs_stuck",
        "epcc_promotion_job_failed_info",
        "epcc_promotion_job_duration_seconds_count",
        "epcc_monitor_poll_duration_seconds_count",
        "epcc_monitor_api_retries_total",
        "epcc_monitor_budget_wait_seconds_total",
    ):
        assert series(samples, name), name

    # promtool prints one line per problem; nothing at all is the pass.
    assert promtool_check_metrics(promtool, text) == (0, "")


def test_detection_delay_is_first_seen_minus_created_for_jobs_new_since_the_baseline() -> None:
    clock = FakeClock(NOW)
    metrics = build(clock=clock)
    changes, base = poll(None, job("old", "completed", created=NOW - 7200))
    metrics.record(changes)
    assert value(scrape(metrics), "epcc_monitor_detection_delay_seconds_count") == 0
    new = job("new", "pending", created=NOW - 42, updated=None)
    ahead = job("ahead", "pending", created=NOW + 5, updated=None)  # the store's clock runs ahead
    changes, after = poll(base, job("old", "completed", created=NOW - 7200), new, ahead)
    metrics.record(changes)
    # ...and its status change later is no second sighting.
    changes, _ = poll(after, job("old", "completed"), replace(new, status="failed"), ahead)
    metrics.record(changes)
    samples = scrape(metrics)
    assert value(samples, "epcc_monitor_detection_delay_seconds_count") == 2
    assert value(samples, "epcc_monitor_detection_delay_seconds_sum") == pytest.approx(42)
    assert value(samples, "epcc_monitor_detection_delay_seconds_bucket", le="0.5") == 1
    assert value(samples, "epcc_monitor_detection_delay_seconds_bucket", le="30.0") == 1
    assert value(samples, "epcc_monitor_detection_delay_seconds_bucket", le="60.0") == 2
    assert value(samples, "epcc_monitor_detection_delay_seconds_bucket", le="3600.0") == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (Change(ChangeKind.DISCOVERED, PID, job("a", "failed", created=NOW - 10)), 10.0),
        (Change(ChangeKind.DISCOVERED, PID, job("a", "pending", created=NOW + 3)), 0.0),
        (Change(ChangeKind.DISCOVERED, PID, replace(job("a", "failed"), created_at=None)), None),
        (Change(ChangeKind.DISCOVERED, PID, job("a", "failed"), during_baseline=True), None),
        (Change(ChangeKind.DISCOVERED, PID, job("a", "failed"), late=True), None),
        (
            Change(
                ChangeKind.STATUS_CHANGED, PID, job("a", "failed"), previous=job("a", "pending")
            ),
            None,
        ),
        (Change(ChangeKind.BASELINE, PID, counts={"completed": 1}), None),
    ],
)
def test_only_a_job_first_seen_after_the_baseline_has_a_detection_delay(
    change: Change, expected: float | None
) -> None:
    assert change.detection_delay(NOW) == expected
