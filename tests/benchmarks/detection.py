"""Benchmark 4 — detection latency at 1,000 promotions: a job turns failed → the counter moves.

The simulator (in this process) holds 1,000 promotions. Some have a job `processing` (active:
polled every ACTIVE_INTERVAL), the rest only finished jobs (idle: polled every INTERVAL). The
intervals are the defaults (10 s / 60 s) scaled by 1/5 to fit the benchmark's time budget.
After the baseline, trials fire at random moments over WINDOW seconds, each on a promotion of
its own: an active trial turns its processing job `failed`; an idle trial gets a new job that
is already `failed` (created and failed between two polls). Latency is the daemon's
`job_failed` log timestamp minus the moment the simulator changed; the daemon increments
`epcc_promotion_job_failures_total` just before it logs that line (`Poller.poll`: metrics, then
logs), and at the end the counter's total on /metrics is checked against the trial count.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from monitor.simulator import Kind, Simulator
from tests.benchmarks.common import (
    RESULTS,
    Pace,
    Result,
    Stopwatch,
    daemon_watching,
    percentile,
)
from tests.support import parse_metrics

NAME = "detection"
TITLE = "Detection latency at 1,000 promotions (job turns failed -> counter moves)"
PROMOTIONS = 1_000
TRIALS = 60  # of each kind
BACKGROUND_ACTIVE = 40  # active promotions that never fail, besides the active trials
ACTIVE_INTERVAL = 2.0
INTERVAL = 12.0
RATE = 200.0
WINDOW = 24.0  # trials start at random moments over this long
ERROR = "codes limit exceeded"
TERMINAL = ("completed", "failed", "cancelled")
PACE = Pace(rate=RATE, interval=INTERVAL, active_interval=ACTIVE_INTERVAL)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _populate(sim: Simulator, rng: random.Random) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """All promotions, and the processing job of each active one (trial or background)."""
    promotions: list[tuple[str, str]] = []
    processing: dict[str, str] = {}
    for i in range(PROMOTIONS):
        kind: Kind = "rule_promotion" if i % 3 == 2 else "promotion"
        pid = sim.add_promotion(kind)
        # History from before the monitor started, older than its baseline lookback: only the
        # trials' failures are news.
        history = time.time() - 2 * 3600
        for _ in range(rng.randint(1, 3)):
            status = rng.choice(TERMINAL)
            error = ERROR if status == "failed" else None
            sim.add_job(pid, status=status, error=error, created_at=history)
        if i < TRIALS + BACKGROUND_ACTIVE:
            processing[pid] = sim.add_job(pid, status="processing")
        promotions.append((pid, kind))
    return promotions, processing


async def _failures_total(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        samples = parse_metrics(await response.text())
    return sum(v for (name, _), v in samples.items() if name == "epcc_promotion_job_failures_total")


def _summary(values: list[float], interval: float) -> dict[str, Any]:
    return {
        "trials": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p90_s": round(percentile(values, 90), 3),
        "p99_s": round(percentile(values, 99), 3),
        "max_s": round(max(values), 3) if values else None,
        "mean_s": round(sum(values) / len(values), 3) if values else None,
        "interval_s": interval,
        "expected_p50_s": interval / 2,
        "p50_over_half_interval": round(percentile(values, 50) / (interval / 2), 3),
        "latencies_s": [round(v, 3) for v in sorted(values)],
    }


def _plot(latencies: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for (kind, values), interval, color in zip(
        latencies.items(), (ACTIVE_INTERVAL, INTERVAL), ("tab:red", "tab:blue"), strict=True
    ):
        ordered = sorted(values)
        n = len(ordered)
        ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", color=color, label=kind)
        ax.axvline(interval, color=color, ls=":", lw=1)
        ax.plot([0, interval], [0, 1], color=color, ls="--", lw=0.8, alpha=0.6)
    ax.set_xlabel("seconds from the job failing to the counter moving")
    ax.set_ylabel("fraction of trials")
    ax.set_title(
        f"Detection latency, {PROMOTIONS:,} promotions (dotted: interval; dashed: ideal uniform)"
    )
    ax.set_xlim(left=0)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Observed:
    """The failures made, as the simulator made them and as the daemon reported them."""

    changed: dict[str, tuple[str, float]]  # job id -> (trial kind, when it failed)
    counter: float  # epcc_promotion_job_failures_total on /metrics at the end
    poll_failed: int
    job_failed: list[tuple[float, dict[str, Any]]]  # (arrival time, event)


def _trials(promotions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(kind, promotion id): the first TRIALS active promotions, then TRIALS idle ones."""
    active = [pid for pid, _ in promotions[:TRIALS]]
    idle = [pid for pid, _ in promotions[TRIALS + BACKGROUND_ACTIVE :]][:TRIALS]
    return [("active", pid) for pid in active] + [("idle", pid) for pid in idle]


