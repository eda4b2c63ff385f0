"""The status view: ordering, failures, poll errors, the JSON document, escaping and page size.

All pure: snapshots and recent activity are built in the test, the clock is a number.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.models import Change, ChangeKind, Job, PromotionSnapshot
from monitor.poller import PollOutcome
from monitor.recent_activity import FailureReport, RecentActivity
from monitor.report import HINTS
from monitor.status import (
    MonitorFacts,
    QueryError,
    StatusQuery,
    StatusView,
    build_status,
    parse_query,
)
from monitor.status_json import to_json
from monitor.status_page import ago, render_page
from tests.support import FakeClock

# 2026-01-02T03:04:05Z
NOW = 1_767_323_045.0
STUCK_AFTER = 3600.0
HOSTILE = "<script>alert(1)</script>"

P_OK = "00000000-0000-4000-8000-000000000001"
P_ACTIVE = "00000000-0000-4000-8000-000000000002"
P_FAILED = "00000000-0000-4000-8000-000000000003"
P_STUCK = "00000000-0000-4000-8000-000000000004"
P_POLL = "00000000-0000-4000-8000-000000000005"
P_NEW = "00000000-0000-4000-8000-000000000006"

FACTS = MonitorFacts(
    version="9.9.9",
    started_at=NOW - 3600,
    ready=True,
    requests_budget=25.0,
    requests_rate_in_force=12.5,
    requests_per_second=3.456,
    shard_index=1,
    shard_count=3,
)


def snap(pid: str, *jobs: Job) -> PromotionSnapshot:
    return PromotionSnapshot(pid, {job.id: job for job in jobs})


def job(
    job_id: str, status: str, at: float, error: str | None = None, job_type: str = "code_generate"
) -> Job:
    return Job(job_id, job_type, status, error, created_at=at - 60, updated_at=at)


def view_of(
    snapshots: list[PromotionSnapshot],
    activity: RecentActivity,
    watched: dict[str, str] | None = None,
    query: StatusQuery = StatusQuery(),  # noqa: B008 - frozen
    names: dict[str, str] | None = None,
) -> StatusView:
    by_id = {s.promotion_id: s for s in snapshots}
    view = build_status(
        snapshots=by_id,
        watched=watched if watched is not None else dict.fromkeys(by_id, "promotion"),
        activity=activity,
        monitor=FACTS,
        now=NOW,
        stuck_after=STUCK_AFTER,
        query=query,
        names=(names or {}).get,
    )
    assert view is not None
    return view


def test_rows_put_what_needs_attention_first() -> None:
    clock = FakeClock(NOW - 30)
    activity = RecentActivity(clock)
    snapshots = [
        snap(P_OK, job("j1", "completed", NOW - 100)),
        snap(P_ACTIVE, job("j2", "processing", NOW - 100)),
        snap(P_FAILED, job("j3", "failed", NOW - 500, "codes limit exceeded")),
        snap(P_STUCK, job("j4", "pending", NOW - 2 * STUCK_AFTER)),
        snap(P_POLL, job("j5", "completed", NOW - 100)),
    ]
    for pid in (P_OK, P_ACTIVE, P_FAILED, P_STUCK):
        activity.polled(PollOutcome(pid, ok=True))
    activity.polled(PollOutcome(P_POLL, ok=False, reason="http_5xx", detail="HTTP 503"))
    watched = {s.promotion_id: "promotion" for s in snapshots} | {P_NEW: "rule_promotion"}

    view = view_of(snapshots, activity, watched)

    assert [(row.id, row.attention) for row in view.promotions] == [
        (P_POLL, "poll_failing"),
        (P_STUCK, "stuck"),
        (P_FAILED, "failed"),
        (P_NEW, "no_baseline"),
        (P_ACTIVE, "active"),
        (P_OK, "ok"),
    ]
    assert view.attention == {
        "poll_failing": 1,
        "stuck": 1,
        "failed": 1,
        "no_baseline": 1,
        "active": 1,
        "ok": 1,
    }
    stuck = view.promotions[1]
    assert (stuck.stuck, stuck.stuck_since) == (1, NOW - 2 * STUCK_AFTER)
    assert view.promotions[3].kind == "rule_promotion"
    assert view.promotions[3].last_poll is None
    assert to_json(view)["promotions"][3]["last_poll"] == {
        "at": None,
        "ok": None,
        "reason": None,
        "failing_since": None,
        "last_success": None,
        "incomplete": None,
    }
    assert view.last_success == NOW - 30


def test_a_job_of_unknown_age_is_stuck_from_when_the_monitor_first_saw_it() -> None:
    unknown = Job("j", "code_generate", "pending")
    first_seen = NOW - 2 * STUCK_AFTER
    snapshot = PromotionSnapshot(P_STUCK, {"j": unknown}, seen={"j": first_seen})
    activity = RecentActivity(FakeClock(NOW))
    activity.polled(PollOutcome(P_STUCK, ok=True))
    (row,) = view_of([snapshot], activity).promotions
    assert (row.attention, row.stuck, row.stuck_since) == ("stuck", 1, first_seen)


def test_within_a_rank_the_newest_trouble_comes_first() -> None:
    view = view_of(
        [
            snap(P_OK, job("a", "failed", NOW - 9000, "old")),
            snap(P_ACTIVE, job("b", "failed", NOW - 10, "new")),
            snap(P_FAILED, job("c", "failed", NOW - 500, "middle")),
        ],
        RecentActivity(FakeClock(NOW)),
    )
    assert [row.id for row in view.promotions] == [P_ACTIVE, P_FAILED, P_OK]


def test_failures_merge_what_was_seen_with_the_snapshot_newest_first() -> None:
    clock = FakeClock(NOW - 5)
    activity = RecentActivity(clock)
    fresh = job("fresh", "failed", NOW - 20, "database timeout")
    # Seen turning failed while the monitor watched:
    activity.polled(
        PollOutcome(
            P_FAILED,
            ok=True,
            changes=(
                Change(
                    ChangeKind.STATUS_CHANGED,
                    P_FAILED,
                    fresh,
                    previous=job("fresh", "processing", NOW - 200),
                ),
            ),
        )
    )
    # A shortfall reported by whoever detects them (issue #12), for a job that since left:
    activity.report(
        FailureReport(
            P_OK,
            "short",
            "code_generate",
            None,
            NOW - 40,
            NOW - 35,
            "shortfall",
            job_name="Summer codes",
            requested=1000,
            generated=640,
        )
    )
    snapshots = [
        snap(P_FAILED, fresh, job("older", "failed", NOW - 4000, "codes limit exceeded")),
        snap(P_OK, job("ok", "completed", NOW - 50)),
    ]

    view = view_of(snapshots, activity)

    assert [(f.report.job_id, f.report.kind, f.report.seen_at) for f in view.failures] == [
        ("fresh", "failed", NOW - 5),  # once, as seen live (not again from the snapshot)
        ("short", "shortfall", NOW - 35),
        ("older", "failed", None),  # known from the snapshot only: survives a restart
    ]
    shortfall = to_json(view)["failures"][1]
    assert shortfall == {
        "promotion_id": P_OK,
        "promotion_name": None,
        "kind": "shortfall",
        "job_id": "short",
        "job_type": "code_generate",
        "job_name": "Summer codes",
        "error": None,
        "requested": 1000,
        "generated": 640,
        "at": "2026-01-02T03:03:25.000Z",
        "seen_at": "2026-01-02T03:03:30.000Z",
    }
    page = render_page(view, StatusQuery())
    assert "640 of 1000 codes" in page
    assert "Summer codes" in page


def test_the_failure_ring_is_bounded() -> None:
    activity = RecentActivity(FakeClock(NOW), failures=3)
    for n in range(5):
        activity.report(FailureReport(P_OK, f"j{n}", "code_export", "e", NOW - 100 + n))
    assert [f.job_id for f in activity.failures] == ["j2", "j3", "j4"]


def test_poll_errors_say_why_since_when_and_what_to_check() -> None:
    clock = FakeClock(NOW - 300)
    activity = RecentActivity(clock, hints=HINTS.get)
    activity.polled(PollOutcome(P_POLL, ok=True))
    clock.now = NOW - 200
    activity.polled(PollOutcome(P_POLL, ok=False, reason="auth", detail="HTTP 401\nUnable to"))
    clock.now = NOW - 100
    activity.polled(PollOutcome(P_POLL, ok=False, reason="auth", detail="HTTP 403 forbidden"))
    clock.now = NOW - 50
    activity.polled(PollOutcome(P_OK, ok=False, reason="timeout", detail="timed out"))
    clock.now = NOW - 40
    activity.polled(PollOutcome(P_OK, ok=True))
    snapshots = [snap(P_POLL), snap(P_OK)]

    document = to_json(view_of(snapshots, activity))

    assert document["poll_errors"] == [
        {
            "promotion_id": P_OK,
            "promotion_name": None,
            "reason": "timeout",
            "detail": "timed out",
            "hint": None,
            "count": 1,
            "first_at": "2026-01-02T03:03:15.000Z",
            "last_at": "2026-01-02T03:03:15.000Z",
            "still_failing": False,
        },
        {
            "promotion_id": P_POLL,
            "promotion_name": None,
            "reason": "auth",
            "detail": "HTTP 403 forbidden",
            "hint": HINTS["auth"],
            "count": 2,
            "first_at": "2026-01-02T03:00:45.000Z",
            "last_at": "2026-01-02T03:02:25.000Z",
            "still_failing": True,
        },
    ]
    failing = document["promotions"][0]
    assert failing["id"] == P_POLL
    assert failing["last_poll"] == {
        "at": "2026-01-02T03:02:25.000Z",
        "ok": False,
        "reason": "auth",
        "failing_since": "2026-01-02T03:00:45.000Z",  # the first failure, not the latest
        "last_success": "2026-01-02T02:59:05.000Z",
        "incomplete": None,
    }


def test_a_listing_read_in_part_is_said_on_the_page_and_in_the_document() -> None:
    # PromoMonitorListingIncomplete sends the reader here: the row must say why.
    activity = RecentActivity(FakeClock(NOW))
    activity.polled(PollOutcome(P_OK, ok=True, incomplete="offset_ignored"))
    activity.polled(PollOutcome(P_FAILED, ok=True))
    view = view_of([snap(P_OK), snap(P_FAILED)], activity)

    rows = {row["id"]: row for row in to_json(view)["promotions"]}
    assert rows[P_OK]["last_poll"]["incomplete"] == "offset_ignored"
    assert rows[P_FAILED]["last_poll"]["incomplete"] is None
    page = render_page(view, StatusQuery())
    assert page.count("the store ignores page[offset]") == 1

    activity.polled(PollOutcome(P_OK, ok=True))  # read whole again
    assert (
        to_json(view_of([snap(P_OK)], activity))["promotions"][0]["last_poll"]["incomplete"] is None
    )


def test_json_document_has_the_monitor_health_and_a_page_of_promotions() -> None:
    activity = RecentActivity(FakeClock(NOW))
    failed = job("j1", "failed", NOW - 60, "codes limit exceeded")
    snapshots = [snap(P_FAILED, failed, job("j2", "completed", NOW - 90))]
    activity.polled(PollOutcome(P_FAILED, ok=True))

    document = to_json(view_of(snapshots, activity, names={P_FAILED: "Summer sale"}))

    assert document["generated_at"] == "2026-01-02T03:04:05.000Z"
    assert document["monitor"] == {
        "version": "9.9.9",
        "started_at": "2026-01-02T02:04:05.000Z",
        "ready": True,
        "last_successful_poll": "2026-01-02T03:04:05.000Z",
        "requests_per_second": {"used": 3.46, "in_force": 12.5, "budget": 25.0},
        "shard": {"index": 1, "count": 3},
        "promotions": 1,
        "attention": {
            "poll_failing": 0,
            "stuck": 0,
            "failed": 1,
            "no_baseline": 0,
            "active": 0,
            "ok": 0,
        },
        "detection_delay_seconds": {"p50": None, "p99": None, "window_seconds": 3600},
    }
    assert document["page"] == {"number": 1, "per_page": 100, "pages": 1, "promotions": 1}
    assert document["promotions"] == [
        {
            "id": P_FAILED,
            "name": "Summer sale",
            "kind": "promotion",
            "attention": "failed",
            "last_poll": {
                "at": "2026-01-02T03:04:05.000Z",
                "ok": True,
                "reason": None,
                "failing_since": None,
                "last_success": "2026-01-02T03:04:05.000Z",
                "incomplete": None,
            },
            "jobs": {"completed": 1, "failed": 1},
            "stuck": 0,
            "stuck_since": None,
            "last_failure_at": "2026-01-02T03:03:05.000Z",
            "poll_interval_seconds": None,
            "jobs_per_day": None,
        }
    ]
    assert [f["error"] for f in document["failures"]] == ["codes limit exceeded"]
    assert document["failures"][0]["promotion_name"] == "Summer sale"
    assert "jobs" not in document  # only for ?promotion=


def test_one_promotion_shows_all_its_jobs_and_only_its_failures() -> None:
    activity = RecentActivity(FakeClock(NOW))
    many = [job(f"f{n:02}", "failed", NOW - 1000 - n, f"error {n}") for n in range(30)]
    snapshots = [
        snap(P_FAILED, *many, job("run", "pending", NOW - 2 * STUCK_AFTER)),
        snap(P_OK, job("other", "failed", NOW - 5, "not this one")),
    ]

    view = view_of(snapshots, activity, query=StatusQuery(promotion=P_FAILED))
    document = to_json(view)

    assert [row.id for row in view.promotions] == [P_FAILED]
    assert view.total == 1
    # The header still counts every promotion that needs attention, not only this one.
    assert view.attention == {"stuck": 1, "failed": 1}
    assert view.jobs is not None
    assert len(document["jobs"]) == 31
    assert document["jobs"][0] == {
        "id": "f00",
        "name": None,
        "job_type": "code_generate",
        "status": "failed",
        "since": "2026-01-02T02:47:25.000Z",
        "stuck": False,
        "error": "error 0",
    }
    assert document["jobs"][-1]["stuck"] is True
    assert {f["promotion_id"] for f in document["failures"]} == {P_FAILED}

    unknown = build_status(
        snapshots={s.promotion_id: s for s in snapshots},
        watched=dict.fromkeys([P_FAILED, P_OK], "promotion"),
        activity=activity,
        monitor=FACTS,
        now=NOW,
        stuck_after=STUCK_AFTER,
        query=StatusQuery(promotion=P_NEW),
    )
    assert unknown is None


def test_promotions_are_paged() -> None:
    pids = [f"00000000-0000-4000-8000-{n:012}" for n in range(250)]
    snapshots = [snap(pid, job("j", "completed", NOW - 10)) for pid in pids]
    view = view_of(snapshots, RecentActivity(FakeClock(NOW)), query=StatusQuery(page=3))
    assert (view.page, view.pages, view.total) == (3, 3, 250)
    assert [row.id for row in view.promotions] == pids[200:]
    page = render_page(view, StatusQuery(page=3))
    assert 'href="?page=2"' in page
    assert "Next" not in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, StatusQuery()),
        (
            {"promotion": " ABC ", "page": "2", "per_page": "50", "refresh": "10"},
            StatusQuery("abc", 2, 50, 10),
        ),
        ({"refresh": ""}, StatusQuery()),
    ],
)
def test_query_parameters_are_read(query: dict[str, str], expected: StatusQuery) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"per_page": "abc"}, "per_page"),
        ({"per_page": "1001"}, "per_page"),
        ({"refresh": "1"}, "refresh"),
        ({"refresh": "1e3"}, "refresh"),
    ],
)
def test_a_bad_query_parameter_is_named(query: dict[str, str], named: str) -> None:
    with pytest.raises(QueryError, match=rf"^{named}: must be a whole number"):
        parse_query(query)


def test_refresh_only_when_asked() -> None:
    view = view_of([snap(P_OK)], RecentActivity(FakeClock(NOW)))
    assert 'http-equiv="refresh"' not in render_page(view, StatusQuery())
    asked = view_of([snap(P_OK)], RecentActivity(FakeClock(NOW)), query=StatusQuery(refresh=10))
    assert '<meta http-equiv="refresh" content="10">' in render_page(asked, StatusQuery(refresh=10))


def test_every_text_from_the_api_is_escaped() -> None:
    clock = FakeClock(NOW)
    activity = RecentActivity(clock)
    hostile_job = Job("j<i>", "code_<marquee>gen", "failed", HOSTILE, NOW - 60, NOW - 30)
    odd_status = Job("k", "code_export", "we<u>ird", None, NOW - 60, NOW - 30)
    activity.polled(
        PollOutcome(
            P_POLL, ok=False, reason="bad_response", detail='"><img src=x onerror=alert(2)>'
        )
    )
    snapshots = [snap(P_FAILED, hostile_job, odd_status), snap(P_POLL)]
    names = {P_FAILED: '<marquee>Summer</marquee> & "sale"\''}

    for query in (StatusQuery(), StatusQuery(promotion=P_FAILED), StatusQuery(promotion=P_POLL)):
        page = render_page(view_of(snapshots, activity, query=query, names=names), query)
        # The template has no script and no img of its own: any would be injected markup.
        assert "<script" not in page
        assert "<img" not in page
        for tag in ("<marquee>", "<i>", "<u>"):
            assert tag not in page
    page = render_page(view_of(snapshots, activity, names=names), StatusQuery())
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;marquee&gt;Summer&lt;/marquee&gt; &amp; &#34;sale&#34;&#39;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page


def test_page_at_1000_promotions_stays_under_a_megabyte() -> None:
    """1,000 promotions of 100 jobs, 20 failed each with a 200-character error."""
    activity = RecentActivity(FakeClock(NOW))
    error = "x" * 199 + "<"  # the longest text a job keeps, escaping makes it longer
    snapshots = []
    for n in range(1000):
        pid = f"00000000-0000-4000-8000-{n:012}"
        jobs = [job(f"{pid}-{j}", "failed", NOW - n - j, error) for j in range(20)]
        jobs += [job(f"{pid}-c{j}", "completed", NOW - 9000 - j) for j in range(80)]
        snapshots.append(snap(pid, *jobs))
        activity.polled(PollOutcome(pid, ok=n % 50 != 0, reason="timeout", detail=error))

    view = view_of(snapshots, activity)
    page = render_page(view, StatusQuery()).encode()
    every_row = view_of(snapshots, activity, query=StatusQuery(per_page=1000))
    page_of_all = render_page(every_row, StatusQuery(per_page=1000)).encode()

    assert view.total == 1000
    assert len(view.promotions) == 100
    assert len(page) < 1_000_000
    assert len(page_of_all) < 1_000_000
    assert re.search(rb"Page 1 of 10", page)
    print(f"status page at 1,000 promotions: {len(page):,} bytes; all rows: {len(page_of_all):,}")


def test_requests_per_second_over_the_last_minute() -> None:
    clock = FakeClock(NOW)
    activity = RecentActivity(clock)
    for second in range(120):
        clock.now = NOW + second
        for _ in range(3 if second < 60 else 1):
            activity.request_done()
    assert activity.requests_per_second(NOW + 119.5) == pytest.approx(1.0)
    # Younger than a minute: the rate since start.
    young = RecentActivity(FakeClock(NOW))
    young.request_done()
    young.request_done()
    assert young.requests_per_second(NOW + 4) == pytest.approx(0.5)


def test_a_promotion_no_longer_watched_is_forgotten() -> None:
    activity = RecentActivity(FakeClock(NOW))
    activity.polled(PollOutcome(P_POLL, ok=False, reason="not_found"))
    activity.report(FailureReport(P_POLL, "j", "code_export", "e", NOW))
    activity.report(FailureReport(P_OK, "k", "code_export", "e", NOW))
    activity.forget(P_POLL)
    assert activity.poll(P_POLL) is None
    assert activity.poll_errors == ()
    assert [f.promotion_id for f in activity.failures] == [P_OK]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "just now"),
        (12, "12 s ago"),
        (95, "2 min ago"),
        (7200, "2 h ago"),
        (259200, "3 d ago"),
    ],
)
def test_ages_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert ago(NOW, NOW - seconds) == text


def shape(value: object) -> object:
    """The keys of a JSON value, all the way down (lists by their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def test_the_documented_example_has_the_shape_of_the_real_document() -> None:
    page = Path(__file__).parent.parent / "docs" / "pages" / "status-page.md"
    section = page.read_text(encoding="utf-8").split("## `/status.json`", 1)[1]
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    clock = FakeClock(NOW)
    activity = RecentActivity(clock, hints=HINTS.get)
    activity.polled(PollOutcome(P_POLL, ok=False, reason="not_found", detail="HTTP 404"))
    snapshots = [snap(P_FAILED, job("j", "failed", NOW - 60, "codes limit exceeded"))]

    document = to_json(view_of(snapshots, activity, {P_POLL: "promotion", P_FAILED: "promotion"}))

    assert shape(example) == shape(document)


def test_each_promotion_says_its_poll_interval_and_job_rate_and_the_monitor_its_delay() -> None:
    clock = FakeClock(NOW - 4000)
    activity = RecentActivity(clock)
    new = Job("n1", "code_generate", "pending", created_at=NOW - 4010)
    activity.polled(PollOutcome(P_OK, ok=True, changes=(Change(ChangeKind.DISCOVERED, P_OK, new),)))
    clock.now = NOW  # more than an hour later: that sighting has left the window
    for n, delay in enumerate([1.0, 2.0, 3.0, 40.0]):
        seen = Job(f"j{n}", "code_generate", "pending", created_at=NOW - delay)
        change = Change(ChangeKind.DISCOVERED, P_OK, seen)
        activity.polled(PollOutcome(P_OK, ok=True, changes=(change,)))
    facts = replace(FACTS, detection_delay=activity.detection_delay(NOW))
    view = build_status(
        snapshots={P_OK: snap(P_OK)},
        watched={P_OK: "promotion"},
        activity=activity,
        monitor=facts,
        now=NOW,
        stuck_after=STUCK_AFTER,
        planned={P_OK: (37.25, 12.3456)}.__getitem__,
    )
    assert view is not None
    document = to_json(view)
    assert document["monitor"]["detection_delay_seconds"] == {
        "p50": 2.0,
        "p99": 40.0,
        "window_seconds": 3600,
    }
    row = document["promotions"][0]
    assert (row["poll_interval_seconds"], row["jobs_per_day"]) == (37.2, 12.346)
    page = render_page(view, StatusQuery())
    assert "every 37 s · 12 jobs/day" in page
    assert "p99 40.0 s" in page
