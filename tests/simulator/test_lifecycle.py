"""The simulator's jobs move on as a seeded lifecycle, and its data helpers obey the API's rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monitor.simulator import Simulator, populate_demo
from tests.simulator_support import KNOWN_FAILURES, epoch, eventually
from tests.support import START, FakeClock


def statuses(sim: Simulator, *promotion_ids: str) -> dict[str, str]:
    return {job["id"]: job["status"] for pid in promotion_ids for job in sim.jobs(pid)}


def test_step_moves_pending_to_processing_to_completed(sim: Simulator) -> None:
    sim.failure_rate = 0.0
    pid = sim.add_promotion()
    job = sim.add_job(pid, number_of_codes=250)
    assert sim.step() == 1
    assert statuses(sim, pid) == {job: "processing"}
    assert sim.step() == 1
    [rendered] = sim.jobs(pid)
    assert rendered["status"] == "completed"
    assert rendered["result"] == {"generated": 250, "deleted": 0}
    assert sim.step() == 0
    assert sim.transitions == 2


@pytest.mark.parametrize("job_type", ["code_generate", "code_export"])
def test_step_fails_jobs_with_realistic_errors(sim: Simulator, job_type: str) -> None:
    sim.failure_rate = 1.0
    pid = sim.add_promotion()
    sim.add_jobs(pid, 5, job_type=job_type)
    for _ in range(6):
        sim.step()
    errors = [job["error"] for job in sim.jobs(pid)]
    assert {job["status"] for job in sim.jobs(pid)} == {"failed"}
    assert all(KNOWN_FAILURES.fullmatch(error) for error in errors)


def test_jobs_run_one_at_a_time_oldest_first(sim: Simulator, clock: FakeClock) -> None:
    first, second = sim.add_promotion(), sim.add_promotion()
    # inserted newest first: the queue must follow created_at, not insertion
    queue = [sim.add_job(first, created_at=START - i) for i in range(4)]
    sim.add_jobs(second, 3)
    started: list[str] = []
    for _ in range(20):
        clock.now += 1
        sim.step()
        for pid in (first, second):
            processing = [j for j, s in statuses(sim, pid).items() if s == "processing"]
            assert len(processing) <= 1
            if pid == first and processing and processing[0] not in started:
                started.append(processing[0])
    assert started == queue[::-1]
    assert set(statuses(sim, first, second).values()) <= {"completed", "failed"}


def test_cancelled_code_generate_job_reports_the_codes_it_removed(sim: Simulator) -> None:
    pid = sim.add_promotion()
    job = sim.add_job(pid, number_of_codes=400)
    export = sim.add_job(pid, job_type="code_export")
    sim.set_job_status(pid, job, "cancelling")
    sim.set_job_status(pid, export, "cancelling")
    assert "result" not in sim.jobs(pid)[0]
    sim.step()
    cancelled, export_cancelled = sim.jobs(pid)
    assert cancelled["status"] == "cancelled"
    result = cancelled["result"]
    assert set(result) == {"generated", "deleted"}
    assert 0 <= result["deleted"] <= result["generated"] <= 400
    assert "result" not in export_cancelled


def test_step_spawns_jobs_on_disabled_promotions_too(sim: Simulator) -> None:
    # codes are generated before a campaign is switched on
    sim.spawn_rate = 1.0
    off = sim.add_promotion(enabled=False)
    rule_off = sim.add_promotion("rule_promotion", enabled=False)
    sim.step()
    assert len(sim.jobs(off)) == 1
    assert len(sim.jobs(rule_off)) == 1


@pytest.mark.parametrize("kind", ["promotion", "rule_promotion"])
def test_code_generate_jobs_stay_within_the_api_limits(sim: Simulator, kind: Any) -> None:
    pid = sim.add_promotion(kind)
    with pytest.raises(ValueError, match="above the API's maximum of 1000"):
        sim.add_job(pid, number_of_codes=1001)
    sim.add_job(pid, number_of_codes=1000)
    sim.add_job(pid, job_type="code_export", number_of_codes=5000)  # (exports have no such count)
    [job] = [j for j in sim.jobs(pid) if "parameters" in j]
    unit = "per_checkout" if kind == "rule_promotion" else "per_cart"
    assert job["parameters"]["consume_unit"] == unit
    # the lifecycle never asks for more than the maximum either
    sim.spawn_rate = 1.0
    for _ in range(60):
        sim.step()
    counts = [j["parameters"]["number_of_codes"] for j in sim.jobs(pid) if "parameters" in j]
    assert len(counts) > 5
    assert max(counts) <= 1000


def test_a_job_cancelled_before_it_ran_removed_no_codes(sim: Simulator) -> None:
    pid = sim.add_promotion()
    waiting = sim.add_job(pid, status="pending", number_of_codes=800)
    running = sim.add_job(pid, status="pending", number_of_codes=800)
    sim.set_job_status(pid, running, "processing")
    for job_id in (waiting, running):
        sim.set_job_status(pid, job_id, "cancelled")
    results = {j["id"]: j["result"] for j in sim.jobs(pid)}
    assert results[waiting] == {"generated": 0, "deleted": 0}
    assert results[running] == {"generated": 400, "deleted": 400}


def test_cancelling_becomes_cancelled(sim: Simulator) -> None:
    pid = sim.add_promotion()
    job = sim.add_job(pid, status="cancelling")
    assert sim.step() == 1
    assert statuses(sim, pid) == {job: "cancelled"}


def test_transitions_equal_observed_status_changes() -> None:
    sim = Simulator(clock=FakeClock(), seed=7)
    sim.spawn_rate = 0.5
    ids = populate_demo(sim, 6, 5)
    counted = 0
    spawned = False
    for _ in range(25):
        before = statuses(sim, *ids)
        made = sim.step()
        after = statuses(sim, *ids)
        spawned = spawned or bool(after.keys() - before.keys())
        assert made == sum(before[j] != after[j] for j in before)
        counted += made
    assert counted > 0
    assert spawned
    assert sim.transitions == counted


def test_set_job_status_bumps_updated_at_and_counts_changes_only(
    sim: Simulator, clock: FakeClock
) -> None:
    pid = sim.add_promotion()
    job = sim.add_job(pid)
    clock.now = epoch("2024-12-05T10:00:00.250Z")
    sim.set_job_status(pid, job, "failed", error="codes limit exceeded")
    [rendered] = sim.jobs(pid)
    assert rendered["status"] == "failed"
    assert rendered["error"] == "codes limit exceeded"
    assert rendered["meta"]["timestamps"]["updated_at"] == "2024-12-05T10:00:00.250Z"
    assert sim.transitions == 1
    sim.set_job_status(pid, job, "failed", error="codes limit exceeded")
    assert sim.transitions == 1
    sim.set_job_status(pid, job, "shelved")
    assert sim.jobs(pid)[0]["status"] == "shelved"
    assert "error" not in sim.jobs(pid)[0]
    assert sim.transitions == 2


def test_same_seed_gives_the_same_lifecycle() -> None:
    def run(seed: int) -> list[list[tuple[str, str, str | None]]]:
        sim = Simulator(clock=FakeClock(), seed=seed)
        sim.spawn_rate = 0.3
        ids = [sim.add_promotion(promotion_id=f"p{i}") for i in range(4)]
        for pid in ids:
            sim.add_jobs(pid, 3)
        for _ in range(15):
            sim.step()
        return [[(j["job_type"], j["status"], j.get("error")) for j in sim.jobs(p)] for p in ids]

    assert run(3) == run(3)
    assert run(3) != run(4)


async def test_run_lifecycle_steps_until_cancelled(sim: Simulator) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 3)
    runner = asyncio.create_task(sim.run_lifecycle(0.01))
    try:
        await eventually(lambda: sim.transitions >= 3)
    finally:
        runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert "processing" in statuses(sim, pid).values()


def test_data_helpers_reject_duplicates_and_unknown_ids(sim: Simulator) -> None:
    pid = sim.add_promotion(promotion_id="p1")
    sim.add_job(pid, job_id="j1")
    with pytest.raises(ValueError, match="already exists"):
        sim.add_promotion(promotion_id="p1")
    with pytest.raises(ValueError, match="already exists"):
        sim.add_job(pid, job_id="j1")
    with pytest.raises(ValueError, match="ISO 8601"):
        sim.add_promotion(end="next tuesday")
    with pytest.raises(KeyError):
        sim.add_job("nope")