async def _fail_at_random(
    sim: Simulator,
    processing: dict[str, str],
    trials: list[tuple[str, str]],
    rng: random.Random,
) -> dict[str, tuple[str, float]]:
    """Fail one job per trial at random moments over WINDOW; job id -> (kind, when it failed)."""
    changed: dict[str, tuple[str, float]] = {}
    offsets = sorted((rng.uniform(0, WINDOW), kind, pid) for kind, pid in trials)
    begin = time.monotonic()
    for offset, kind, pid in offsets:
        await asyncio.sleep(max(0.0, begin + offset - time.monotonic()))
        if kind == "active":
            job_id = processing[pid]
            sim.set_job_status(pid, job_id, "failed", error=ERROR)
        else:
            job_id = sim.add_job(pid, status="failed", error=ERROR)
        changed[job_id] = (kind, time.time())
    return changed


async def _observe(
    sim: Simulator,
    promotions: list[tuple[str, str]],
    processing: dict[str, str],
    rng: random.Random,
) -> Observed:
    """Fail the trials' jobs once the daemon is past its baseline; wait until all are reported."""
    trials = _trials(promotions)
    async with daemon_watching(sim, promotions, PACE, prefix="bench-detect-") as daemon:
        await asyncio.sleep(ACTIVE_INTERVAL)  # past the baselines' off-grid polls
        changed = await _fail_at_random(sim, processing, trials, rng)
        await daemon.wait_count("job_failed", len(trials), timeout=INTERVAL + 10)
        return Observed(
            changed,
            await _failures_total(daemon.url),
            daemon.counts.get("poll_failed", 0),
            daemon.events("job_failed"),
        )


def _latencies(observed: Observed) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds from failing to the log line, per trial kind; and the log lines' arrival delays."""
    latencies: dict[str, list[float]] = {"active": [], "idle": []}
    arrival_delay = []
    for arrived, event in observed.job_failed:
        trial = observed.changed.get(str(event.get("job_id")))
        if trial is None:
            continue
        kind, when = trial
        logged = _epoch(str(event["timestamp"]))
        latencies[kind].append(logged - when)
        arrival_delay.append(arrived - logged)
    return latencies, arrival_delay


def _judge(result: Result, summaries: dict[str, dict[str, Any]], observed: Observed) -> None:
    for kind, interval in (("active", ACTIVE_INTERVAL), ("idle", INTERVAL)):
        s = summaries[kind]
        # Polls are spread uniformly, so p50 should sit near interval/2 (the scheduler's tick
        # and budget queueing add a little, and 60 trials leave the median ~±0.07 x interval
        # of sampling noise), and nothing should wait much longer than one interval.
        p50_ok = s["p50_s"] <= 0.7 * interval
        p99_ok = s["p99_s"] <= 1.1 * interval
        result.check(
            f"{kind} p50 ({interval:g} s interval)",
            s["p50_s"],
            "s",
            f"~{interval / 2:g} (<= {0.7 * interval:g})",
            p50_ok,
        )
        result.check(
            f"{kind} p99 ({interval:g} s interval)",
            s["p99_s"],
            "s",
            f"<= {1.1 * interval:g}",
            p99_ok,
        )
    trials = len(observed.changed)
    counted = observed.counter == trials
    result.check("failures counted on /metrics", observed.counter, "", f"== {trials}", counted)


SETUP = {
    "promotions": PROMOTIONS,
    "jobs_per_promotion": "1-3 finished, plus one processing job on active ones",
    "active_promotions": TRIALS + BACKGROUND_ACTIVE,
    "trials_per_kind": TRIALS,
    "active_interval_seconds": ACTIVE_INTERVAL,
    "interval_seconds": INTERVAL,
    "scaled_from_defaults": "10 s / 60 s scaled by 1/5",
    "max_requests_per_second": RATE,
    "offered_rate": round(
        (TRIALS + BACKGROUND_ACTIVE) / ACTIVE_INTERVAL
        + (PROMOTIONS - TRIALS - BACKGROUND_ACTIVE) / INTERVAL,
        1,
    ),
    "window_s": WINDOW,
    "measure": "daemon's job_failed log timestamp - simulator change time.time()",
}


def _data(
    result: Result,
    summaries: dict[str, dict[str, Any]],
    observed: Observed,
    arrival_delay: list[float],
) -> dict[str, Any]:
    return {
        "setup": SETUP,
        "active": summaries["active"],
        "idle": summaries["idle"],
        "failures_total_on_metrics": observed.counter,
        "trials_total": len(observed.changed),
        "poll_failed_events": observed.poll_failed,
        "log_line_arrival_delay_p50_s": round(percentile(arrival_delay, 50), 4),
        "passed": all(c.passed is not False for c in result.checks),
    }


async def run() -> Result:
    result = Result(NAME, TITLE)
    clock = Stopwatch()
    rng = random.Random(4)
    sim = Simulator(seed=4)
    promotions, processing = _populate(sim, rng)
    observed = await _observe(sim, promotions, processing, rng)
    latencies, arrival_delay = _latencies(observed)
    summaries = {
        "active": _summary(latencies["active"], ACTIVE_INTERVAL),
        "idle": _summary(latencies["idle"], INTERVAL),
    }
    _judge(result, summaries, observed)
    result.data = _data(result, summaries, observed, arrival_delay)
    plot = RESULTS / f"{NAME}.png"
    _plot(latencies, plot)
    result.plot = plot.name
    result.seconds = clock.elapsed
    return result


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run()).to_json(), indent=1))
