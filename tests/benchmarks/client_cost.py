"""Benchmark 2 — client cost: CPU per jobs page of 100, the daemon's path vs a bare aiohttp loop.

The simulator runs in its own process, so `time.process_time()` here counts only the client
side. The daemon's path is the real one (`Monitor.build(...).poller.poll(target)`: client,
budget, retries, parsing, diff, snapshot store and its durable write, metrics, log events to a
null stream); the floor is the least any Python poller can do: GET with a bearer token, read,
`json.loads`. Both poll the same promotions round-robin, one page at a time, in alternating
rounds, and every page served changes one job (a failure every third change), so the daemon
always has a little news to diff, persist, count and log.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from prometheus_client import CollectorRegistry
from yarl import URL

from monitor.app import Monitor
from monitor.client import JobsTarget
from monitor.models import PromotionKind, PromotionSnapshot
from monitor.settings import parse_settings
from monitor.sinks.logs import configure_logging
from tests.benchmarks.common import (
    RESULTS,
    Result,
    Stopwatch,
    Store,
    cpu_seconds,
    credentials,
    daemon_config,
    median,
    simulator_process,
    state_disk_bytes,
)

NAME = "client_cost"
TITLE = "Client cost: CPU per jobs page of 100 (daemon vs bare aiohttp)"
CHANGING = 10  # promotions whose every poll finds one changed job
QUIET = 10  # promotions that never change
JOBS = 100
ROUNDS = 5
PAGES_PER_ROUND = 250
PROFILE_PAGES = 400
TARGET_RATIO = 1.5

Poll = Callable[[int], Awaitable[None]]


async def _measure(poll: Poll, pages: int, sim_pid: int) -> dict[str, float]:
    """CPU of this process (all threads) and of the simulator for `pages` sequential polls."""
    sim_cpu = cpu_seconds(sim_pid)
    wall = time.perf_counter()
    cpu = time.process_time()
    for i in range(pages):
        await poll(i)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return {
        "cpu_us_per_page": cpu / pages * 1e6,
        "wall_us_per_page": wall / pages * 1e6,
        "sim_cpu_us_per_page": (cpu_seconds(sim_pid) - sim_cpu) / pages * 1e6,
    }


class DaemonPath:
    """The monitor as the daemon builds it, minus the HTTP server; logs go to /dev/null."""

    def __init__(self, store: Store, state_dir: Path) -> None:
        document = daemon_config(
            state_dir,
            **credentials(store),
            promotions=store.promotions,
            rate=1000,  # the budget never waits: it would only add sleeps, not CPU
            interval=3600,
            active_interval=3600,
        )
        self._null = open(os.devnull, "w")  # noqa: SIM115 -- closed in close()
        configure_logging("info", "json", stream=self._null)
        self.monitor = Monitor.build(
            parse_settings(document), registry=CollectorRegistry(), serve_http=False
        )
        self.targets: list[JobsTarget] = [
            self.monitor.client.target(pid, PromotionKind(kind)) for pid, kind in store.promotions
        ]
        self.changing = self.targets[:CHANGING]
        self.quiet = self.targets[CHANGING:]
        self.changes = 0

    async def _poll(self, target: JobsTarget) -> None:
        outcome = await self.monitor.poller.poll(target)
        await self.monitor.scheduler.reporter.report(outcome)
        if not outcome.ok:
            raise RuntimeError(f"daemon poll failed: {outcome.reason}")
        self.changes += len(outcome.changes)

    async def poll_changing(self, i: int) -> None:
        await self._poll(self.changing[i % len(self.changing)])

    async def poll_quiet(self, i: int) -> None:
        await self._poll(self.quiet[i % len(self.quiet)])

    def state_jobs(self) -> int:
        return sum(len(s.jobs) for s in self.monitor.store)

    async def write_seconds(self) -> float:
        """CPU (all threads) of one durable write after one promotion's snapshot changed."""
        store = self.monitor.store
        total = 0.0
        for i in range(10):
            old = list(store)[i % len(store)]
            store.put(PromotionSnapshot(old.promotion_id, dict(old.jobs), old.stuck))
            started = time.process_time()
            await store.persist()
            total += time.process_time() - started
        return total / 10

    async def close(self) -> None:
        await self.monitor.client.close()
        self._null.close()


