"""Benchmark — poll where jobs happen, the whole process: 1,000 promotions against the simulator.

The daemon (a subprocess) watches 1,000 promotions of an in-process simulator at 40 requests/s,
intervals 1-100 s. 100 promotions have a history at Zipf(1.0) rates (the busiest 300 jobs over
the last three days, the k-th 300/k), the other 900 one job a month old. Past the baselines,
new jobs arrive for RUN seconds as Poisson processes at rates in the same proportions (the
busiest one every 4 s), each created already finished, so no promotion turns active.

Measured from the same run: each job's delay (the daemon's job_discovered log time minus its
creation), the daemon's own epcc_monitor_detection_delay_seconds, and from the simulator's
request log every poll of every promotion, which gives the mean delay over Poisson arrivals at
the true rates exactly. Against round robin and the √-law optimum (the true rates and the
promotions' page counts) for the requests the daemon spent in the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiohttp
import numpy as np

from monitor.simulator import Simulator
from tests.benchmarks.common import (
    HOST,
    RESULTS,
    DaemonProcess,
    Result,
    Stopwatch,
    credentials,
    daemon_config,
    percentile,
    write_yaml,
)
from tests.benchmarks.polling import optimum_intervals
from tests.support import parse_metrics, value

NAME = "polling_whole"
TITLE = "Poll where jobs happen, the whole process: 1,000 promotions at 40 requests/s"
PROMOTIONS = 1_000
HOT = 100
RATE = 40.0
INTERVAL = 25.0  # 1,000 / 25 = 40: the budget and the uniform schedule's spend agree
MIN_INTERVAL = 1.0
MAX_INTERVAL = 100.0
HISTORY = 300  # jobs of the busiest promotion over the last three days; the k-th gets 300/k
TOP = 0.25  # new jobs per second of the busiest promotion in the run; the k-th gets TOP/k
SETTLE = 10.0  # after the baselines
RUN = 40.0
PAGE = 100


class Watcher(DaemonProcess):
    KEEP = DaemonProcess.KEEP | {"job_discovered"}


@contextlib.asynccontextmanager
async def watching(sim: Simulator, promotions: list[str]) -> AsyncIterator[DaemonProcess]:
    await sim.start(HOST, 0)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-polling-") as tmp:
            document = daemon_config(
                Path(tmp),
                **credentials(sim),
                promotions=[],
                rate=RATE,
                interval=INTERVAL,
                active_interval=MIN_INTERVAL,
            )
            document["poll"] |= {
                "min_interval_seconds": MIN_INTERVAL,
                "max_interval_seconds": MAX_INTERVAL,
            }
            # Discovered, so their names come with the list: configured ones would be looked up
            # one request each, a thousand requests sharing the budget with the polls.
            document["discovery"] = {"enabled": True, "kinds": ["promotion"]}
            daemon = await Watcher.start(write_yaml(Path(tmp) / "config.yaml", document))
            try:
                await daemon.wait_count("baseline_loaded", len(promotions), timeout=120)
                yield daemon
            finally:
                await daemon.stop()
    finally:
        await sim.stop()


def populate(sim: Simulator, rng: random.Random) -> tuple[list[str], np.ndarray]:
    """Promotions in a random order, and the new-job rate of each (0 for the dormant)."""
    now = time.time()
    promotions = [sim.add_promotion("promotion") for _ in range(PROMOTIONS)]
    rng.shuffle(promotions)
    rates = np.zeros(PROMOTIONS)
    for i, pid in enumerate(promotions):
        if i < HOT:
            rates[i] = TOP / (i + 1)
            for _ in range(max(1, round(HISTORY / (i + 1)))):
                sim.add_job(pid, status="completed", created_at=now - rng.uniform(60, 3 * 86400))
        else:
            sim.add_job(pid, status="completed", created_at=now - 30 * 86400)
    return promotions, rates


async def arrivals(
    sim: Simulator, promotions: list[str], rates: np.ndarray, rng: random.Random
) -> dict[str, tuple[int, float]]:
    """New jobs for RUN seconds; job id -> (promotion index, creation time)."""
    moments = sorted(
        (at, i)
        for i in range(HOT)
        for at in np.cumsum([rng.expovariate(rates[i]) for _ in range(int(3 * RUN * rates[i]) + 8)])
        if at < RUN
    )
    begin = time.monotonic()
    made: dict[str, tuple[int, float]] = {}
    for at, i in moments:
        await asyncio.sleep(max(0.0, begin + at - time.monotonic()))
        created = time.time()
        made[sim.add_job(promotions[i], status="completed", created_at=created)] = (i, created)
    return made


def poll_starts(sim: Simulator, promotions: list[str]) -> list[list[float]]:
    """When each promotion's polls began: its first page's request, from the simulator's log."""
    index = {f"/v2/promotions/{pid}/jobs": i for i, pid in enumerate(promotions)}
    starts: list[list[float]] = [[] for _ in promotions]
    for request in sim.requests:
        i = index.get(request.path)
        if i is not None and request.query.get("page[offset]", "0") == "0":
            starts[i].append(request.at)
    return starts


