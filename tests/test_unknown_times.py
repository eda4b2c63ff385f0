"""Timestamps that say nothing: absent (nothing marks meta.timestamps required) or Go's zero
time 0001-01-01T00:00:00Z (a valid date-time). An unknown age is history at a baseline, never a
page; a new failure is reported whatever its timestamps say; and a job of unknown age is never
stuck at first sight.

Each test runs the real daemon (a subprocess) against the simulator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.simulator import Simulator
from tests.support import Daemon, started, write_config


@pytest.mark.parametrize("timestamps", ["missing", "zero"])
async def test_unknown_ages_are_neither_old_news_paged_nor_stuck_at_once(
    tmp_path: Path, timestamps: str
) -> None:
    sim = Simulator(seed=229)
    sim.timestamps = "missing" if timestamps == "missing" else "zero"
    pid = sim.add_promotion("promotion")
    sim.add_job(pid, status="completed")
    # Failed before the monitor ever looked: when, the store does not say.
    sim.add_job(pid, status="failed", error="codes limit exceeded")
    async with started(sim):
        poll = {"stuck_after_seconds": 300, "baseline_lookback_seconds": 900}
        config = write_config(tmp_path, sim, [{"id": pid}], poll=poll)
        daemon = await Daemon.start(config)
        try:
            await daemon.wait_for("baseline_loaded")
            pending = sim.add_job(pid, status="pending")
            await daemon.wait_for("job_discovered", lambda e: e["job_id"] == pending)
            failed = sim.add_job(pid, status="failed", error="export failed")
            reported = await daemon.wait_for("job_failed")
            await daemon.polled(pid, 3)
        finally:
            await daemon.stop()

    assert reported["job_id"] == failed
    assert [e["job_id"] for e in daemon.named("job_failed")] == [failed]
    assert daemon.named("job_stuck") == []
