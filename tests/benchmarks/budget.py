"""Benchmark 1 — budget adherence: 300 promotions at 25 requests/s, as the store sees them.

The daemon runs as a subprocess with `poll.interval_seconds: 300`, so its first cycle is the
baseline of all 300 promotions and nothing else. The simulator runs in this process (300
promotions of 1-3 jobs cost it little) and records the arrival time of every request, tokens
included. From those: the peak number of requests in any 1 s sliding window (the store's
limit), and the first full cycle's duration against the floor P/R.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from monitor.simulator import TOKEN_PATH, Kind, RecordedRequest, Simulator
from tests.benchmarks.common import (
    RESULTS,
    Pace,
    Result,
    Stopwatch,
    daemon_watching,
)

NAME = "budget"
TITLE = "Budget adherence: 300 promotions at max_requests_per_second 25"
PROMOTIONS = 300
RATE = 25.0
INTERVAL = 300.0
CYCLE_TARGET_FACTOR = 1.15
TERMINAL = ("completed", "failed", "cancelled")
PACE = Pace(rate=RATE, interval=INTERVAL, active_interval=INTERVAL)


def peak_in_window(times: list[float], window: float = 1.0) -> tuple[int, float]:
    """Most requests whose arrival lies in any half-open window [t, t + window); and that t."""
    best, at = 0, times[0] if times else 0.0
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + window, lo=i) - i
        if count > best:
            best, at = count, start
    return best, at


def _populate(sim: Simulator, rng: random.Random) -> list[tuple[str, str]]:
    promotions: list[tuple[str, str]] = []
    for i in range(PROMOTIONS):
        kind: Kind = "rule_promotion" if i % 3 == 2 else "promotion"
        pid = sim.add_promotion(kind)
        for _ in range(rng.randint(1, 3)):
            status = rng.choice(TERMINAL)
            error = "codes limit exceeded" if status == "failed" else None
            sim.add_job(pid, status=status, error=error)
        promotions.append((pid, kind))
    return promotions


def _plot(times: list[float], first_polls: list[float], floor: float, path: Path) -> None:
    origin = times[0]
    fig, (rate, cycle) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    xs = [t - origin for t in times]
    # requests in the 1 s window ending at each request
    counts = [i - bisect.bisect_right(times, t - 1.0) + 1 for i, t in enumerate(times)]
    rate.plot(xs, counts, lw=1, label="requests in the trailing 1 s window")
    rate.axhline(RATE, color="red", ls="--", lw=1, label=f"budget {RATE:g}/s")
    rate.set_ylabel("requests / 1 s window")
    rate.set_ylim(0, RATE * 1.4)
    rate.legend(loc="lower right", fontsize=8)
    rate.set_title("What the store sees (simulator arrival times, token requests included)")
    polled = [t - origin for t in first_polls]
    cycle.plot(polled, range(1, len(polled) + 1), lw=1.5, label="promotions polled (first poll)")
    start = polled[0]
    cycle.plot(
        [start, start + floor],
        [1, len(polled)],
        color="grey",
        ls="--",
        lw=1,
        label=f"floor P/R = {floor:g} s",
    )
    cycle.axvline(start + floor * CYCLE_TARGET_FACTOR, color="red", ls=":", lw=1, label="target")
    cycle.set_xlabel("seconds since the first request")
    cycle.set_ylabel("promotions")
    cycle.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Observed:
    """What the run left behind: the store's request log, oldest first, and the daemon's counts."""

    requests: list[RecordedRequest]
    poll_failed: int
    wall_end: float  # time.time() when the watching stopped


@dataclass(frozen=True)
class Traffic:
    """The store's view: arrival times, request kinds, and each promotion's first poll."""

    times: list[float]
    jobs: int
    tokens: int
    non_200: int
    first_polls: list[float]
    again: dict[str, float]  # seconds from a promotion's first poll to its second, if one came
    peak: int
    peak_at: float

    @property
    def cycle(self) -> float:
        return self.first_polls[-1] - self.first_polls[0]


async def _watch_first_cycle(sim: Simulator, promotions: list[tuple[str, str]]) -> Observed:
    """The store's requests up to a little after the daemon's baseline cycle."""
    async with daemon_watching(sim, promotions, PACE, prefix="bench-budget-") as daemon:
        # A little longer, to see that nothing follows the cycle at once.
        await asyncio.sleep(2.0)
        failed_polls = daemon.counts.get("poll_failed", 0)
        wall_end = time.time()
    return Observed(sorted(sim.requests, key=lambda r: r.at), failed_polls, wall_end)


def _traffic(requests: list[RecordedRequest]) -> Traffic:
    times = [r.at for r in requests]
    jobs = [r for r in requests if r.path.endswith("/jobs")]
    first: dict[str, float] = {}
    again: dict[str, float] = {}
    for r in jobs:
        if r.path in first:
            again.setdefault(r.path, r.at - first[r.path])
        first.setdefault(r.path, r.at)
    peak, peak_at = peak_in_window(times)
    return Traffic(
        times=times,
        jobs=len(jobs),
        tokens=sum(1 for r in requests if r.path == TOKEN_PATH),
        non_200=sum(1 for r in requests if r.status != 200),
        first_polls=sorted(first.values()),
        again=again,
        peak=peak,
        peak_at=peak_at,
    )


def _judge(result: Result, traffic: Traffic) -> tuple[bool, bool]:
    """The table's rows; whether the peak and the cycle met their targets."""
    floor = PROMOTIONS / RATE
    cycle = traffic.cycle
    peak_ok = traffic.peak <= RATE
    cycle_ok = cycle <= CYCLE_TARGET_FACTOR * floor
    result.check("peak requests in any 1 s window", traffic.peak, "req", f"<= {RATE:g}", peak_ok)
    result.check(
        "first full cycle (300 promotions)",
        cycle,
        "s",
        f"<= {CYCLE_TARGET_FACTOR * floor:.1f} (1.15 x P/R = {floor:g})",
        cycle_ok,
    )
    result.check("cycle / floor P/R", cycle / floor, "x", f"<= {CYCLE_TARGET_FACTOR}", cycle_ok)
    return peak_ok, cycle_ok


