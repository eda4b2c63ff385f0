"""Benchmark — poll where jobs happen: detection delay for the same requests, in virtual time.

The real PollPlan and JobRates with an injected clock and no HTTP: 10,000 promotions, a request
budget of 5 requests/s served one request at a time (what RequestBudget does), a poll reading
`ceil(jobs held / 100)` pages and seeing, when it ends, every job created before it began.
Jobs arrive as Poisson processes; each promotion has a week of them before the start (the state
the monitor loads, and what the rates are derived from). Two workloads:

- skewed: 1,000 promotions (10%) get jobs at Zipf(1.0) rates (10 an hour for the busiest, down to
  one in 100 hours), the other 9,000 are dormant with a surprise job about once in 90 days;
- uniform: every promotion gets a job every two hours.

Three schedules see the same jobs: the monitor; round robin (today's: every promotion every
`sum(pages) / budget` s, since `promotions / interval_seconds` is far above the budget); and the
√-law optimum computed here from the true rates and page costs (f ∝ √(λ/c) within
[min, max] interval, spending what round robin spends, solved by bisection: the planner's code is
not used for it). Both references poll at fixed phases on their grids. A third, the bound, is
the √-law fed the best estimate the loaded week allows: the posterior mean rate given each
promotion's count of jobs in the week, with the workload's true distribution of rates as the
prior (which no monitor knows, and without decay, so a promotion gone quiet would never cool):
what separates it from the optimum is information, not estimator. Delay: when the poll that
sees a job ends, minus the job's created_at, for jobs created in the measured window.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from monitor.client import JobsTarget
from monitor.models import PromotionKind
from monitor.planner import PollPlan, phase_of
from monitor.rates import DAY, JobRates
from tests.benchmarks.common import RESULTS, Result, percentile

NAME = "polling"
TITLE = "Poll where jobs happen: 10,000 promotions at 5 requests/s (virtual time)"
PROMOTIONS = 10_000
BUDGET = 5.0  # requests/s
INTERVAL = 60.0  # poll.interval_seconds: 10,000 / 60 is far above the budget, which binds
MIN_INTERVAL = 10.0
MAX_INTERVAL = 7200.0  # the floor, 10,000 / 7,200 = 1.4 requests/s, leaves 3.6 to follow jobs
PAGE = 100
RETENTION = 7 * DAY
WARMUP = 3 * 3600.0  # the baselines (10,000 polls: ~35 min) and the first plans settle
MEASURE = 10 * 3600.0
END = WARMUP + MEASURE + MAX_INTERVAL + 1800
HOT = 1_000
HOT_TOP = 10 / 3600  # jobs/s of the busiest promotion; the k-th gets HOT_TOP / k
SURPRISE = 1 / (90 * DAY)
UNIFORM = 1 / 7200
BASE = "https://useast.api.elasticpath.com"
SEED = 19


@dataclass
class Workload:
    name: str
    ids: list[str]
    rates: np.ndarray  # true jobs/s
    jobs: list[list[float]]  # created_at of each promotion's jobs, sorted, from -RETENTION


def workload(name: str, rates: np.ndarray, rng: np.random.Generator) -> Workload:
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(PROMOTIONS)]
    span = RETENTION + END
    counts = rng.poisson(rates * span)
    jobs = [sorted((rng.random(n) * span - RETENTION).tolist()) for n in counts]
    return Workload(name, ids, rates, jobs)


def skewed(rng: np.random.Generator) -> Workload:
    rates = np.full(PROMOTIONS, SURPRISE)
    hot = rng.choice(PROMOTIONS, HOT, replace=False)
    rates[hot] = HOT_TOP / np.arange(1, HOT + 1)
    return workload("skewed", rates, rng)


def uniform(rng: np.random.Generator) -> Workload:
    return workload("uniform", np.full(PROMOTIONS, UNIFORM), rng)


def pages(jobs: list[float], at: float) -> int:
    held = bisect.bisect_right(jobs, at) - bisect.bisect_right(jobs, at - RETENTION)
    return max(1, math.ceil(held / PAGE))


def measured(created: float) -> bool:
    return WARMUP <= created < WARMUP + MEASURE


@dataclass
class Run:
    expected: float = 0.0  # mean delay over Poisson arrivals at the true rates (see `expected`)
    delays: list[float] = field(default_factory=list)
    requests: float = 0.0  # made in the measured window
    longest_gap: float = 0.0  # between two polls of one promotion, over the measured window
    intervals: list[float] = field(default_factory=list)  # as planned at the window's end


def expected_delay(polls: list[tuple[float, float]]) -> float:
    """Mean delay of a job created at a uniformly random moment of the measured window, given
    the (start, end) of every poll of its promotion: the poll that sees it is the first to start
    after it. Exact, so the comparison carries no noise from which jobs happened to arrive."""
    total, begin, finish = 0.0, WARMUP, WARMUP + MEASURE
    for start, end in polls:
        if start <= begin:
            continue
        # Jobs created in [begin, min(start, finish)) are seen when this poll ends.
        upto = min(start, finish)
        total += ((end - begin) ** 2 - (end - upto) ** 2) / 2
        begin = upto
        if begin >= finish:
            break
    return total / MEASURE


def monitor(w: Workload) -> Run:
    """The monitor: PollPlan dispatching to a server of BUDGET requests/s, JobRates from jobs."""
    clock = [0.0]
    rates = JobRates(window=RETENTION)
    plan = PollPlan(
        interval=INTERVAL,
        active_interval=MIN_INTERVAL,
        anchor=0.0,
        min_interval=MIN_INTERVAL,
        max_interval=MAX_INTERVAL,
        budget=BUDGET,
        rate=lambda pid: rates.rate(pid, clock[0]),
    )
    index = {pid: i for i, pid in enumerate(w.ids)}
    seen = []
    for pid, jobs in zip(w.ids, w.jobs, strict=True):
        seen.append(bisect.bisect_right(jobs, 0.0))
        rates.observe(pid, jobs[: seen[-1]], 0.0)  # the state the monitor loads
    plan.reconcile(
        {pid: JobsTarget.build(BASE, pid, PromotionKind.PROMOTION, None, PAGE) for pid in w.ids},
        0.0,
    )
    run = Run()
    last = [-math.inf] * PROMOTIONS
    polls: list[list[tuple[float, float]]] = [[] for _ in range(PROMOTIONS)]
    slot = 1 / BUDGET
    now = 0.0
    while now < END:
        clock[0] = now
        due = plan.take_due(now, 1)
        if not due:
            now += slot  # (the scheduler's tick; nothing is due)
            continue
        pid = due[0].promotion_id
        i = index[pid]
        jobs = w.jobs[i]
        cost = pages(jobs, now)
        upto = bisect.bisect_right(jobs, now)
        polls[i].append((now, now + cost * slot))
        now += cost * slot  # a request every 1/BUDGET s
        clock[0] = now
        run.delays.extend(now - c for c in jobs[seen[i] : upto] if measured(c))
        if upto > seen[i]:
            seen[i] = upto
            first = bisect.bisect_left(jobs, now - RETENTION)
            rates.observe(pid, jobs[first:upto], now)
        if WARMUP <= now < WARMUP + MEASURE:
            run.requests += cost
        if now >= WARMUP and last[i] < WARMUP + MEASURE:  # a wait that overlaps the window
            run.longest_gap = max(run.longest_gap, now - max(last[i], WARMUP))
        last[i] = now
        plan.finished(pid, now, active=False, requests=cost)
    run.intervals = [plan.poll_interval(pid) for pid in w.ids]
    delays = np.array([expected_delay(p) for p in polls])
    run.expected = float(np.sum(w.rates * delays) / np.sum(w.rates))
    return run


def periodic(w: Workload, intervals: np.ndarray, costs: np.ndarray) -> Run:
    """A fixed schedule: promotion i polled every intervals[i] at its phase, each poll taking
    costs[i] / BUDGET s to read."""
    run = Run(
        expected=float(np.sum(w.rates * (intervals / 2 + costs / BUDGET)) / np.sum(w.rates)),
        requests=float(np.sum(costs / intervals)) * MEASURE,
        intervals=intervals.tolist(),
    )
    for pid, jobs, interval, cost in zip(w.ids, w.jobs, intervals, costs, strict=True):
        created = np.array([c for c in jobs if measured(c)])
        if not created.size:
            continue
        offset = phase_of(pid) * interval
        start = offset + np.ceil((created - offset) / interval) * interval
        run.delays.extend((start - created + cost / BUDGET).tolist())
    run.longest_gap = float(np.max(intervals))
    return run


def optimum_intervals(
    rates: np.ndarray,
    costs: np.ndarray,
    spend: float,
    lo: float = MIN_INTERVAL,
    hi: float = MAX_INTERVAL,
) -> np.ndarray:
    """f_i = clip(k √(λ_i / c_i), 1/hi, 1/lo) with Σ c_i f_i = spend, k by bisection (not the
    planner's code: the reference it is measured against)."""
    weights = np.sqrt(np.maximum(rates, 1e-12) / costs)

    def spent(k: float) -> float:
        return float(np.sum(costs * np.clip(k * weights, 1 / hi, 1 / lo)))

    low, high = 0.0, 1.0
    while spent(high) < spend:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) < spend else (low, middle)
    intervals: np.ndarray = 1 / np.clip(low * weights, 1 / hi, 1 / lo)
    return intervals


