"""A store that does not page: the jobs list is described with `data` only, so an answer with no
`meta` and no `links` is the whole list. It is complete (a job missing from it is gone), and no
further page is asked for.

The test runs the real daemon (a subprocess) against the simulator's unpaged store.
"""

from __future__ import annotations

from pathlib import Path

from monitor.simulator import Simulator
from tests.fault_support import jobs_requests, polled
from tests.support import Daemon, started, value, write_config


async def test_an_answer_without_meta_or_links_is_the_whole_list(tmp_path: Path) -> None:
    # More jobs than a page holds (page_limit is at most 100): a paging store would page them.
    sim = Simulator(seed=225, unpaged=True)
    pid = sim.add_promotion("promotion")
    finished = sim.add_jobs(pid, 130, status="completed", job_type="code_export")
    processing = sim.add_job(pid, status="processing")
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}])
        daemon = await Daemon.start(config)
        try:
            await daemon.wait_for("baseline_loaded")
            mark = len(sim.requests)
            await polled(sim, pid, 3)
            sim.remove_job(pid, finished[0])
            vanished = await daemon.wait_for("job_vanished")
            sim.set_job_status(pid, processing, "failed", error="codes limit exceeded")
            failed = await daemon.wait_for("job_failed")
            samples = await daemon.polled(pid)
        finally:
            await daemon.stop()

    (baseline,) = daemon.named("baseline_loaded")
    assert baseline["jobs"] == 131
    # One request a poll: the first page was the whole list.
    offsets = {r.query.get("page[offset]", "0") for r in jobs_requests(sim.requests[mark:], pid)}
    assert offsets == {"0"}
    assert daemon.named("poll_incomplete") == []
    assert value(samples, "epcc_monitor_polls_incomplete_total", promotion_id=pid) in (None, 0)
    assert vanished["job_id"] == finished[0]
    assert failed["job_id"] == processing
