"""Soak: an hour of simulated time at 1,000 promotions with random faults, in a few minutes.

`make soak` (`python -m tests.benchmarks.soak`); not part of `make test`.

The simulator runs in this process, so it can be stepped and faulted; the daemon runs as a
subprocess. Each step is one simulated minute: `Simulator.step()` moves every promotion's job
queue once (pending → processing → completed/failed, new jobs now and then). The next step is
taken only once the daemon has had a good answer for every promotion since the last one, so no
transition can happen unseen between two polls and every transition the simulator makes must
come out as exactly one `job_status_changed` event. Before each step a few promotions get a
transient fault (5xx, 429 with Retry-After, a timeout, a reset; once or twice), which the
daemon's retries must ride out without losing or inventing anything.

Finished jobs leave the daemon's snapshot after state.retention_days, which is set to two
minutes of wall time (about 30 simulated minutes) so the snapshot reaches its steady size
within the run; with the default 7 days it would grow with the store's history, by design.

Reported: RSS over time (must stay flat: at most +20% from the first sample after a warm-up of
one retention window to the end; the growth from the baseline itself is shown beside it), events
vs transitions (must match exactly), discovered vs spawned jobs, no job_vanished, the 429s the
store answered (all injected: the simulator enforces no rate limit of its own, so none can be
caused by the daemon) and the busiest one-second window of requests against the budget.
Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from monitor.simulator import Fault, RecordedRequest, Simulator
from tests.benchmarks.common import (
    RESULTS,
    DaemonProcess,
    Result,
    cpu_seconds,
    credentials,
    daemon_config,
    fmt,
    machine,
    rss_bytes,
    write_yaml,
)
from tests.support import parse_metrics

NAME = "soak"
TITLE = "Soak: an hour of simulated time at 1,000 promotions with random faults"
JOBS_PATH = "/v2/promotions/"
RSS_GROWTH_LIMIT = 0.20
RSS_EVERY = 2.0  # seconds between RSS samples
MB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    promotions: int = 1_000
    jobs: int = 5  # per promotion at the start: history plus one pending job
    steps: int = 60  # simulated minutes
    faults_per_step: int = 5
    # api.max_requests_per_second, the most the settings allow (loopback only): the budget
    # spaces grants conservatively, so 500 would leave the daemon polling ~300 per second.
    rate: float = 1_000.0
    interval: float = 2.5  # every promotion polled this often: 1,000 / 2.5 s = 400 requests/s
    timeout: float = 1.0  # api.timeout_seconds; loopback answers take milliseconds
    token_ttl: float = 90.0  # short, so tokens expire and are renewed during the soak
    retention: float = 120.0  # state.retention_days, in seconds of wall time
    # RSS growth is judged from the first sample this long after the baseline (default: one
    # retention window), once the snapshot has its steady size and the per-promotion counter
    # series of the usual transitions exist. 0 judges from the baseline itself.
    warmup: float | None = None
    seed: int = 1


def populate(sim: Simulator, options: Options) -> list[str]:
    """Promotions with finished history and one pending job each, so the queues move at once."""
    rng = random.Random(options.seed)
    now = time.time()
    ids: list[str] = []
    history = ("completed", "completed", "failed", "cancelled")
    for _ in range(options.promotions):
        pid = sim.add_promotion()
        for j in range(options.jobs - 1):
            status = rng.choice(history)
            created = now - 120 + j
            sim.add_job(
                pid,
                job_type=rng.choice(("code_generate", "code_export")),
                status=status,
                error="codes limit exceeded" if status == "failed" else None,
                created_at=created,
                updated_at=created + 30,
            )
        sim.add_job(pid, status="pending", created_at=now - 60)
        ids.append(pid)
    return ids


def random_fault(rng: random.Random, pid: str, options: Options) -> Fault:
    """A transient fault for one promotion: at most two requests, so its retries win."""
    kind = rng.choice(("500", "503", "429", "timeout", "reset"))
    # A timeout costs a whole api.timeout_seconds per attempt; once keeps the minutes short.
    times = 1 if kind == "timeout" else rng.randint(1, 2)
    if kind == "429":
        return Fault("status", status=429, retry_after="1", path_contains=pid, times=times)
    if kind == "timeout":
        return Fault("timeout", delay=options.timeout + 1, path_contains=pid, times=times)
    if kind == "reset":
        return Fault("reset", path_contains=pid, times=times)
    return Fault("status", status=int(kind), path_contains=pid, times=times)


class PollWatch:
    """Which promotions have had a good jobs answer since a given request index."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    async def all_polled(self, ids: Sequence[str], since: int, timeout: float) -> None:
        waiting = set(ids)
        unanswered: list[int] = []
        scanned = since
        deadline = time.monotonic() + timeout
        while waiting:
            requests = self._sim.requests
            unanswered.extend(range(scanned, len(requests)))
            scanned = len(requests)
            still: list[int] = []
            for index in unanswered:
                request = requests[index]
                if request.status == 0:
                    still.append(index)  # in flight (or never answered: a reset or a timeout)
                elif request.status == 200 and request.path.startswith(JOBS_PATH):
                    waiting.discard(request.path.split("/")[3])
            unanswered = still
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} promotions not polled within {timeout:g}s")
            await asyncio.sleep(0.05)