def bound_rates(w: Workload) -> np.ndarray:
    """E[λ | n jobs in the loaded week], the prior the workload's own rates (Poisson counts)."""
    counts = np.array([bisect.bisect_right(jobs, 0.0) for jobs in w.jobs])
    means = w.rates * RETENTION
    posterior = {}
    for n in np.unique(counts):
        log_likelihood = n * np.log(means) - means  # (n! cancels)
        weights = np.exp(log_likelihood - log_likelihood.max())
        posterior[n] = float(np.sum(w.rates * weights) / np.sum(weights))
    return np.array([posterior[n] for n in counts])


def summary(run: Run) -> dict[str, Any]:
    return {
        "expected_mean_s": round(run.expected, 1),
        "jobs": len(run.delays),
        "mean_s": round(sum(run.delays) / len(run.delays), 1),
        "p50_s": round(percentile(run.delays, 50), 1),
        "p99_s": round(percentile(run.delays, 99), 1),
        "requests_per_second": round(run.requests / MEASURE, 3),
        "longest_gap_s": round(run.longest_gap, 1),
    }


def compare(w: Workload) -> dict[str, Run]:
    costs = np.array([pages(jobs, WARMUP + MEASURE / 2) for jobs in w.jobs], dtype=float)
    # Today's schedule: every promotion every interval_seconds, or as the budget allows.
    spend = min(float(np.sum(costs)) / INTERVAL, BUDGET)
    round_robin = np.full(PROMOTIONS, float(np.sum(costs)) / spend)
    return {
        "round robin": periodic(w, round_robin, costs),
        "monitor": monitor(w),
        "optimum": periodic(w, optimum_intervals(w.rates, costs, spend), costs),
        "bound": periodic(w, optimum_intervals(bound_rates(w), costs, spend), costs),
    }


