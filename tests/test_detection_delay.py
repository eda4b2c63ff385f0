"""The daemon's own detection delay agrees with what a client sees from outside."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from pathlib import Path

import pytest

from monitor.simulator import Simulator
from tests.support import running_daemon, value, write_config


@pytest.fixture
def seed() -> int:
    return 19


async def test_the_histogram_agrees_with_the_delay_a_client_measures(
    sim: Simulator, tmp_path: Path
) -> None:
    pids = [sim.add_promotion(name=f"sale {n}") for n in range(4)]
    config = write_config(
        tmp_path, sim, [{"id": pid} for pid in pids], poll={"interval_seconds": 2}
    )
    rng = random.Random(19)
    created: dict[str, float] = {}
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded", count=len(pids))
        for _ in range(12):  # new jobs at random moments between polls
            await asyncio.sleep(rng.uniform(0, 0.5))
            at = time.time()
            created[sim.add_job(rng.choice(pids), status="pending", created_at=at)] = at
        await daemon.wait_for("job_discovered", count=len(created), timeout=30)
        seen = {
            e["job_id"]: datetime.fromisoformat(e["timestamp"]).timestamp() - created[e["job_id"]]
            for e in daemon.named("job_discovered")
        }
        samples = await daemon.metrics()

    assert value(samples, "epcc_monitor_detection_delay_seconds_count") == len(created)
    total = value(samples, "epcc_monitor_detection_delay_seconds_sum")
    assert total is not None
    # The daemon notes the delay as it records the poll and logs the job just after: its mean is
    # the client's, a few milliseconds earlier. Both are within an idle interval (2 s) and a bit.
    client = sum(seen.values()) / len(seen)
    assert 0 <= client - total / len(created) < 0.1
    assert max(seen.values()) < 2 + 0.5
    within = value(samples, "epcc_monitor_detection_delay_seconds_bucket", le="2.5")
    assert within == len(created)