def busiest_second(requests: Sequence[RecordedRequest]) -> int:
    """The most requests that arrived within any one-second window."""
    times = sorted(r.at for r in requests)
    best = 0
    start = 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def sample_rss(pid: int, samples: list[tuple[float, float]], started: float) -> None:
    while True:
        with contextlib.suppress(OSError, RuntimeError):
            samples.append((round(time.monotonic() - started, 1), rss_bytes(pid) / MB))
        await asyncio.sleep(RSS_EVERY)


async def scrape(url: str) -> dict[str, float]:
    """The daemon's own counters at the end, summed over labels."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    totals: dict[str, float] = {}
    for (name, _), value in parse_metrics(text).items():
        totals[name] = totals.get(name, 0.0) + value
    return totals


async def settle(daemon: DaemonProcess, name: str, expected: int, quiet: float = 2.0) -> None:
    """Wait for the expected number of events, then a little more for any surplus."""
    with contextlib.suppress(TimeoutError):
        await daemon.wait_count(name, expected, timeout=30)
    await asyncio.sleep(quiet)


EVENTS = (
    "job_status_changed",
    "job_discovered",
    "job_failed",
    "job_vanished",
    "poll_failed",
    "request_retried",
    "token_refreshed",
    "state_write_failed",
)
METRICS = (
    "epcc_monitor_api_requests_total",
    "epcc_monitor_api_retries_total",
    "epcc_monitor_poll_errors_total",
    "epcc_monitor_budget_wait_seconds_total",
)


@dataclass(frozen=True)
class Baseline:
    """The moment the daemon had loaded every promotion once."""

    seconds: float  # since the start of the run
    rss_mb: float
    requests: int  # the simulator's request log up to here is the baseline's
    transitions: int


@dataclass(frozen=True)
class Soaked:
    """What the soak observed, for the checks and the JSON."""

    baseline: Baseline
    transitions: int  # made by the simulator after the baseline
    step_seconds: list[float]
    injected: Counter[str]  # requests faulted, by kind
    totals: dict[str, float]  # the daemon's counters at the end
    daemon_cpu: float
    # The daemon's live event counts: read after it stopped, they include its last lines.
    counts: dict[str, int]
    rss: list[tuple[float, float]]  # (seconds since the start, MB)
    exit_code: int | None = None


@dataclass(frozen=True)
class Memory:
    """RSS at the end against the baseline and against the first sample after the warm-up."""

    samples: list[tuple[float, float]]
    end: float
    growth_from_baseline: float
    warm_at: float
    warm_mb: float
    growth: float


@dataclass(frozen=True)
class Traffic:
    """The store's answers after the baseline, and the jobs it spawned during the soak."""

    requests: int
    statuses: Counter[int]
    busiest: int
    spawned: int


