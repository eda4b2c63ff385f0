"""The state database and shutdown under faults: unusable or unwritable state, SIGTERM mid-request.

Each test runs the real daemon (a subprocess) against a simulated store of its own.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from monitor.simulator import Fault
from tests.fault_support import Store, polled, read_state, up, watching
from tests.state_support import on_disk
from tests.support import until

NOT_SQLITE = b"\x00\xffnot a database" * 64
TORN = b"SQLite format 3\x00" + b"\x00" * 80
OLD_FORMAT = b'{"version": 0, "promotions": {"x": {"jobs": {"j": "failed"}}}}'


@pytest.mark.parametrize(
    ("name", "unusable"),
    [("monitor.db", NOT_SQLITE), ("monitor.db", TORN), ("snapshot.json", OLD_FORMAT)],
    ids=["state_foreign", "state_torn", "snapshot_json_old_format"],
)
async def test_an_unusable_state_file_is_set_aside_for_a_fresh_baseline(
    tmp_path: Path, name: str, unusable: bytes
) -> None:
    store = Store.build(seed=61)
    state = tmp_path / "state" / name
    state.parent.mkdir()
    state.write_bytes(unusable)
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        failed_job = store.fail(store.victim)
        await daemon.wait_for("job_failed")
        await polled(store.sim, store.victim, 2)
    assert daemon.process.returncode == 0

    (discarded,) = daemon.named("state_discarded")
    assert discarded["level"] == "warning"
    assert discarded["reason"]
    # Set aside whole, where the event says.
    aside = state.with_name(f"{name}.discarded")
    assert aside.read_bytes() == unusable
    assert Path(discarded["kept_as"]) == aside
    if unusable == OLD_FORMAT:
        # Discarded explicitly, saying why: no older format has a migration.
        assert "format" in discarded["reason"]
    assert len(daemon.named("baseline_loaded")) == 3
    # Nothing in the unusable file is taken for news, and the new state is whole.
    assert [e["job_id"] for e in daemon.named("job_failed")] == [failed_job]
    written = read_state(tmp_path)
    assert set(written) == set(store.ids)
    assert written[store.victim].jobs[failed_job].status == "failed"


async def test_a_state_write_that_fails_is_logged_and_never_fatal(tmp_path: Path) -> None:
    store = Store.build(seed=71)
    sim = store.sim
    # A regular file where the state directory should be: every write fails, even for root.
    blocker = tmp_path / "blocked"
    blocker.write_text("not a directory", encoding="utf-8")
    state = blocker / "monitor.db"
    async with watching(store, tmp_path, state={"path": str(state)}) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        await daemon.wait_for("state_write_failed")
        first = store.fail(store.victim)
        await daemon.wait_for("job_failed")
        await polled(sim, store.victim, 3)
        during = await daemon.metrics()
        running = daemon.process.returncode is None
        # The disk comes back: the next change is written, with everything before it.
        blocker.unlink()
        second = store.fail(store.others[0])
        await daemon.wait_for("job_failed", count=2)
        await until(state.exists, "the state file to be written")
        written = on_disk(state)
        await polled(sim, store.victim, 2)
    assert daemon.process.returncode == 0

    failures = daemon.named("state_write_failed")
    assert failures
    assert all(e["level"] == "error" and e["detail"] for e in failures)
    assert running
    assert all(up(during, pid) == 1 for pid in store.ids)
    assert [e["job_id"] for e in daemon.named("job_failed")] == [first, second]
    assert set(written) == set(store.ids)
    assert written[store.victim].jobs[first].status == "failed"
    (stopped,) = daemon.named("monitor_stopped")
    assert stopped["state_saved"] is True


async def test_sigterm_during_a_hung_request_exits_0_within_5_seconds_with_state_saved(
    tmp_path: Path,
) -> None:
    store = Store.build(seed=81)
    sim, victim = store.sim, store.victim
    async with watching(store, tmp_path, api={"timeout_seconds": 30}) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        failed_job = store.fail(victim)
        await daemon.wait_for("job_failed")
        sim.inject(Fault("timeout", delay=60, path_contains=f"/{victim}/jobs", times=None))
        mark = len(sim.requests)
        await until(
            lambda: any(
                r.status == 0 and r.path.endswith(f"/{victim}/jobs") for r in sim.requests[mark:]
            ),
            "a hung request",
        )
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.process.wait(), 15)
        took = time.monotonic() - started
    assert daemon.process.returncode == 0, daemon.stderr
    assert took < 5.0
    assert "Traceback" not in daemon.stderr
    (stopped,) = daemon.named("monitor_stopped")
    assert stopped["state_saved"] is True
    state = read_state(tmp_path)
    assert set(state) == set(store.ids)
    assert state[victim].jobs[failed_job].status == "failed"
