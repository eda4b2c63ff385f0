"""Benchmark 5 — whole process: `promo-monitor run`'s CPU per jobs page, beside a bare aiohttp loop.

The daemon runs as a subprocess against `tests.benchmarks.pagestore` (a simulator in a process of
its own, P promotions x J finished jobs, one failed job in ten with its own error text, pages
served from memory) at a request budget of 400/s, with every promotion always due (interval
0.2 s), so it polls at the budget the whole time. Its CPU (utime + stime of every thread, from
/proc/PID/stat) over a steady window, divided by the jobs pages the store served in that window,
is the cost per page. The floor is `tests.benchmarks.bareloop` — GET + `json.loads` of the same
pages at the same rate and concurrency — in its own process, measured the same way, against the
same store just before the daemon starts. Scenarios: 100, 1,000 and 10,000 promotions x 10 jobs,
pages unchanged; 1,000 x 100 unchanged, then with news (every page one new job, the oldest
dropped). After each idle window: RSS (VmRSS) and `GET /metrics` wall time (median of 5).

    .venv/bin/python -m tests.benchmarks.whole                     # every scenario
    .venv/bin/python -m tests.benchmarks.whole 10000x10 --window 10  # some, shorter windows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tests.benchmarks.common import (
    RESULTS,
    DaemonProcess,
    Result,
    Stopwatch,
    Store,
    cpu_seconds,
    credentials,
    daemon_config,
    median,
    rss_bytes,
    running_daemon,
    scrape,
    settled,
    simulator_process,
    write_yaml,
)

NAME = "whole"
TITLE = "Whole process: daemon CPU per jobs page vs a bare aiohttp loop; /metrics time; RSS"
RATE = 400.0
# Polls in flight, for the daemon and the floor alike. Above the default 8 because every
# baseline poll waits for a write of the whole snapshot; in the steady state the budget, not
# this, paces the requests (about one is in flight at a time).
CONCURRENCY = 64
INTERVAL = 0.2  # every promotion is always due: the daemon works at the budget
WINDOW = 15.0
WARMUP = 2.0
SCRAPES = 5


@dataclass(frozen=True)
class Size:
    promotions: int
    jobs: int
    news: bool = False  # after the idle window, one with news on every page

    @property
    def key(self) -> str:
        return f"{self.promotions}x{self.jobs}"

    @property
    def label(self) -> str:
        return f"{self.promotions:,} x {self.jobs}"


SIZES = (Size(100, 10), Size(1_000, 10), Size(10_000, 10), Size(1_000, 100, news=True))
NEAR_FLOOR = (1_000, 100, 1.25)  # idle daemon ÷ bare loop at 1,000 x 100
FLAT = (1_000, 10_000, 10, 1.2)  # CPU per page at 10,000 ÷ at 1,000 (10 jobs)
NEWS_RATIO = 1.5
SCRAPE_TARGETS = {(1_000, 100): 0.25, (10_000, 10): 0.5}  # seconds
RSS_TARGETS = {(1_000, 100): 150.0, (10_000, 10): 200.0}  # MB


async def _store_get(session: aiohttp.ClientSession, store: Store, path: str) -> Any:
    async with session.get(store.base_url + path) as response:
        return await response.json()


async def _news(session: aiohttp.ClientSession, store: Store, on: bool) -> None:
    async with session.post(store.base_url + "/_bench/news", params={"on": str(int(on))}) as r:
        r.raise_for_status()


async def _window(
    session: aiohttp.ClientSession, store: Store, pid: int, seconds: float
) -> dict[str, float]:
    """CPU of `pid` and jobs pages served over `seconds`; the store serves only this client."""
    cpu = cpu_seconds(pid)
    pages = (await _store_get(session, store, "/_bench/pages"))["pages"]
    clock = Stopwatch()
    await asyncio.sleep(seconds)
    cpu = cpu_seconds(pid) - cpu
    pages = (await _store_get(session, store, "/_bench/pages"))["pages"] - pages
    elapsed = clock.elapsed
    return {
        "cpu_s": round(cpu, 3),
        "pages": pages,
        "seconds": round(elapsed, 2),
        "pages_per_s": round(pages / elapsed, 1),
        "us_per_page": round(cpu / pages * 1e6, 1) if pages else float("nan"),
        "cpu_percent": round(cpu / elapsed * 100, 2),  # of one core
    }


@contextlib.asynccontextmanager
async def _bare_loop(store: Store, directory: Path, rate: float) -> AsyncIterator[int]:
    """`tests.benchmarks.bareloop` against the store, as a subprocess; yields its pid."""
    config = directory / "bare.json"
    document = {
        **credentials(store),
        "promotions": store.promotions,
        "rate": rate,
        "concurrency": CONCURRENCY,
    }
    config.write_text(json.dumps(document), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.bareloop", str(config)
    )
    try:
        yield process.pid
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if process.returncode not in (0, -9):
            raise RuntimeError(f"the bare loop failed ({process.returncode})")


async def _measure_bare(
    session: aiohttp.ClientSession,
    store: Store,
    size: Size,
    directory: Path,
    window: float,
    rate: float,
) -> dict[str, Any]:
    async with _bare_loop(store, directory, rate) as pid:
        await asyncio.sleep(WARMUP)
        row: dict[str, Any] = {"idle": await _window(session, store, pid, window)}
        if size.news:
            await _news(session, store, on=True)
            await asyncio.sleep(WARMUP / 2)
            row["news"] = await _window(session, store, pid, window)
            await _news(session, store, on=False)
    return row


async def _scrapes(session: aiohttp.ClientSession, daemon: DaemonProcess) -> dict[str, Any]:
    url = daemon.url + "/metrics"
    cold, size, series = await scrape(session, url)
    warm = [(await scrape(session, url))[0] for _ in range(SCRAPES)]
    return {
        "metrics_s_median": round(median(warm), 4),
        "metrics_s_all": [round(x, 4) for x in warm],
        "metrics_s_cold": round(cold, 4),
        "metrics_bytes": size,
        "metrics_series": series,
    }


async def _measure_daemon(
    session: aiohttp.ClientSession,
    store: Store,
    size: Size,
    directory: Path,
    window: float,
    rate: float,
) -> dict[str, Any]:
    document = daemon_config(
        directory,
        **credentials(store),
        promotions=store.promotions,
        rate=rate,
        interval=INTERVAL,
        active_interval=INTERVAL,
        concurrency=CONCURRENCY,
        timeout=60,
    )
    config = write_yaml(directory / "config.yaml", document)
    async with running_daemon(config) as daemon:
        clock = Stopwatch()
        # (a baseline is one request per page: at a low budget it takes P x pages / rate)
        timeout = max(600.0, 2 * size.promotions * -(-size.jobs // 100) / rate)
        await daemon.wait_count("baseline_loaded", size.promotions, timeout=timeout)
        baseline_s = clock.elapsed
        await settled(directory / "state" / "monitor.db")
        await asyncio.sleep(WARMUP)
        row: dict[str, Any] = {"baseline_s": round(baseline_s, 1)}
        row["idle"] = await _window(session, store, daemon.pid, window)
        row["rss_mb"] = round(rss_bytes(daemon.pid) / 2**20, 1)
        row |= await _scrapes(session, daemon)
        row["rss_mb_after_scrapes"] = round(rss_bytes(daemon.pid) / 2**20, 1)
        if size.news:
            await _news(session, store, on=True)
            await asyncio.sleep(WARMUP)
            row["news"] = await _window(session, store, daemon.pid, window)
            await _news(session, store, on=False)
        row["poll_failed_events"] = daemon.counts.get("poll_failed", 0)
    return row


async def _one(size: Size, window: float, rate: float) -> dict[str, Any]:
    """One store: the bare loop's windows, then the daemon's, then the ratios."""
    print(f"   {size.label}", flush=True)
    module = "tests.benchmarks.pagestore"
    async with (
        simulator_process(size.promotions, size.jobs, timeout=300, module=module) as store,
        aiohttp.ClientSession() as session,
    ):
        with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
            bare = await _measure_bare(session, store, size, Path(tmp), window, rate)
            daemon = await _measure_daemon(session, store, size, Path(tmp), window, rate)
    row: dict[str, Any] = {"promotions": size.promotions, "jobs": size.jobs}
    row |= {"bare": bare, "daemon": daemon}
    for mode in ("idle", "news") if size.news else ("idle",):
        ratio = daemon[mode]["us_per_page"] / bare[mode]["us_per_page"]
        row[f"ratio_{mode}"] = round(ratio, 2)
        print(
            f"     {mode}: daemon {daemon[mode]['us_per_page']:.0f} µs/page "
            f"({daemon[mode]['pages_per_s']:.0f}/s), bare {bare[mode]['us_per_page']:.0f} µs/page "
            f"({bare[mode]['pages_per_s']:.0f}/s): {ratio:.2f} x; "
            f"daemon {daemon[mode]['cpu_percent']:.2f}% of a core",
            flush=True,
        )
    row["bytes_per_job"] = round(daemon["rss_mb"] * 2**20 / (size.promotions * size.jobs))
    return row


def _ratio_checks(result: Result, rows: dict[tuple[int, int], dict[str, Any]]) -> None:
    p, j, limit = NEAR_FLOOR
    for (promotions, jobs), row in sorted(rows.items()):
        size = f"{promotions:,} x {jobs}"
        near = (promotions, jobs) == (p, j)
        target, passed = (f"<= {limit:g}", row["ratio_idle"] <= limit) if near else ("", None)
        result.check(f"daemon ÷ bare loop, {size}, idle", row["ratio_idle"], "x", target, passed)
        if "ratio_news" in row:
            ok = row["ratio_news"] <= NEWS_RATIO
            target = f"<= {NEWS_RATIO:g}"
            result.check(f"daemon ÷ bare loop, {size}, news", row["ratio_news"], "x", target, ok)
    small, large, jobs, limit = FLAT
    if (small, jobs) in rows and (large, jobs) in rows:
        per_page = [rows[(n, jobs)]["daemon"]["idle"]["us_per_page"] for n in (small, large)]
        flat = round(per_page[1] / per_page[0], 2)
        result.check(
            f"daemon CPU per page, {large:,} ÷ {small:,} promotions x {jobs}",
            flat,
            "x",
            f"<= {limit:g}",
            flat <= limit,
        )


def _memory_checks(result: Result, rows: dict[tuple[int, int], dict[str, Any]]) -> None:
    for (promotions, jobs), row in sorted(rows.items()):
        size = f"{promotions:,} x {jobs}"
        seconds = row["daemon"]["metrics_s_median"]
        limit = SCRAPE_TARGETS.get((promotions, jobs))
        target, passed = (f"<= {limit:g}", seconds <= limit) if limit else ("", None)
        result.check(f"/metrics (median of {SCRAPES}), {size}", seconds, "s", target, passed)
        limit = RSS_TARGETS.get((promotions, jobs))
        for when, key in (
            ("", "rss_mb"),
            (f" after {SCRAPES + 1} scrapes", "rss_mb_after_scrapes"),
        ):
            mb = row["daemon"][key]
            target, passed = (f"<= {limit:g}", mb <= limit) if limit else ("", None)
            result.check(f"RSS{when}, {size}", mb, "MB", target, passed)
    if (1_000, 10) in rows and (1_000, 100) in rows:
        extra = rows[(1_000, 100)]["daemon"]["rss_mb"] - rows[(1_000, 10)]["daemon"]["rss_mb"]
        per_job = round(extra * 2**20 / (1_000 * 90))
        result.check("RSS per tracked job (1,000 x 100 less 1,000 x 10)", per_job, "bytes")


def _plot(rows: dict[tuple[int, int], dict[str, Any]], path: Path, rate: float) -> None:
    fig, (cpu, render) = plt.subplots(1, 2, figsize=(12, 4.4))
    line = sorted((p, row) for (p, j), row in rows.items() if j == 10)
    xs = [p for p, _ in line]
    cpu.plot(xs, [r["daemon"]["idle"]["us_per_page"] for _, r in line], "o-", label="daemon, idle")
    cpu.plot(xs, [r["bare"]["idle"]["us_per_page"] for _, r in line], "s:", label="bare loop")
    render.plot(xs, [r["daemon"]["metrics_s_median"] for _, r in line], "o-", label="10 jobs each")
    big = rows.get((1_000, 100))
    if big is not None:
        for who, mode, marker in (("daemon", "idle", "D"), ("daemon", "news", "^")):
            if mode in big[who]:
                cpu.plot(
                    [1_000],
                    [big[who][mode]["us_per_page"]],
                    marker,
                    label=f"{who}, {mode}, 100 jobs",
                )
        cpu.plot([1_000], [big["bare"]["idle"]["us_per_page"]], "x", label="bare loop, 100 jobs")
        render.plot([1_000], [big["daemon"]["metrics_s_median"]], "D", label="100 jobs each")
    for (p, _), limit in SCRAPE_TARGETS.items():
        render.plot([p], [limit], "_", color="red", markersize=20)
    cpu.set_ylabel("CPU µs per jobs page")
    cpu.set_title(f"CPU per page against P ({rate:g} req/s; flat is the goal)")
    cpu.set_ylim(bottom=0)
    render.set_ylabel("seconds")
    render.set_yscale("log")
    render.set_title("GET /metrics, median (red: targets)")
    for ax in (cpu, render):
        ax.set_xscale("log")
        ax.set_xlabel("promotions")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(sizes: Sequence[Size] = SIZES, window: float = WINDOW, rate: float = RATE) -> Result:
    result = Result(NAME, TITLE)
    clock = Stopwatch()
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for size in sizes:
        rows[(size.promotions, size.jobs)] = await _one(size, window, rate)
    _ratio_checks(result, rows)
    _memory_checks(result, rows)
    result.data = {
        "setup": {
            "max_requests_per_second": rate,
            "max_concurrent_polls": CONCURRENCY,
            "interval_s": INTERVAL,
            "window_s": window,
            "store": "tests.benchmarks.pagestore (separate process; pages cached as bytes)",
            "floor": "tests.benchmarks.bareloop (separate process; GET + json.loads)",
            "failed_jobs": "one in ten, each with its own error text",
        },
        "rows": [rows[key] for key in sorted(rows)],
    }
    plot = RESULTS / f"{NAME}.png"
    _plot(rows, plot, rate)
    result.plot = plot.name
    result.seconds = clock.elapsed
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.whole", description=__doc__)
    known = {size.key: size for size in SIZES}
    parser.add_argument("sizes", nargs="*", metavar="PxJ", help=", ".join(known))
    parser.add_argument("--window", type=float, default=WINDOW, help="seconds per window")
    parser.add_argument(
        "--rate",
        type=float,
        default=RATE,
        help=f"the daemon's and the bare loop's requests/s (default {RATE:g}; the daemon's "
        "own default budget is 10: its baselines then take P x pages / rate seconds)",
    )
    args = parser.parse_args(argv)
    unknown = [key for key in args.sizes if key not in known]
    if unknown:
        parser.error(f"unknown size {', '.join(unknown)}; known: {', '.join(known)}")
    sizes = [known[key] for key in args.sizes] or list(SIZES)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(sizes, args.window, args.rate))
    for check in result.checks:
        print(f"{check.metric}: {check.value:g} {check.unit}  {check.target}  {check.verdict}")
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