def soak_config(directory: Path, sim: Simulator, ids: Sequence[str], options: Options) -> Path:
    document = daemon_config(
        directory,
        **credentials(sim),
        promotions=[(pid, "promotion") for pid in ids],
        rate=options.rate,
        interval=options.interval,
        active_interval=options.interval,
        concurrency=64,
        timeout=options.timeout,
    )
    document["poll"]["stuck_after_seconds"] = 86_400
    document["state"]["retention_days"] = options.retention / 86_400
    return write_yaml(directory / "config.yaml", document)


async def await_baseline(
    daemon: DaemonProcess,
    sim: Simulator,
    options: Options,
    clock: float,
    rss: list[tuple[float, float]],
) -> Baseline:
    await daemon.wait_count("baseline_loaded", options.promotions, timeout=300)
    baseline = Baseline(
        time.monotonic() - clock, rss_bytes(daemon.pid) / MB, len(sim.requests), sim.transitions
    )
    rss.append((round(baseline.seconds, 1), baseline.rss_mb))
    print(
        f"baseline of {options.promotions} promotions in {baseline.seconds:.1f}s; "
        f"RSS {baseline.rss_mb:.1f} MB",
        flush=True,
    )
    return baseline


def inject_faults(
    sim: Simulator, rng: random.Random, ids: list[str], options: Options, injected: Counter[str]
) -> None:
    for pid in rng.sample(ids, options.faults_per_step):
        fault = random_fault(rng, pid, options)
        kind = f"{fault.status}" if fault.kind == "status" else fault.kind
        injected[kind] += fault.times or 0
        sim.inject(fault)


async def simulate_minutes(
    daemon: DaemonProcess,
    sim: Simulator,
    rng: random.Random,
    ids: list[str],
    options: Options,
    baseline: Baseline,
    rss: list[tuple[float, float]],
) -> tuple[list[float], Counter[str]]:
    """Fault, step, wait until every promotion was polled; each step's seconds, faults made."""
    watch = PollWatch(sim)
    step_seconds: list[float] = []
    injected: Counter[str] = Counter()
    for step in range(options.steps):
        step_started = time.monotonic()
        mark = len(sim.requests)
        inject_faults(sim, rng, ids, options, injected)
        sim.step()
        await watch.all_polled(ids, mark, timeout=120)
        step_seconds.append(time.monotonic() - step_started)
        if (step + 1) % 10 == 0:
            print(
                f"  minute {step + 1:>3}/{options.steps}: "
                f"{sim.transitions - baseline.transitions} transitions, "
                f"{daemon.counts.get('job_status_changed', 0)} events, "
                f"RSS {rss[-1][1]:.1f} MB",
                flush=True,
            )
    return step_seconds, injected


async def drive(
    daemon: DaemonProcess,
    sim: Simulator,
    ids: list[str],
    options: Options,
    clock: float,
    rss: list[tuple[float, float]],
) -> Soaked:
    """Baseline, the simulated minutes, then the daemon's last events, RSS, counters and CPU."""
    baseline = await await_baseline(daemon, sim, options, clock, rss)
    rng = random.Random(options.seed)
    step_seconds, injected = await simulate_minutes(daemon, sim, rng, ids, options, baseline, rss)
    transitions = sim.transitions - baseline.transitions
    await settle(daemon, "job_status_changed", transitions)
    rss.append((round(time.monotonic() - clock, 1), rss_bytes(daemon.pid) / MB))
    totals = await scrape(daemon.url)
    return Soaked(
        baseline,
        transitions,
        step_seconds,
        injected,
        totals,
        cpu_seconds(daemon.pid),
        daemon.counts,
        rss,
    )


