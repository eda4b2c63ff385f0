"""The store's clock for the store's times: a store whose clock is minutes off the pod's.

Ages, the baseline lookback and stuck are judged against the store's clock, estimated from the
`Date` of its answers; an HTTP-date Retry-After is read against the same answer's Date
(RFC 9110 10.2.3). The simulator stamps Date, like job times, from its own clock.

Each test runs the real daemon (a subprocess) against the simulator.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from monitor.events import StoreClockSkewed
from monitor.recent_activity import RecentActivity
from monitor.simulator import Fault, Simulator
from monitor.sinks.client_reports import RequestReports
from monitor.sinks.metrics import MonitorMetrics
from tests.fault_support import jobs_requests
from tests.support import (
    Daemon,
    FakeClock,
    Recorder,
    parse_metrics,
    series,
    started,
    until,
    value,
    write_config,
)

SKEW = 600.0  # ten minutes
POLL = {"stuck_after_seconds": 300, "baseline_lookback_seconds": 900}
GAUGE = "epcc_monitor_store_clock_skew_seconds"


async def test_a_store_behind_the_pod_keeps_its_lookback_and_stuck_is_not_early(
    tmp_path: Path,
) -> None:
    sim = Simulator(seed=226, clock=lambda: time.time() - SKEW)
    pid = sim.add_promotion("promotion")
    sim.add_jobs(pid, 2, status="completed")
    # Failed ten minutes ago by the store's clock: inside the fifteen-minute lookback.
    failure = sim.add_job(
        pid, status="failed", error="codes limit exceeded", created_at=sim.now() - SKEW
    )
    # Started just now by the store's clock: ten minutes old by the pod's.
    running = sim.add_job(pid, status="processing")
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}], poll=POLL)
        daemon = await Daemon.start(config)
        try:
            reported = await daemon.wait_for("job_failed")
            skewed = await daemon.wait_for("store_clock_skewed")
            samples = await daemon.polled(pid, 3)
            code, body = await daemon.get("/status.json")
            assert code == 200
            status = json.loads(body)
        finally:
            await daemon.stop()

    assert reported["job_id"] == failure
    assert reported["during_baseline"] is True
    assert running not in {e["job_id"] for e in daemon.named("job_stuck")}
    assert daemon.named("job_stuck") == []
    # ...nor on /metrics or the status page, which judge the store's times by its clock too.
    assert not any(v for _, v in series(samples, "epcc_promotion_jobs_stuck").items())
    assert status["promotions"][0]["stuck"] == 0
    assert abs(skewed["skew_seconds"] + SKEW) < 5
    skew = value(samples, GAUGE)
    assert skew is not None
    assert abs(skew + SKEW) < 5
    assert len(daemon.named("store_clock_skewed")) == 1


async def test_an_http_date_retry_after_is_read_against_the_answers_date(tmp_path: Path) -> None:
    sim = Simulator(seed=227, clock=lambda: time.time() + SKEW)
    pid = sim.add_promotion("promotion")
    sim.add_job(pid, status="processing")
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}])
        daemon = await Daemon.start(config)
        try:
            await daemon.wait_for("baseline_loaded")
            # Two seconds from now by the store's clock; ten minutes and two by the pod's.
            later = formatdate(sim.now() + 2, usegmt=True)
            sim.inject(Fault("status", status=429, retry_after=later, path_contains="/jobs"))
            retried = await daemon.wait_for("request_retried")
            mark = len(sim.requests)
            await until(
                lambda: any(r.status == 200 for r in jobs_requests(sim.requests[mark:], pid)),
                "a poll answered after the 429",
                timeout=15,
            )
        finally:
            await daemon.stop()

    assert retried["reason"] == "rate_limited"
    assert 0 < retried["retry_after"] <= 3


def test_the_skew_warning_comes_once_a_crossing_not_once_a_jitter() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(
        registry, version="t", snapshots=list, clock=FakeClock(), stuck_after=3600.0
    )
    events = Recorder()
    reports = RequestReports(metrics, RecentActivity(FakeClock()), events)
    # A skew hovering about the minute's line, then back to normal, then past it again.
    for skew in (10.0, 60.4, 59.6, 60.2, 59.9, 61.0, 5.0, -75.0, -74.5):
        reports.store_clock_skew(skew)
    warned = [e.skew_seconds for e in events.events if isinstance(e, StoreClockSkewed)]
    assert warned == [60.4, -75.0]
    assert value(parse_metrics(generate_latest(registry).decode()), GAUGE) == -74.5
