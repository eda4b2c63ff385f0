"""What the jobs produced: codes generated, shortfalls, cancellations, and promotion names.

The daemon runs as a subprocess against the simulator; metrics are read from /metrics and
events from its JSON log lines, as a user would.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from monitor.simulator import Fault, Simulator
from tests.state_support import owed_rows
from tests.support import Daemon, Sample, long_ago, running_daemon, until, value, write_config

PROMOTION_PATHS = {"promotion": "/v2/promotions", "rule_promotion": "/v2/rule-promotions"}


@pytest.fixture
def seed() -> int:
    return 31


def produced(samples: dict[Sample, float], pid: str) -> tuple[float | None, ...]:
    """(codes generated, codes deleted, shortfalls) counted for a promotion."""
    return tuple(
        value(samples, name, promotion_id=pid)
        for name in (
            "epcc_promotion_codes_generated_total",
            "epcc_promotion_codes_deleted_total",
            "epcc_promotion_job_shortfalls_total",
        )
    )


def info(samples: dict[Sample, float]) -> dict[str, tuple[str, str]]:
    """promotion_id -> (kind, name) from epcc_promotion_info."""
    found = {}
    for (name, labels), sample in samples.items():
        if name == "epcc_promotion_info":
            assert sample == 1
            found[dict(labels)["promotion_id"]] = (dict(labels)["kind"], dict(labels)["name"])
    return found


@pytest.mark.parametrize("result_key", ["result", "generate_result"])
@pytest.mark.parametrize("kind", ["promotion", "rule_promotion"])
async def test_codes_generated_shortfalls_and_deletions_are_counted_and_told(
    sim: Simulator, tmp_path: Path, kind: Any, result_key: Any
) -> None:
    sim.result_key = result_key
    pid = sim.add_promotion(kind, name="Spring sale")
    # History from before the monitor: a shortfall and a cancellation, counted nowhere.
    old = sim.add_job(pid, status="processing", number_of_codes=900, created_at=long_ago())
    sim.set_job_status(pid, old, "completed", generated=10)
    sim.add_job(pid, status="cancelled", created_at=long_ago())
    full = sim.add_job(pid, status="processing", name="Full batch")
    short = sim.add_job(pid, status="processing", number_of_codes=1000, name="Spring codes")
    cancelled = sim.add_job(pid, status="processing", number_of_codes=600)
    async with running_daemon(write_config(tmp_path, sim, [{"id": pid, "kind": kind}])) as daemon:
        await daemon.wait_for("baseline_loaded")
        samples = await daemon.wait_for_metric(lambda s: pid in info(s))
        assert produced(samples, pid) == (0, 0, 0)  # pre-set, and history is not news
        assert info(samples)[pid] == (kind, "Spring sale")

        sim.set_job_status(pid, full, "completed")
        sim.set_job_status(pid, short, "completed", generated=640)
        sim.set_job_status(pid, cancelled, "cancelling")
        incomplete = await daemon.wait_for("job_incomplete")
        sim.set_job_status(pid, cancelled, "cancelled")
        samples = await daemon.wait_for_metric(lambda s: produced(s, pid)[1] == 300)

        # 1000 (full) + 640 (short); the cancel removed 300 of the 600 (the simulator's rule).
        assert produced(samples, pid) == (1640, 300, 1)
        assert value(
            samples, "epcc_promotion_job_last_shortfall_timestamp_seconds", promotion_id=pid
        )
        assert incomplete["level"] == "warning"
        assert {k: incomplete[k] for k in ("promotion_id", "job_id", "job_type", "status")} == {
            "promotion_id": pid,
            "job_id": short,
            "job_type": "code_generate",
            "status": "completed",
        }
        assert (incomplete["codes_requested"], incomplete["codes_generated"]) == (1000, 640)
        assert (incomplete["name"], incomplete["promotion_name"]) == ("Spring codes", "Spring sale")
        changed = {e["job_id"]: e for e in daemon.named("job_status_changed", status="completed")}
        assert changed[full]["codes_generated"] == 1000
        assert changed[full]["name"] == "Full batch"
        assert changed[full]["promotion_name"] == "Spring sale"
        (gone,) = daemon.named("job_status_changed", status="cancelled")
        assert (gone["codes_deleted"], gone["codes_requested"]) == (300, 600)
        assert len(daemon.named("job_incomplete")) == 1


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_what_was_counted_is_not_counted_again_after_a_restart(
    sim: Simulator, tmp_path: Path, how: signal.Signals
) -> None:
    pid = sim.add_promotion()
    short = sim.add_job(pid, status="processing")
    config = write_config(tmp_path, sim, [{"id": pid}])
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded")
        sim.set_job_status(pid, short, "completed", generated=1)
        await daemon.wait_for("job_incomplete")
        # Stopped once the announcement is marked done (a kill in the microseconds between
        # the two would repeat it: at least once, docs/pages/state.md).
        await until(lambda: owed_rows(tmp_path) == 0, "the announcement marked done")
    finally:
        await daemon.stop(how)
    async with running_daemon(config) as again:
        await again.wait_for_metric(lambda s: value(s, "epcc_monitor_up", promotion_id=pid) == 1)
        samples = await again.polled(pid)
        assert produced(samples, pid) == (0, 0, 0)
        assert again.named("job_incomplete") == []
        assert again.named("baseline_loaded") == []


async def test_names_come_from_discovery_and_lookups_and_survive_a_failing_lookup(
    sim: Simulator, tmp_path: Path
) -> None:
    configured = sim.add_promotion("rule_promotion", name="Configured builder promo")
    listed = sim.add_promotion("promotion", name="Listed sale")
    config = write_config(
        tmp_path,
        sim,
        [{"id": configured, "kind": "rule_promotion"}],
        discovery={"enabled": True, "kinds": ["promotion"], "interval_seconds": 0.5},
    )
    async with running_daemon(config) as daemon:
        samples = await daemon.wait_for_metric(lambda s: len(info(s)) == 2)
        assert info(samples) == {
            configured: ("rule_promotion", "Configured builder promo"),
            listed: ("promotion", "Listed sale"),
        }
        # Renamed in Elastic Path: the next discovery run and lookup carry the new names.
        sim.set_promotion(listed, name="Listed sale (extended)")
        sim.set_promotion(configured, name="Builder promo v2")
        samples = await daemon.wait_for_metric(
            lambda s: (
                info(s).get(configured, ("", ""))[1] == "Builder promo v2"
                and info(s).get(listed, ("", ""))[1] == "Listed sale (extended)"
            )
        )

        # The lookup fails from now on: the last name stays, and polling goes on.
        lookup = f"{PROMOTION_PATHS['rule_promotion']}/{configured}"
        sim.inject(Fault("status", status=503, path=lookup, times=None))
        sim.set_promotion(configured, name="never seen")
        warning = await daemon.wait_for("name_lookup_failed")
        assert warning["promotion_id"] == configured
        samples = await daemon.polled(configured)
        assert info(samples)[configured] == ("rule_promotion", "Builder promo v2")
        assert value(samples, "epcc_monitor_up", promotion_id=configured) == 1
        assert len(daemon.named("name_lookup_failed")) == 1  # once, not at every retry