async def soak(sim: Simulator, ids: list[str], options: Options, clock: float) -> Soaked:
    """Run the daemon on the simulator, sampling its RSS, through the whole soak."""
    rss: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="promo-monitor-soak-") as tmp:
        daemon = await DaemonProcess.start(soak_config(Path(tmp), sim, ids, options))
        sampler = asyncio.create_task(sample_rss(daemon.pid, rss, clock))
        try:
            soaked = await drive(daemon, sim, ids, options, clock, rss)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            exit_code = await daemon.stop()
    return replace(soaked, exit_code=exit_code)


def memory(soaked: Soaked, options: Options) -> Memory:
    samples = sorted(soaked.rss)
    end = samples[-1][1]
    warmup = options.retention if options.warmup is None else options.warmup
    warm_at, warm_mb = next(
        ((t, mb) for t, mb in samples if t >= soaked.baseline.seconds + warmup), samples[-1]
    )
    return Memory(
        samples, end, end / soaked.baseline.rss_mb - 1, warm_at, warm_mb, end / warm_mb - 1
    )


def traffic(sim: Simulator, ids: list[str], jobs_at_start: int, baseline: Baseline) -> Traffic:
    after_baseline = sim.requests[baseline.requests :]
    return Traffic(
        len(after_baseline),
        Counter(r.status for r in after_baseline),
        busiest_second(after_baseline),
        sum(len(sim.jobs(pid)) for pid in ids) - jobs_at_start,
    )


def judge(result: Result, options: Options, soaked: Soaked, mem: Memory, seen: Traffic) -> None:
    events = soaked.counts.get("job_status_changed", 0)
    discovered = soaked.counts.get("job_discovered", 0)
    vanished = soaked.counts.get("job_vanished", 0)
    transitions, spawned = soaked.transitions, seen.spawned
    answered_429, injected_429 = seen.statuses[429], soaked.injected["429"]
    result.check(
        "events = transitions", events - transitions, "difference", "= 0", events == transitions
    )
    result.check(
        "job_discovered = jobs spawned",
        discovered - spawned,
        "difference",
        "= 0",
        discovered == spawned,
    )
    result.check("job_vanished", vanished, "events", "= 0", vanished == 0)
    result.check(
        f"RSS growth from {mem.warm_at:g} s to end",
        round(mem.growth * 100, 1),
        "%",
        f"<= {RSS_GROWTH_LIMIT * 100:g}",
        mem.growth <= RSS_GROWTH_LIMIT,
    )
    result.check("RSS growth from baseline", round(mem.growth_from_baseline * 100, 1), "%")
    result.check(
        "429s answered",
        answered_429,
        "requests",
        f"= {injected_429} injected",
        answered_429 == injected_429,
    )
    result.check("busiest 1 s window", seen.busiest, "requests", f"budget {options.rate:g}/s", None)


def rss_data(soaked: Soaked, mem: Memory) -> dict[str, Any]:
    return {
        "at_baseline": round(soaked.baseline.rss_mb, 1),
        "after_warmup": {"at_seconds": mem.warm_at, "mb": round(mem.warm_mb, 1)},
        "end": round(mem.end, 1),
        "max": round(max(mb for _, mb in soaked.rss), 1),
        "samples": [(t, round(mb, 1)) for t, mb in mem.samples],
    }


