"""The event contract: every event declared once in monitor/events.py (the docs' reference is
generated from it: tests/test_docs.py), and events captured in process as whole dicts (structlog's
capture, as stamina's tests do).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import structlog

from monitor.app import Monitor
from monitor.events import (
    Event,
    EventSink,
    JobFailed,
    JobSeenLate,
    job_events,
)
from monitor.models import Change, ChangeKind, Job
from monitor.simulator import Simulator
from monitor.sinks.logs import LogSink
from tests.support import Recorder, in_process_monitor, long_ago

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


def test_an_event_renders_its_fields_without_the_empty_ones() -> None:
    event = JobFailed(
        promotion_id="p", job_id="j", job_type="code_generate", status="failed", error="x"
    )
    assert event.fields() == {
        "promotion_id": "p",
        "job_id": "j",
        "job_type": "code_generate",
        "status": "failed",
        "error": "x",
    }


# job events from changes (pure)


def job(status: str, **fields: object) -> Job:
    return Job("j1", "code_generate", status, None, NOW - 60, NOW - 60, **fields)  # type: ignore[arg-type]


def test_job_events_table() -> None:
    failed = job("failed", name="job", codes_requested=1000)
    changes = [
        Change(ChangeKind.BASELINE, "p", counts={"failed": 1}),
        Change(ChangeKind.DISCOVERED, "p", failed, during_baseline=True),
        Change(ChangeKind.DISCOVERED, "p", job("completed"), late=True),
        Change(ChangeKind.STATUS_CHANGED, "p", failed, job("processing")),
    ]
    names = {"p": "Spring sale"}.get
    rendered = [(e.NAME, e.LEVEL, e.fields()) for e in job_events(changes, names)]
    ids = {"promotion_id": "p", "job_id": "j1", "job_type": "code_generate"}
    described = {"name": "job", "promotion_name": "Spring sale", "codes_requested": 1000}
    assert rendered == [
        ("baseline_loaded", "info", {"promotion_id": "p", "jobs": 1, "by_status": {"failed": 1}}),
        # a failure found by the lookback: no job_discovered, one job_failed marked as such
        (
            "job_failed",
            "error",
            {**ids, "status": "failed", **described, "error": "", "during_baseline": True},
        ),
        # history seen late: debug only, and never a failure
        ("job_discovered", "debug", {**ids, "status": "completed", "late_seen": True}),
        (
            "job_status_changed",
            "info",
            {**ids, "status": "failed", **described, "previous_status": "processing"},
        ),
        ("job_failed", "error", {**ids, "status": "failed", **described, "error": ""}),
    ]
    assert isinstance(next(job_events([changes[2]])), JobSeenLate)


# events from a real monitor, captured in process


@pytest.fixture
def seed() -> int:
    return 41


def monitor_of(
    sim: Simulator, tmp_path: Path, pid: str, events: EventSink | None = None
) -> Monitor:
    return in_process_monitor(tmp_path, sim, [{"id": pid}], events=events)


async def test_a_failure_is_one_whole_event_captured_in_process(
    sim: Simulator, tmp_path: Path
) -> None:
    pid = sim.add_promotion(name="Spring sale")
    sim.add_job(pid, status="failed", error="old", created_at=long_ago())
    running = sim.add_job(pid, status="processing", name="Spring codes")

    with structlog.testing.capture_logs() as logs:
        await monitor_of(sim, tmp_path, pid).run_once()
        sim.set_job_status(pid, running, "failed", error="codes limit exceeded")
        await monitor_of(sim, tmp_path, pid).run_once()

    job_logs = [e for e in logs if e["event"] != "token_refreshed"]
    the_job = {  # the job fields, names and codes both events carry
        "promotion_id": pid,
        "job_id": running,
        "job_type": "code_generate",
        "status": "failed",
        "name": "Spring codes",
        "promotion_name": "Spring sale",
        "codes_requested": 1000,
    }
    assert job_logs == [
        {
            "event": "baseline_loaded",
            "log_level": "info",
            "promotion_id": pid,
            "jobs": 2,
            "by_status": {"failed": 1, "processing": 1},
        },
        {
            "event": "job_status_changed",
            "log_level": "info",
            **the_job,
            "previous_status": "processing",
        },
        {"event": "job_failed", "log_level": "error", **the_job, "error": "codes limit exceeded"},
    ]


async def test_every_event_goes_through_the_one_sink_the_monitor_is_given(
    sim: Simulator, tmp_path: Path
) -> None:
    pid = sim.add_promotion()
    sim.add_job(pid, status="processing")
    recorder = Recorder()
    with structlog.testing.capture_logs() as logs:
        await monitor_of(sim, tmp_path, pid, recorder).run_once()
    assert logs == []  # nothing bypassed the sink
    assert [e.NAME for e in recorder.events] == ["token_refreshed", "baseline_loaded"]
    assert all(isinstance(e, Event) for e in recorder.events)


def emitters() -> set[str]:
    """The modules of the package that hand an event to a sink (calls of `.emit(...)`)."""
    found = set()
    for path in (ROOT / "monitor").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "emit"
            ):
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_only_the_loop_emits_events() -> None:
    # The reporting step reports what a poll found, the scheduler everything else the loop runs;
    # the client's reports are rendered by their sink. The poller, state, watching, names and the
    # elector answer with values instead, so a newcomer finds every emission in these three files.
    assert emitters() == {
        "monitor/report.py",
        "monitor/scheduler.py",
        "monitor/sinks/client_reports.py",
    }


def test_the_log_sink_renders_name_level_and_fields() -> None:
    with structlog.testing.capture_logs() as logs:
        LogSink().emit(
            JobFailed(promotion_id="p", job_id="j", job_type="t", status="failed", error="e")
        )
    assert logs == [
        {
            "event": "job_failed",
            "log_level": "error",
            "promotion_id": "p",
            "job_id": "j",
            "job_type": "t",
            "status": "failed",
            "error": "e",
        }
    ]