class BareLoop:
    """The floor: one session, a bearer token, prebuilt URLs; GET, read, json.loads."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        self._urls: list[URL] = []

    async def open(self) -> None:
        store = self._store
        self._session = aiohttp.ClientSession()
        form = {
            "grant_type": "client_credentials",
            "client_id": store.client_id,
            "client_secret": store.client_secret,
        }
        async with self._session.post(store.base_url + "/oauth/access_token", data=form) as r:
            token = (await r.json())["access_token"]
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        segment = {"promotion": "promotions", "rule_promotion": "rule-promotions"}
        self._urls = [
            URL(f"{store.base_url}/v2/{segment[kind]}/{pid}/jobs").with_query(
                {"page[limit]": "100", "page[offset]": "0"}
            )
            # The quiet ones: the same size of page, and polling them changes nothing.
            for pid, kind in store.promotions[CHANGING:]
        ]

    async def poll(self, i: int) -> None:
        assert self._session is not None
        url = self._urls[i % len(self._urls)]
        async with self._session.get(url, headers=self._headers) as response:
            body = await response.read()
        if len(json.loads(body)["data"]) != JOBS:
            raise RuntimeError("bare loop: not a full page")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# Calls that release the GIL: their wall time is mostly waiting (for the network, or for the
# GIL while the snapshot writer thread runs), not CPU, so they stay out of the top list.
_BLOCKING = ("select.epoll", "_socket.socket", "SimpleQueue", "acquire")


def _profile_rows(profile: cProfile.Profile, pages: int, top: int = 10) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in table.items():
        if any(blocking in function for blocking in _BLOCKING):
            continue
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({function})",
                "calls_per_page": round(calls / pages, 2),
                "self_us_per_page": round(tottime / pages * 1e6, 1),
                "cumulative_us_per_page": round(cumtime / pages * 1e6, 1),
            }
        )
    rows.sort(key=lambda r: r["self_us_per_page"], reverse=True)
    return rows[:top]


def _cumulative(profile: cProfile.Profile, pages: int, names: dict[str, str]) -> dict[str, float]:
    """Cumulative µs per page of a few functions, matched by 'file-suffix:function'."""
    table: dict[Any, Any] = pstats.Stats(profile, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    found: dict[str, float] = dict.fromkeys(names, 0.0)
    for (filename, _line, function), (_cc, _calls, _tt, cumtime, _callers) in table.items():
        for label, key in names.items():
            suffix, _, wanted = key.partition(":")
            if filename.endswith(suffix) and function == wanted:
                found[label] = round(found.get(label, 0.0) + cumtime / pages * 1e6, 1)
    return found


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _plot(
    rounds: list[dict[str, Any]], breakdown: dict[str, float], write_us: float, path: Path
) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    xs = range(1, len(rounds) + 1)
    for leg, marker, label in LEGS:
        left.plot(xs, [r[leg]["cpu_us_per_page"] for r in rounds], marker + "-", label=label)
    left.set_xticks(list(xs))
    left.set_xlabel("round (legs alternate within a round)")
    left.set_ylabel("client CPU µs per page of 100 jobs")
    left.set_ylim(bottom=0)
    left.set_title("CPU per page")
    left.legend(fontsize=8)
    bars = {**breakdown, "one state write (all threads, timed alone)": write_us}
    labels = list(bars)
    colors = ["tab:orange"] * len(breakdown) + ["tab:red"]
    right.barh(labels, [bars[k] for k in labels], color=colors)
    right.invert_yaxis()
    right.set_xlabel("µs per page: cProfile cumulative, loop thread (profiler inflates)")
    right.set_title("Daemon path, pages with news: where the time goes")
    right.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LEGS = (
    ("daemon_news", "o", "daemon, every page has 1 changed job"),
    ("daemon_quiet", "^", "daemon, no changes"),
    ("bare", "s", "bare aiohttp: GET + json.loads"),
)
BREAKDOWN = {
    "poll (all, main thread)": "monitor/poller.py:poll",
    "fetch_jobs": "monitor/client/api.py:fetch_jobs",
    "  HTTP exchange": "monitor/client/transport.py:_exchange",
    "  json.loads": "json/__init__.py:loads",
    "  parse_jobs": "monitor/models.py:parse_jobs",
    "diff": "monitor/diff.py:diff",
    "state persist (main thread)": "monitor/state.py:persist",
    "metrics.record": "monitor/sinks/metrics.py:record",
    "logs.emit": "monitor/sinks/logs.py:emit",
}


Round = dict[str, dict[str, float]]  # leg -> what _measure returned for it


@dataclass(frozen=True)
class Measured:
    """Every leg's rounds and profiles, and the cost of the daemon's state file."""

    rounds: list[Round]
    changes: int  # changes the daemon found on the news leg's measured pages
    profiles: dict[str, cProfile.Profile]
    state_jobs: int
    write_s: float
    state_bytes: int


@dataclass(frozen=True)
class Compared:
    """Medians over rounds: CPU per page of each leg, and of the daemon's legs over bare."""

    per_leg: dict[str, float]
    ratios: dict[str, list[float]]  # per round
    ratio: dict[str, float]


