"""The scheduler's own liveness: /healthz must not depend on there being anything to poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.app import Monitor
from monitor.settings import parse_settings


async def test_a_monitor_with_nothing_to_poll_still_shows_a_live_loop(tmp_path: Path) -> None:
    # Discovery on, no promotion listed and no store to discover from: nothing is ever polled,
    # as for an empty shard. Liveness must still see the scheduler ticking.
    settings = parse_settings(
        {
            "api": {"base_url": "http://127.0.0.1:9", "client_id": "id", "client_secret": "s"},
            "poll": {"interval_seconds": 1},
            "discovery": {"enabled": True, "interval_seconds": 3600},
            "state": {"path": str(tmp_path / "monitor.db")},
        }
    )
    monitor = Monitor.build(settings, registry=CollectorRegistry(), serve_http=False)
    monitor.health.stale_after = 0.5
    await monitor.lifecycle.load_state()
    assert monitor.scheduler.plan.targets == []
    monitor.scheduler.start()
    monitor.health.started = True
    try:
        started = monitor.scheduler.heartbeat
        deadline = time.monotonic() + 5
        while monitor.scheduler.heartbeat == started and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # longer than stale_after: a stuck heartbeat would show here
        assert monitor.health.alive(time.monotonic())
    finally:
        await monitor.scheduler.stop(0.1)
        await monitor.client.close()