def expected_delay(starts: list[float], begin: float, end: float) -> float:
    """Mean wait from a uniformly random moment of [begin, end) to the next poll's start."""
    total, at = 0.0, begin
    for start in starts:
        if start <= at:
            continue
        upto = min(start, end)
        total += ((start - at) ** 2 - (start - upto) ** 2) / 2
        at = upto
        if at >= end:
            break
    return total / (end - begin)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def run() -> Result:
    result = Result(NAME, TITLE)
    clock = Stopwatch()
    rng = random.Random(19)
    sim = Simulator(seed=19)
    sim.spawn_rate = 0
    promotions, rates = populate(sim, rng)
    async with watching(sim, promotions) as daemon:
        await asyncio.sleep(SETTLE)
        first = len(sim.requests)
        begin = time.time()
        made = await arrivals(sim, promotions, rates, rng)
        end = time.time()
        window = [r for r in sim.requests[first:] if r.at < end]
        spent = sum(1 for r in window if r.path.endswith("/jobs")) / (end - begin)
        others = len(window) - round(spent * (end - begin))
        await daemon.wait_count("job_discovered", len(made), timeout=MAX_INTERVAL + 30)
        async with aiohttp.ClientSession() as session:
            async with session.get(daemon.url + "/metrics") as response:
                samples = parse_metrics(await response.text())
            async with session.get(daemon.url + "/status.json?per_page=1000") as response:
                status = await response.json()
    delays = [
        _epoch(str(e["timestamp"])) - made[str(e["job_id"])][1]
        for _, e in daemon.events("job_discovered")
        if str(e["job_id"]) in made
    ]
    count = value(samples, "epcc_monitor_detection_delay_seconds_count") or 0.0
    total = value(samples, "epcc_monitor_detection_delay_seconds_sum") or 0.0
    pages = {row["id"]: row for row in status["promotions"]}
    costs = np.array(
        [max(1, math.ceil(sum(pages[pid]["jobs"].values()) / PAGE)) for pid in promotions],
        dtype=float,
    )
    starts = poll_starts(sim, promotions)
    planned = np.array([pages[pid]["poll_interval_seconds"] for pid in promotions])
    gaps = [
        float(np.mean(np.diff([t for t in s if begin <= t < end]))) / planned[i]
        for i, s in enumerate(starts)
        if sum(begin <= t < end for t in s) > 2
    ]
    waits = np.array([expected_delay(s, begin, end) for s in starts])
    hot = rates > 0
    monitor = float(np.sum(rates[hot] * waits[hot]) / np.sum(rates[hot]))
    round_robin = float(np.sum(costs)) / spent / 2
    best = optimum_intervals(rates, costs, spent, MIN_INTERVAL, MAX_INTERVAL)
    optimal = float(np.sum(rates[hot] * best[hot] / 2) / np.sum(rates[hot]))
    ratio = monitor / optimal
    result.check("mean delay / optimum", round(ratio, 3), "x", "<= 1.25", ratio <= 1.25)
    ratio = monitor / round_robin
    result.check("mean delay / round robin", round(ratio, 3), "x", "<= 0.25", ratio <= 0.25)
    result.check("monitor mean (from its polls)", round(monitor, 2), "s")
    result.check("round robin mean", round(round_robin, 2), "s")
    result.check("optimum mean", round(optimal, 2), "s")
    client = sum(delays) / len(delays)
    result.check("jobs seen: mean", round(client, 2), "s")
    result.check("jobs seen: p99", round(percentile(delays, 99), 2), "s")
    own = total / count if count else math.nan
    agree = count == len(made) and abs(own - client) < 0.25
    result.check("daemon's histogram mean", round(own, 2), "s", "within 0.25 s of the jobs'", agree)
    result.check("requests/s in the window", round(spent, 1), "", f"<= {RATE:g}", spent <= RATE)
    result.data = {
        "setup": {
            "promotions": PROMOTIONS,
            "hot": HOT,
            "max_requests_per_second": RATE,
            "interval_seconds": INTERVAL,
            "min_interval_seconds": MIN_INTERVAL,
            "max_interval_seconds": MAX_INTERVAL,
            "history": f"the k-th of {HOT} has {HISTORY}/k jobs over three days",
            "run": f"{RUN:g} s of new jobs at {TOP:g}/k per second",
        },
        "jobs": len(made),
        "histogram_count": count,
        "monitor_mean_s": monitor,
        "round_robin_mean_s": round_robin,
        "optimum_mean_s": optimal,
        "jobs_seen_mean_s": client,
        "daemon_histogram_mean_s": own,
        "requests_per_second": spent,
        "gap_over_planned_interval_mean": float(np.mean(gaps)),
        "poll_duration_mean_s": (value(samples, "epcc_monitor_poll_duration_seconds_sum") or 0)
        / (value(samples, "epcc_monitor_poll_duration_seconds_count") or 1),
        "schedule_lag_s": value(samples, "epcc_monitor_schedule_lag_seconds"),
        "other_requests_in_window": others,  # (token, name lookups: none with discovery)
        "budget_wait_s": value(samples, "epcc_monitor_budget_wait_seconds_total"),
        "planned_intervals_s": sorted(planned.tolist())[:: PROMOTIONS // 20],
    }
    result.seconds = clock.elapsed
    return result


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run()).to_json(), indent=1))