async def _warm_up(polls: dict[str, Poll]) -> None:
    """Baselines, token, connections, caches: every leg polls each promotion twice."""
    for poll in polls.values():
        for i in range(2 * max(CHANGING, QUIET)):
            await poll(i)


async def _rounds(
    polls: dict[str, Poll], daemon: DaemonPath, sim_pid: int
) -> tuple[list[Round], int]:
    """ROUNDS rounds in which the legs take turns; and the changes the news leg found."""
    rounds = []
    changes = 0
    for _ in range(ROUNDS):
        one: Round = {}
        for leg, poll in polls.items():
            daemon.changes = 0
            one[leg] = await _measure(poll, PAGES_PER_ROUND, sim_pid)
            if leg == "daemon_news":
                changes += daemon.changes
        rounds.append(one)
    return rounds, changes


async def _profile(polls: dict[str, Poll]) -> dict[str, cProfile.Profile]:
    profiles: dict[str, cProfile.Profile] = {}
    for leg in ("daemon_news", "daemon_quiet"):
        profile = profiles[leg] = cProfile.Profile()
        profile.enable()
        for i in range(PROFILE_PAGES):
            await polls[leg](i)
        profile.disable()
    return profiles


async def _measure_legs(store: Store, state_dir: Path) -> Measured:
    daemon = DaemonPath(store, state_dir)
    bare = BareLoop(store)
    await bare.open()
    polls: dict[str, Poll] = {
        "daemon_news": daemon.poll_changing,
        "daemon_quiet": daemon.poll_quiet,
        "bare": bare.poll,
    }
    try:
        await _warm_up(polls)
        rounds, changes = await _rounds(polls, daemon, store.pid)
        profiles = await _profile(polls)
        state_jobs = daemon.state_jobs()
        write_s = await daemon.write_seconds()
        state_bytes = state_disk_bytes(state_dir / "state" / "monitor.db")
    finally:
        await daemon.close()
        await bare.close()
    return Measured(rounds, changes, profiles, state_jobs, write_s, state_bytes)


def _compare(rounds: list[Round]) -> Compared:
    per_leg = {leg: median(r[leg]["cpu_us_per_page"] for r in rounds) for leg, _, _ in LEGS}
    ratios = {
        leg: [r[leg]["cpu_us_per_page"] / r["bare"]["cpu_us_per_page"] for r in rounds]
        for leg in ("daemon_news", "daemon_quiet")
    }
    return Compared(per_leg, ratios, {leg: median(values) for leg, values in ratios.items()})


