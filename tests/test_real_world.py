"""The daemon against stores that answer the way the published descriptions allow, not the way
our first reading assumed: a shorter page length than asked, an ignored offset, no stable order,
the token and result shapes the descriptions disagree on.

Each test runs `promo-monitor run` as a subprocess against the simulator in one of those modes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitor.simulator import Simulator
from tests.support import long_ago, running_daemon, value, write_config


@pytest.fixture
def seed() -> int:
    return 21


def history(sim: Simulator, pid: str, count: int, failed: int) -> list[str]:
    """`count` finished jobs from long before the monitor, `failed` of them failed."""
    ids = sim.add_jobs(pid, count - failed, status="completed", created_at=long_ago())
    ids += sim.add_jobs(
        pid, failed, status="failed", error="codes limit exceeded", created_at=long_ago()
    )
    return ids


def offset_ignoring_store(sim: Simulator) -> str:
    """A store that serves pages of 25 and ignores page[offset], and a promotion whose 60 old
    jobs (two failed) fill the one page it serves; returns the promotion's id."""
    sim.page_cap = 25
    sim.ignore_offset = True
    pid = sim.add_promotion()
    history(sim, pid, 60, failed=2)
    return pid


async def test_a_failure_past_the_one_page_is_news_whatever_its_timestamps_say(
    sim: Simulator, tmp_path: Path
) -> None:
    # An offset-ignoring store, and updated_at left at created_at after a status change (as in
    # Promotions Builder's cancel example): a job past the page the store serves, processing
    # for two hours, then failed. Its failure comes only through the failed-jobs read, and its
    # timestamps say it changed long before the baseline; but that read showed every failed
    # job at the baseline, and it was not among them: news.
    pid = offset_ignoring_store(sim)
    sim.timestamps = "frozen"
    hidden = sim.add_job(pid, status="processing", created_at=time.time() - 7200)
    async with running_daemon(write_config(tmp_path, sim, [{"id": pid}])) as daemon:
        await daemon.wait_for("baseline_loaded")
        sim.set_job_status(pid, hidden, "failed", error="codes limit exceeded")
        failed = await daemon.wait_for("job_failed")
        await daemon.polled(pid, 3)

    assert failed["job_id"] == hidden
    assert len(daemon.named("job_failed")) == 1


async def test_an_unordered_store_causes_no_phantom_vanish_and_no_false_failure(
    sim: Simulator, tmp_path: Path
) -> None:
    # The store the issue was found with: 150 jobs, five old failures, pages of 25, and a jobs
    # listing without ORDER BY. The monitor used to log hundreds of phantom job_vanished and
    # job_discovered, and count old failures again each time a skipped job reappeared.
    sim.page_cap = 25
    sim.unordered = True
    pid = sim.add_promotion()
    history(sim, pid, 150, failed=5)
    running = sim.add_job(pid, status="processing")
    async with running_daemon(write_config(tmp_path, sim, [{"id": pid}])) as daemon:
        await daemon.wait_for("baseline_loaded")
        await daemon.polled(pid, 12)

        assert daemon.named("job_vanished") == []
        assert daemon.named("job_failed") == []
        assert daemon.named("job_discovered") == []  # (late-seen history logs at debug only)
        (warning,) = daemon.named("poll_incomplete")
        assert (warning["promotion_id"], warning["reason"]) == (pid, "short")
        samples = await daemon.metrics()
        assert value(
            samples, "epcc_monitor_polls_incomplete_total", promotion_id=pid, reason="short"
        )
        assert (
            value(
                samples,
                "epcc_promotion_job_failures_total",
                promotion_id=pid,
                job_type="code_generate",
            )
            == 0
        )

        # A real failure among the shuffled pages is reported once, however often it is listed.
        sim.set_job_status(pid, running, "failed", error="codes limit exceeded")
        await daemon.wait_for("job_failed")
        await daemon.polled(pid, 6)
        assert [e["job_id"] for e in daemon.named("job_failed")] == [running]
        assert daemon.named("job_vanished") == []


