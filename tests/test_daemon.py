"""The daemon as users run it: a subprocess against the simulator, judged by /metrics and logs."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitor.simulator import Simulator
from tests.deploy_support import (
    ALERTS,
    DASHBOARD,
    alert_rules,
    dashboard_metric_names,
    load_yaml,
    metric_names_in,
)
from tests.state_support import owed_rows
from tests.support import (
    Daemon,
    long_ago,
    promtool_check_metrics,
    require_tool,
    series,
    until,
    value,
    write_config,
)


@dataclass
class Store:
    """A simulated store shaped like issue #2's acceptance scenario."""

    sim: Simulator
    big: str  # 130 jobs: more than one page at any page limit
    rule: str  # a Promotions Builder promotion
    filtered: str  # watched with filter eq(job_type,code_generate)
    big_processing: str  # a job in `big` that is processing now
    rule_pending: str  # a job in `rule` that is pending now

    def promotions(self) -> list[dict[str, str]]:
        return [
            {"id": self.big, "kind": "promotion"},
            {"id": self.rule, "kind": "rule_promotion"},
            {"id": self.filtered, "kind": "promotion", "filter": "eq(job_type,code_generate)"},
        ]


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    sim = Simulator(seed=3)
    big = sim.add_promotion("promotion", name="Big sale")
    sim.add_jobs(big, 120, status="completed", job_type="code_export")
    # Failures long before the monitor started: visible as state, never counted as news.
    sim.add_jobs(big, 9, status="failed", error="codes limit exceeded", created_at=long_ago())
    processing = sim.add_job(big, status="processing")
    rule = sim.add_promotion("rule_promotion", name="Builder promo")
    rule_pending = sim.add_job(rule, job_type="code_export", status="pending")
    sim.add_job(rule, status="completed")
    filtered = sim.add_promotion("promotion", name="Filtered")
    sim.add_jobs(filtered, 3, status="completed", job_type="code_generate")
    sim.add_jobs(
        filtered,
        4,
        status="failed",
        job_type="code_export",
        error="export failed",
        created_at=long_ago(),
    )
    await sim.start()
    yield Store(sim, big, rule, filtered, processing, rule_pending)
    await sim.stop()


def job_count(samples: dict, promotion_id: str) -> float:  # type: ignore[type-arg]
    return sum(
        v
        for labels, v in series(samples, "epcc_promotion_jobs").items()
        if dict(labels)["promotion_id"] == promotion_id
    )