SETUP = {
    "promotions": PROMOTIONS,
    "jobs_per_promotion": "1-3 (terminal)",
    "max_requests_per_second": RATE,
    "interval_seconds": INTERVAL,
    "max_concurrent_polls": 8,
    "simulator": "in the benchmark process; times are request arrivals (time.time())",
}


def _data(observed: Observed, traffic: Traffic, peak_ok: bool, cycle_ok: bool) -> dict[str, Any]:
    times, first_polls, cycle = traffic.times, traffic.first_polls, traffic.cycle
    floor = PROMOTIONS / RATE
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "setup": SETUP,
        "requests_total": len(times),
        "token_requests": traffic.tokens,
        "jobs_requests": traffic.jobs,
        "non_200_answers": traffic.non_200,
        "poll_failed_events": observed.poll_failed,
        "peak_requests_1s_window": traffic.peak,
        "peak_window_start_offset_s": round(traffic.peak_at - times[0], 3),
        "limit": RATE,
        "peak_passed": peak_ok,
        "first_cycle_s": round(cycle, 3),
        "floor_s": floor,
        "cycle_over_floor": round(cycle / floor, 4),
        "cycle_target_s": round(CYCLE_TARGET_FACTOR * floor, 2),
        "cycle_passed": cycle_ok,
        "mean_rate_during_cycle": round((len(first_polls) - 1) / cycle, 3) if cycle else None,
        "min_gap_between_requests_ms": round(min(gaps) * 1000, 2) if gaps else None,
        "median_gap_between_requests_ms": round(sorted(gaps)[len(gaps) // 2] * 1000, 2)
        if gaps
        else None,
        "requests_after_cycle_within_2s": sum(
            1 for t in times if first_polls[-1] < t <= observed.wall_end
        ),
        "promotions_polled_twice": len(traffic.again),
        "seconds_between_first_and_second_poll": sorted(
            round(v, 2) for v in traffic.again.values()
        ),
    }


async def run() -> Result:
    result = Result(NAME, TITLE)
    clock = Stopwatch()
    sim = Simulator(seed=11)
    promotions = _populate(sim, random.Random(11))
    observed = await _watch_first_cycle(sim, promotions)
    traffic = _traffic(observed.requests)
    peak_ok, cycle_ok = _judge(result, traffic)
    result.data = _data(observed, traffic, peak_ok, cycle_ok)
    plot = RESULTS / f"{NAME}.png"
    _plot(traffic.times, traffic.first_polls, PROMOTIONS / RATE, plot)
    result.plot = plot.name
    result.seconds = clock.elapsed
    return result


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run()).to_json(), indent=1))