COLORS = {
    "round robin": "tab:gray",
    "monitor": "tab:blue",
    "optimum": "tab:green",
    "bound": "tab:orange",
}


def plot(runs: dict[str, dict[str, Run]], path: Any) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (name, by) in zip(axes, runs.items(), strict=True):
        for label, run in by.items():
            ordered = np.sort(np.array(run.delays))
            y = np.arange(1, len(ordered) + 1) / len(ordered)
            ax.step(
                ordered,
                y,
                where="post",
                color=COLORS[label],
                label=f"{label} (mean {run.expected:.0f} s)",
            )
        ax.set_xscale("log")
        ax.set_xlabel("seconds from a job's creation to the poll that sees it")
        ax.set_title(f"{name} (legend: mean over Poisson arrivals at the true rates)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("fraction of jobs")
    fig.suptitle(
        f"{PROMOTIONS:,} promotions at {BUDGET:g} requests/s, intervals {MIN_INTERVAL:g}-"
        f"{MAX_INTERVAL:g} s (virtual time)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def judge(result: Result, runs: dict[str, dict[str, Run]]) -> None:
    def mean(run: Run) -> float:
        return run.expected

    skew, flat = runs["skewed"], runs["uniform"]
    ratio = mean(skew["monitor"]) / mean(skew["optimum"])
    result.check("skewed: mean delay / optimum", round(ratio, 3), "x", "<= 1.25", ratio <= 1.25)
    ratio = mean(skew["monitor"]) / mean(skew["round robin"])
    result.check("skewed: mean delay / round robin", round(ratio, 4), "x", "<= 0.25", ratio <= 0.25)
    ratio = mean(skew["bound"]) / mean(skew["round robin"])
    result.check("skewed: the bound's mean delay / round robin", round(ratio, 4), "x")
    ratio = mean(flat["monitor"]) / mean(flat["round robin"])
    result.check(
        "uniform: mean delay / round robin", round(ratio, 3), "x", "<= 1.05", ratio <= 1.05
    )
    for name, by in runs.items():
        for label in ("round robin", "monitor", "optimum", "bound"):
            run = by[label]
            result.check(f"{name}: {label} mean", round(mean(run)), "s")
            result.check(f"{name}: {label} mean of the jobs seen", round(np.mean(run.delays)), "s")
            result.check(f"{name}: {label} p99", round(percentile(run.delays, 99)), "s")
        gap = by["monitor"].longest_gap
        # One poll: the longest a poll can take (its pages at the budget) and wait for its slot.
        bound = MAX_INTERVAL + 60
        result.check(
            f"{name}: longest gap between polls", round(gap), "s", f"<= {bound:g}", gap <= bound
        )
        spent, baseline = by["monitor"].requests, by["round robin"].requests
        # (requests are counted by the polls that end in the window: one poll either way)
        result.check(
            f"{name}: requests / round robin's",
            round(spent / baseline, 4),
            "x",
            "<= 1 (+ one poll)",
            spent <= baseline + 20,
        )


async def run(seed: int = SEED) -> Result:
    result = Result(NAME, TITLE)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    runs = {w.name: compare(w) for w in (skewed(rng), uniform(rng))}
    judge(result, runs)
    result.data = {
        "setup": {
            "promotions": PROMOTIONS,
            "budget_requests_per_second": BUDGET,
            "interval_seconds": INTERVAL,
            "min_interval_seconds": MIN_INTERVAL,
            "max_interval_seconds": MAX_INTERVAL,
            "page_limit": PAGE,
            "history_days": RETENTION / DAY,
            "warmup_s": WARMUP,
            "measured_s": MEASURE,
            "skewed": f"{HOT} promotions at {HOT_TOP * 3600:g}/k jobs an hour (k = 1..{HOT}), "
            f"the rest one job in {1 / SURPRISE / DAY:g} days",
            "uniform": f"every promotion one job in {1 / UNIFORM / 3600:g} hours",
            "seed": seed,
        },
        **{name: {label: summary(r) for label, r in by.items()} for name, by in runs.items()},
    }
    path = RESULTS / f"{NAME}.png"
    plot(runs, path)
    result.plot = path.name
    result.seconds = time.perf_counter() - started
    return result


def sweep(seeds: list[int]) -> None:
    """The skewed ratios on other seeds (`python -m tests.benchmarks.polling 1 2 3`)."""
    for seed in seeds:
        runs = compare(skewed(np.random.default_rng(seed)))
        rr, optimum = runs["round robin"].expected, runs["optimum"].expected
        print(
            f"seed {seed}: monitor {runs['monitor'].expected / rr:.4f} x round robin, "
            f"{runs['monitor'].expected / optimum:.3f} x the optimum; "
            f"bound {runs['bound'].expected / rr:.4f} x round robin",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:]:
        sweep([int(seed) for seed in sys.argv[1:]])
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        print(json.dumps(asyncio.run(run()).to_json(), indent=1))