async def test_acceptance_scenario(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded", count=3)
        assert {e["promotion_id"] for e in daemon.named("baseline_loaded")} == {
            store.big,
            store.rule,
            store.filtered,
        }
        baseline = daemon.named("baseline_loaded", promotion_id=store.big)[0]
        assert baseline["jobs"] == 130
        assert baseline["by_status"] == {"completed": 120, "failed": 9, "processing": 1}

        samples = await daemon.metrics()
        assert job_count(samples, store.big) == 130
        assert (
            value(
                samples,
                "epcc_promotion_jobs",
                promotion_id=store.big,
                job_type="code_generate",
                status="failed",
            )
            == 9
        )
        # The filter reached the API: only code_generate jobs of that promotion are counted.
        assert job_count(samples, store.filtered) == 3
        assert job_count(samples, store.rule) == 2
        for pid in (store.big, store.rule, store.filtered):
            for job_type in ("code_generate", "code_export"):
                assert (
                    value(
                        samples,
                        "epcc_promotion_job_failures_total",
                        promotion_id=pid,
                        job_type=job_type,
                    )
                    == 0
                )
            assert value(samples, "epcc_monitor_up", promotion_id=pid) == 1
        assert daemon.named("job_failed") == []
        # The failures that predate the monitor are still visible as state.
        failed_info = series(samples, "epcc_promotion_job_failed_info")
        assert sum(1 for labels in failed_info if dict(labels)["promotion_id"] == store.big) == 9

        store.sim.set_job_status(
            store.big, store.big_processing, "failed", error="codes limit exceeded"
        )
        store.sim.set_job_status(store.rule, store.rule_pending, "processing")
        failed = await daemon.wait_for("job_failed")
        assert failed["promotion_id"] == store.big
        assert failed["job_id"] == store.big_processing
        assert failed["job_type"] == "code_generate"
        assert failed["status"] == "failed"
        assert failed["error"] == "codes limit exceeded"
        assert failed["level"] == "error"
        assert failed["timestamp"].endswith("Z")
        moved = await daemon.wait_for(
            "job_status_changed", lambda e: e["promotion_id"] == store.rule
        )
        assert (moved["previous_status"], moved["status"]) == ("pending", "processing")

        samples = await daemon.wait_for_metric(
            lambda s: (
                value(
                    s,
                    "epcc_promotion_job_failures_total",
                    promotion_id=store.big,
                    job_type="code_generate",
                )
                == 1
            )
        )
        assert (
            value(
                samples,
                "epcc_promotion_job_errors_total",
                promotion_id=store.big,
                job_type="code_generate",
                error="codes limit exceeded",
            )
            == 1
        )
        assert (
            value(
                samples,
                "epcc_promotion_job_transitions_total",
                promotion_id=store.big,
                job_type="code_generate",
                from_status="processing",
                to_status="failed",
            )
            == 1
        )
        assert (
            value(
                samples,
                "epcc_promotion_job_failed_info",
                promotion_id=store.big,
                job_id=store.big_processing,
                job_type="code_generate",
                error="codes limit exceeded",
            )
            == 1
        )

        # Several more cycles: the failure is not counted again.
        polls_before = len(store.sim.requests)
        await daemon.wait_for_metric(lambda _: len(store.sim.requests) > polls_before + 12)
        samples = await daemon.metrics()
        assert len(daemon.named("job_failed")) == 1
        assert (
            value(
                samples,
                "epcc_promotion_job_failures_total",
                promotion_id=store.big,
                job_type="code_generate",
            )
            == 1
        )

        assert await daemon.get("/healthz") == (200, "ok\n")
        assert await daemon.get("/readyz") == (200, "ready\n")
        status, page = await daemon.get("/")
        assert status == 200
        assert 'href="metrics"' in page
    finally:
        code = await daemon.stop()
    assert code == 0
    assert daemon.named("monitor_stopped")
    assert all({"event", "level", "timestamp"} <= e.keys() for e in daemon.events)

    # A restart repeats nothing: no baseline, no discovered jobs, no failure reported again.
    restarted = await Daemon.start(config)
    try:
        await restarted.wait_for_metric(
            lambda s: all(
                value(s, "epcc_monitor_up", promotion_id=p["id"]) == 1 for p in store.promotions()
            )
        )
        polls_before = len(store.sim.requests)
        await restarted.wait_for_metric(lambda _: len(store.sim.requests) > polls_before + 6)
        job_events = [
            e for e in restarted.events if "job_id" in e or e["event"] == "baseline_loaded"
        ]
        assert job_events == []
        # ...but a new failure after the restart is news, exactly once.
        store.sim.set_job_status(
            store.rule, store.rule_pending, "failed", error="export failed: disk full"
        )
        failed = await restarted.wait_for("job_failed")
        assert failed["job_id"] == store.rule_pending
    finally:
        assert await restarted.stop() == 0
    assert len(restarted.named("job_failed")) == 1


async def test_restart_after_sigkill_does_not_repeat_a_reported_failure(
    store: Store, tmp_path: Path
) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    daemon = await Daemon.start(config)
    await daemon.wait_for("baseline_loaded", count=3)
    store.sim.set_job_status(
        store.big, store.big_processing, "failed", error="codes limit exceeded"
    )
    await daemon.wait_for("job_failed")
    # Killed once the announcement is marked done (microseconds after it is logged; a kill
    # inside that gap repeats it at the next start, which docs/pages/state.md states).
    await until(lambda: owed_rows(tmp_path) == 0, "the announcement marked done")
    assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL

    restarted = await Daemon.start(config)
    try:
        polls_before = len(store.sim.requests)
        await restarted.wait_for_metric(lambda _: len(store.sim.requests) > polls_before + 9)
        assert restarted.named("job_failed") == []
        assert restarted.named("baseline_loaded") == []
    finally:
        await restarted.stop()


async def test_metrics_pass_promtool_check_metrics(store: Store, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    config = write_config(tmp_path, store.sim, store.promotions())
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded", count=3)
        store.sim.set_job_status(
            store.big, store.big_processing, "failed", error="codes limit exceeded"
        )
        await daemon.wait_for("job_failed")
        await daemon.wait_for_metric(
            lambda s: bool(series(s, "epcc_promotion_job_duration_seconds_count"))
        )
        status, text = await daemon.get("/metrics")
    finally:
        await daemon.stop()
    assert status == 200
    # promtool prints one line per problem; nothing at all is the pass.
    assert promtool_check_metrics(promtool, text) == (0, "")


async def test_dashboard_and_alert_rules_query_only_metrics_the_monitor_serves(
    store: Store, tmp_path: Path
) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded", count=3)
        _, text = await daemon.get("/metrics")
    finally:
        await daemon.stop()
    # Every family the live monitor declares, even those with no sample yet.
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    assert "epcc_promotion_job_failures_total" in served
    dashboard = dashboard_metric_names(DASHBOARD)
    assert dashboard, "the dashboard queries no epcc_* metric at all"
    assert dashboard <= served, dashboard - served
    rules = set()
    for rule in alert_rules(load_yaml(ALERTS)["groups"]):
        rules |= metric_names_in(rule["expr"])
    assert rules <= served, rules - served