def _judge(result: Result, compared: Compared, measured: Measured) -> None:
    per_leg, ratio, jobs = compared.per_leg, compared.ratio, measured.state_jobs
    result.check("bare aiohttp CPU per page (floor)", per_leg["bare"], "µs")
    result.check("daemon CPU per page, 1 change/page", per_leg["daemon_news"], "µs")
    result.check("daemon CPU per page, no change", per_leg["daemon_quiet"], "µs")
    for leg, label in (("daemon_news", "1 change/page"), ("daemon_quiet", "no change")):
        passed = ratio[leg] <= TARGET_RATIO
        result.check(f"daemon / bare CPU, {label}", ratio[leg], "x", f"<= {TARGET_RATIO}", passed)
    result.check(
        "extra CPU of a page with news", per_leg["daemon_news"] - per_leg["daemon_quiet"], "µs"
    )
    result.check(
        f"one state write, 1 promotion changed ({jobs:,} jobs)", measured.write_s * 1e6, "µs"
    )
    result.check("state on disk (database + WAL)", measured.state_bytes / 1024, "KiB")


def _setup(measured: Measured) -> dict[str, Any]:
    return {
        "promotions_changing": CHANGING,
        "promotions_quiet": QUIET,
        "jobs_per_promotion": JOBS,
        "rounds": ROUNDS,
        "pages_per_round_per_leg": PAGES_PER_ROUND,
        "changes_per_news_page": round(measured.changes / (ROUNDS * PAGES_PER_ROUND), 3),
        "state_disk_bytes": measured.state_bytes,
        "state_jobs": measured.state_jobs,
        "simulator": "separate process (python -m tests.benchmarks.simserver --mutate)",
        "method": "sequential polls; time.process_time() of this process (all threads, so "
        "the snapshot write done in a worker thread counts); legs alternate in each round; "
        "medians over rounds",
    }


PROFILE_NOTE = (
    "cProfile (wall clock) of the event-loop thread; calls that release the "
    "GIL (epoll, socket send, queue put, lock acquire) are left out of the top list, their "
    "time is waiting; the state write runs in a worker thread (see "
    "state_write_us_one_promotion_changed); the profiler inflates times"
)


def _data(measured: Measured, compared: Compared) -> dict[str, Any]:
    per_leg, ratio, profiles = compared.per_leg, compared.ratio, measured.profiles
    return {
        "setup": _setup(measured),
        "cpu_us_per_page": {k: round(v, 1) for k, v in per_leg.items()},
        "extra_cpu_us_per_page_with_news": round(
            per_leg["daemon_news"] - per_leg["daemon_quiet"], 1
        ),
        "ratio_to_bare": {k: round(v, 3) for k, v in ratio.items()},
        "ratio_per_round": {k: [round(x, 3) for x in v] for k, v in compared.ratios.items()},
        "target_ratio": TARGET_RATIO,
        "passed": all(v <= TARGET_RATIO for v in ratio.values()),
        "state_write_us_one_promotion_changed": round(measured.write_s * 1e6, 1),
        "rounds": [
            {leg: {k: round(v, 1) for k, v in r[leg].items()} for leg in r} for r in measured.rounds
        ],
        "profile_pages": PROFILE_PAGES,
        "profile_note": PROFILE_NOTE,
        "profile_breakdown_us_per_page": {
            leg: _cumulative(profiles[leg], PROFILE_PAGES, BREAKDOWN) for leg in profiles
        },
        "profile_top10_self": {
            leg: _profile_rows(profiles[leg], PROFILE_PAGES) for leg in profiles
        },
    }


async def run() -> Result:
    result = Result(NAME, TITLE)
    clock = Stopwatch()
    async with simulator_process(CHANGING + QUIET, JOBS, mutate=CHANGING) as store:
        with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
            measured = await _measure_legs(store, Path(tmp))
    compared = _compare(measured.rounds)
    _judge(result, compared, measured)
    result.data = _data(measured, compared)
    breakdown = _cumulative(measured.profiles["daemon_news"], PROFILE_PAGES, BREAKDOWN)
    plot = RESULTS / f"{NAME}.png"
    _plot(measured.rounds, breakdown, measured.write_s * 1e6, plot)
    result.plot = plot.name
    result.seconds = clock.elapsed
    return result


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run()).to_json(), indent=1))
