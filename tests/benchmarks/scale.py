"""Benchmark 3 — scale: daemon RSS and /metrics render time at 100, 1,000 and 5,000 promotions.

Each size gets a fresh simulator process (100 jobs per promotion, frozen: nothing changes
after the baseline) and a fresh daemon subprocess. After the baseline of every promotion has
been logged and the snapshot file has stopped changing, the daemon's RSS is read from /proc and
`GET /metrics` is timed (wall time, body read included; one cold scrape, then the median of 5).
The baseline itself is timed too: every baseline poll has news, so it waits for a durable
write of the whole snapshot, and how that grows with the state is part of the scale story.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tests.benchmarks.common import (
    RESULTS,
    Result,
    Stopwatch,
    cpu_seconds,
    credentials,
    daemon_config,
    median,
    rss_bytes,
    running_daemon,
    scrape,
    settled,
    simulator_process,
    state_disk_bytes,
    write_yaml,
)

NAME = "scale"
TITLE = "Scale: daemon RSS and /metrics render time vs promotions (100 jobs each)"
SIZES = (100, 1_000, 5_000)
JOBS = 100
TARGET_AT = 1_000
TARGET_RSS_MB = 150.0
TARGET_RENDER_S = 0.5
RATE = 1000.0  # the most the settings allow; the baseline should not wait for the budget
# The size series runs with the most polls in flight the settings allow: every baseline poll
# waits for a write of the whole snapshot, and with the default 8 in flight the 5,000 baseline
# alone would take many minutes. The target size also runs once with the default, as deployed.
CONCURRENCY = 256
DEFAULT_CONCURRENCY = 8
SCRAPES = 5


async def _one(promotions: int, concurrency: int) -> dict[str, Any]:
    async with simulator_process(promotions, JOBS, timeout=300) as store:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            directory = Path(tmp)
            document = daemon_config(
                directory,
                **credentials(store),
                promotions=store.promotions,
                rate=RATE,
                interval=3600,
                active_interval=3600,
                concurrency=concurrency,
                timeout=60,
            )
            config = write_yaml(directory / "config.yaml", document)
            async with running_daemon(config) as daemon:
                rss_idle = rss_bytes(daemon.pid)
                cpu_before = cpu_seconds(daemon.pid)
                started = time.perf_counter()
                await daemon.wait_count("baseline_loaded", promotions, timeout=400)
                baseline_s = time.perf_counter() - started
                state = directory / "state" / "monitor.db"
                await settled(state)
                baseline_cpu = cpu_seconds(daemon.pid) - cpu_before
                rss = rss_bytes(daemon.pid)
                async with aiohttp.ClientSession() as session:
                    url = daemon.url + "/metrics"
                    cold, size, series = await scrape(session, url)
                    warm = [(await scrape(session, url))[0] for _ in range(SCRAPES)]
                rss_after_scrapes = rss_bytes(daemon.pid)
                failed_polls = daemon.counts.get("poll_failed", 0)
            state_bytes = state_disk_bytes(state)
    return {
        "promotions": promotions,
        "jobs": promotions * JOBS,
        "max_concurrent_polls": concurrency,
        "rss_mb": round(rss / 2**20, 1),
        "rss_mb_before_baseline": round(rss_idle / 2**20, 1),
        "rss_mb_after_scrapes": round(rss_after_scrapes / 2**20, 1),
        "metrics_render_s_median": round(median(warm), 4),
        "metrics_render_s_all": [round(x, 4) for x in warm],
        "metrics_render_s_cold": round(cold, 4),
        "metrics_bytes": size,
        "metrics_series": series,
        "baseline_s": round(baseline_s, 2),
        "baseline_daemon_cpu_s": round(baseline_cpu, 2),
        "poll_failed_events": failed_polls,
        "state_disk_bytes": state_bytes,
    }


def _plot(rows: list[dict[str, Any]], at: dict[str, Any], path: Path) -> None:
    xs = [r["promotions"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    rss, render, baseline = axes
    rss.plot(xs, [r["rss_mb"] for r in rows], "o-", label="after baseline")
    rss.plot(xs, [r["rss_mb_after_scrapes"] for r in rows], "x:", label="after 6 scrapes")
    rss.plot(
        [at["promotions"]],
        [at["rss_mb_after_scrapes"]],
        "D",
        color="tab:purple",
        label=f"{DEFAULT_CONCURRENCY} in flight, after scrapes",
    )
    rss.axhline(TARGET_RSS_MB, color="red", ls="--", lw=1, label=f"target at {TARGET_AT:,}")
    rss.set_ylabel("MB")
    rss.set_title("daemon RSS")
    render.plot(xs, [r["metrics_render_s_median"] for r in rows], "o-", label="median of 5")
    render.plot(xs, [r["metrics_render_s_cold"] for r in rows], "x:", label="first (cold)")
    render.axhline(TARGET_RENDER_S, color="red", ls="--", lw=1, label=f"target at {TARGET_AT:,}")
    render.set_ylabel("seconds")
    render.set_title("GET /metrics wall time")
    baseline.plot(xs, [r["baseline_s"] for r in rows], "o-", label="baseline wall time")
    baseline.plot(xs, [r["baseline_daemon_cpu_s"] for r in rows], "s:", label="daemon CPU")
    baseline.plot(
        [at["promotions"]],
        [at["baseline_s"]],
        "D",
        color="tab:purple",
        label=f"wall, {DEFAULT_CONCURRENCY} in flight (default)",
    )
    baseline.set_ylabel("seconds")
    baseline.set_title(f"Baseline, {RATE:g} req/s, {CONCURRENCY} polls in flight")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"promotions ({JOBS} jobs each)")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run() -> Result:
    result = Result(NAME, TITLE)
    clock = Stopwatch()
    rows = [await _one(size, CONCURRENCY) for size in SIZES]
    at = await _one(TARGET_AT, DEFAULT_CONCURRENCY)
    rss_ok = at["rss_mb"] <= TARGET_RSS_MB
    render_ok = at["metrics_render_s_median"] <= TARGET_RENDER_S
    scraped_ok = at["rss_mb_after_scrapes"] <= TARGET_RSS_MB
    size = f"{TARGET_AT:,} x {JOBS}"
    limit = f"<= {TARGET_RSS_MB:g}"
    result.check(f"RSS after baseline, {size}", at["rss_mb"], "MB", limit, rss_ok)
    result.check(
        f"RSS after {SCRAPES + 1} scrapes, {size}",
        at["rss_mb_after_scrapes"],
        "MB",
        limit,
        scraped_ok,
    )
    result.check(
        f"/metrics render, {size}",
        at["metrics_render_s_median"],
        "s",
        f"<= {TARGET_RENDER_S:g}",
        render_ok,
    )
    result.check(
        f"baseline of {size}, {DEFAULT_CONCURRENCY} polls in flight", at["baseline_s"], "s"
    )
    for row in rows:
        if row["promotions"] != TARGET_AT:
            size = f"{row['promotions']:,} x {JOBS}"
            result.check(f"RSS after baseline, {size}", row["rss_mb"], "MB")
            result.check(f"/metrics render, {size}", row["metrics_render_s_median"], "s")
    for row in rows:
        size = f"{row['promotions']:,} x {JOBS}"
        result.check(f"baseline of {size}, {CONCURRENCY} polls in flight", row["baseline_s"], "s")
    result.data = {
        "setup": {
            "jobs_per_promotion": JOBS,
            "sizes": list(SIZES),
            "max_requests_per_second": RATE,
            "max_concurrent_polls": {"growth_series": CONCURRENCY, "target": DEFAULT_CONCURRENCY},
            "intervals_s": {"interval": 3600, "active_interval": 3600},
            "simulator": "separate process (python -m tests.benchmarks.simserver), frozen",
            "scrapes": SCRAPES,
        },
        "targets": {
            "at_promotions": TARGET_AT,
            "rss_mb": TARGET_RSS_MB,
            "metrics_render_s": TARGET_RENDER_S,
        },
        "passed": rss_ok and render_ok and scraped_ok,
        "at_target_default_concurrency": at,
        "sizes": rows,
    }
    plot = RESULTS / f"{NAME}.png"
    _plot(rows, at, plot)
    result.plot = plot.name
    result.seconds = clock.elapsed
    return result


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run()).to_json(), indent=1))