async def test_a_failure_on_the_third_page_of_a_short_page_store_is_reported(
    sim: Simulator, tmp_path: Path
) -> None:
    # The store serves 25 a page whatever is asked; the client asks for 100.
    sim.page_cap = 25
    pid = sim.add_promotion()
    ids = history(sim, pid, 130, failed=0)
    async with running_daemon(write_config(tmp_path, sim, [{"id": pid}])) as daemon:
        baseline = await daemon.wait_for("baseline_loaded")
        assert baseline["jobs"] == 130
        sim.set_job_status(pid, ids[60], "failed", error="codes limit exceeded")
        failed = await daemon.wait_for("job_failed")
        assert failed["job_id"] == ids[60]
        await daemon.polled(pid, 3)
        assert daemon.named("job_vanished") == []
        assert daemon.named("poll_incomplete") == []


async def test_a_store_that_ignores_the_offset_is_not_read_forever(
    sim: Simulator, tmp_path: Path
) -> None:
    pid = offset_ignoring_store(sim)
    async with running_daemon(write_config(tmp_path, sim, [{"id": pid}])) as daemon:
        await daemon.wait_for("baseline_loaded")
        await daemon.polled(pid, 4)
        # Three requests a poll (the first page, its repeat, the failed jobs alone), not an
        # endless loop.
        per_poll = [r for r in sim.requests if r.path.endswith("/jobs")]
        assert {(r.query["page[offset]"], r.query.get("filter")) for r in per_poll} == {
            ("0", None),
            ("25", None),
            ("0", "eq(status,failed)"),
        }
        (warning,) = daemon.named("poll_incomplete")
        assert warning["reason"] == "offset_ignored"
        assert daemon.named("job_vanished") == []
        assert daemon.named("job_failed") == []
        status, body = await daemon.get("/status.json")
        assert status == 200
        (row,) = json.loads(body)["promotions"]
        assert row["last_poll"]["incomplete"] == "offset_ignored"


async def test_a_failure_an_offset_ignoring_store_never_lists_still_pages(
    sim: Simulator, tmp_path: Path
) -> None:
    # 60 old jobs fill the one page such a store serves; the newest job is never on it. When it
    # fails, the failed jobs alone (the documented status filter) show it: reported once.
    pid = offset_ignoring_store(sim)
    newest = sim.add_job(pid, status="processing")
    async with running_daemon(write_config(tmp_path, sim, [{"id": pid}])) as daemon:
        await daemon.wait_for("baseline_loaded")
        sim.set_job_status(pid, newest, "failed", error="codes limit exceeded")
        failed = await daemon.wait_for("job_failed")
        assert failed["job_id"] == newest
        await daemon.polled(pid, 3)
        assert len(daemon.named("job_failed")) == 1
        assert daemon.named("job_vanished") == []


async def test_the_failed_jobs_alone_keep_the_configured_filter(
    sim: Simulator, tmp_path: Path
) -> None:
    # A promotion watched for its code_generate jobs only: the failed jobs read past an
    # offset-ignoring store's one page are its failed code_generate jobs, not its failed exports.
    pid = offset_ignoring_store(sim)
    export = sim.add_job(pid, status="processing", job_type="code_export")
    generate = sim.add_job(pid, status="processing", job_type="code_generate")
    watched = [{"id": pid, "filter": "eq(job_type,code_generate)"}]
    async with running_daemon(write_config(tmp_path, sim, watched)) as daemon:
        await daemon.wait_for("baseline_loaded")
        sim.set_job_status(pid, export, "failed", error="export failed: storage unavailable")
        sim.set_job_status(pid, generate, "failed", error="codes limit exceeded")
        failed = await daemon.wait_for("job_failed")
        assert failed["job_id"] == generate
        await daemon.polled(pid, 3)
        assert [e["job_id"] for e in daemon.named("job_failed")] == [generate]
        filters = {r.query.get("filter") for r in sim.requests if r.path.endswith("/jobs")}
        assert "eq(job_type,code_generate):eq(status,failed)" in filters