def data(
    result: Result, options: Options, soaked: Soaked, mem: Memory, seen: Traffic
) -> dict[str, Any]:
    steps = soaked.step_seconds
    return {
        "machine": machine(),
        "options": options.__dict__,
        "simulated_minutes": options.steps,
        "wall_seconds": round(result.seconds, 1),
        "baseline_seconds": round(soaked.baseline.seconds, 1),
        "step_seconds": {
            "min": round(min(steps), 2),
            "median": round(sorted(steps)[len(steps) // 2], 2),
            "max": round(max(steps), 2),
        },
        "transitions": soaked.transitions,
        "events": {name: soaked.counts.get(name, 0) for name in EVENTS},
        "jobs_spawned": seen.spawned,
        "faults_injected": dict(soaked.injected),
        "requests_after_baseline": seen.requests,
        "answers_by_status": {str(k or "none"): v for k, v in sorted(seen.statuses.items())},
        "busiest_second": seen.busiest,
        "budget_per_second": options.rate,
        "daemon_metrics": {name: soaked.totals.get(name, 0.0) for name in METRICS},
        "daemon_cpu_seconds": round(soaked.daemon_cpu, 1),
        "daemon_exit_code": soaked.exit_code,
        "rss_mb": rss_data(soaked, mem),
    }


async def run(options: Options) -> Result:
    result = Result(NAME, TITLE)
    clock = time.monotonic()
    sim = Simulator(seed=options.seed, token_ttl=options.token_ttl)
    ids = populate(sim, options)
    jobs_at_start = sum(len(sim.jobs(pid)) for pid in ids)
    await sim.start("127.0.0.1", 0)
    try:
        soaked = await soak(sim, ids, options, clock)
    finally:
        await sim.stop()
    result.seconds = time.monotonic() - clock
    mem = memory(soaked, options)
    seen = traffic(sim, ids, jobs_at_start, soaked.baseline)
    judge(result, options, soaked, mem, seen)
    result.data = data(result, options, soaked, mem, seen)
    return result


def table(result: Result) -> str:
    data = result.data
    lines = [
        result.title,
        f"  {data['simulated_minutes']} simulated minutes in {data['wall_seconds']:.0f} s "
        f"(baseline {data['baseline_seconds']:.0f} s; a minute took "
        f"{data['step_seconds']['median']:.1f} s median, {data['step_seconds']['max']:.1f} s max)",
        "",
        f"  {'check':<30} {'value':>10}  {'unit':<12} {'target':<22} verdict",
    ]
    lines.extend(
        f"  {check.metric:<30} {fmt(check.value):>10}  {check.unit:<12} {check.target:<22} "
        f"{check.verdict}"
        for check in result.checks
    )
    events = data["events"]
    lines += [
        "",
        f"  transitions made by the simulator   {data['transitions']:>8}",
        f"  job_status_changed events           {events['job_status_changed']:>8}",
        f"  jobs spawned / job_discovered       {data['jobs_spawned']:>8} / "
        f"{events['job_discovered']}",
        f"  job_failed events                   {events['job_failed']:>8}",
        f"  faults injected (requests)          {sum(data['faults_injected'].values()):>8}  "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["faults_injected"].items())),
        f"  request_retried / poll_failed       {events['request_retried']:>8} / "
        f"{events['poll_failed']}",
        f"  requests after baseline             {data['requests_after_baseline']:>8}  "
        f"busiest second {data['busiest_second']} (budget {data['budget_per_second']:g}/s)",
        f"  daemon CPU                          {data['daemon_cpu_seconds']:>8} s",
        "",
        "  RSS over time (seconds: MB)",
        *rss_rows(data["rss_mb"]["samples"]),
    ]
    return "\n".join(lines)


def rss_rows(samples: Sequence[tuple[float, float]], every: float = 20.0) -> list[str]:
    """About one sample per `every` seconds, six to a line."""
    picked: list[str] = []
    next_at = 0.0
    for t, mb in samples:
        if t >= next_at:
            picked.append(f"{t:>6.0f}: {mb:5.1f}")
            next_at = t + every
    return [
        "   " + "".join(f"{cell:<15}" for cell in picked[i : i + 6])
        for i in range(0, len(picked), 6)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.soak", description=TITLE)
    parser.add_argument("--promotions", type=int, default=defaults.promotions)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="simulated minutes")
    parser.add_argument("--faults-per-step", type=int, default=defaults.faults_per_step)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--interval", type=float, default=defaults.interval)
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument(
        "--retention", type=float, default=defaults.retention, help="seconds (wall time)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds after the baseline (default: retention)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--output", type=Path, default=RESULTS / f"{NAME}.json")
    args = parser.parse_args(argv)
    # every argument but --output is an Options field of the same name
    output = vars(args).pop("output")
    options = replace(defaults, **vars(args))
    result = asyncio.run(run(options))
    report = result.to_json()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(table(result))
    print(f"\nwritten to {output}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
