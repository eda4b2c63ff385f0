"""Answers the daemon must make sense of: unknown statuses, jobs without an id, long error
texts, old timestamps, and an API that quotes secrets back; and no secret in any output.

Each test runs the real daemon (a subprocess) against the simulator or a hand-written store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from monitor.simulator import Fault
from tests.fault_support import (
    CODES_LIMIT,
    FAST_API,
    FAST_POLL,
    SECRET,
    Store,
    jobs_gauge,
    polled,
    read_state,
    watching,
)
from tests.support import (
    Daemon,
    series,
    serving,
    store_app,
    token_answer,
    until,
    value,
    write_config,
)

ODD_PROMOTION = "0b6f0c8e-6a7f-4d43-9e7a-3c1d2b9e0f11"
CLEAN_PROMOTION = "5d2c6a9b-1f0e-4b8d-a3c7-9e8f7a6b5c4d"
STALE_PROMOTION = "7e3a1c52-94b0-4f6e-8d21-0c5b6a7f8e90"
LONG_ERROR = "export failed:\n" + "\tdisk quota exceeded on node 4711\r\n" * 200
DAY = 86_400.0


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def api_job(
    job_id: Any, status: Any = "completed", *, age: float = 60.0, **fields: Any
) -> dict[str, Any]:
    """A job as the API renders it, created and last updated `age` seconds ago."""
    stamp = iso(time.time() - age)
    job: dict[str, Any] = {
        "type": "promotion_job",
        "id": job_id,
        "job_type": "code_export",
        "status": status,
        "meta": {"timestamps": {"created_at": stamp, "updated_at": stamp}},
    }
    job.update(fields)
    return job


class OddStore:
    """A minimal Elastic Path whose jobs pages hold whatever a test puts in them.

    With `echo`, it refuses the credentials, then (when told) the token, quoting back in its
    error texts what it was sent, secrets included.
    """

    client_id = "odd-client"
    client_secret = SECRET

    def __init__(self) -> None:
        self.base_url = ""
        self.pages: dict[str, list[Any]] = {}
        self.polls: dict[str, int] = {}
        self.tokens: list[str] = []
        self.refuse_credentials = False
        self.refuse_token = False
        self.app = store_app(self._jobs, token=self._token)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.refuse_credentials:
            detail = f"client {form.get('client_id')!r} with secret {form.get('client_secret')!r}"
            return error_response(401, detail)
        token = f"odd-token-{len(self.tokens)}-9f2e6d5be1c7a9d3"
        self.tokens.append(token)
        return web.json_response(token_answer(token))

    async def _jobs(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        if pid not in self.pages:
            return error_response(404, "no such promotion")
        self.polls[pid] = self.polls.get(pid, 0) + 1
        if self.refuse_token:
            return error_response(400, f"malformed header {request.headers.get('Authorization')}")
        data = self.pages[pid] if request.query.get("page[offset]", "0") == "0" else []
        return web.json_response({"data": data, "meta": {"results": {"total": len(data)}}})

    async def polled(self, pid: str, times: int = 2) -> None:
        start = self.polls.get(pid, 0)
        await until(lambda: self.polls.get(pid, 0) >= start + times, f"polls of {pid}")


def error_response(status: int, detail: str) -> web.Response:
    body = {"errors": [{"status": status, "title": "Refused", "detail": detail}]}
    return web.json_response(body, status=status)


@contextlib.asynccontextmanager
async def watching_odd(store: OddStore, directory: Path) -> AsyncIterator[Daemon]:
    """Serve the odd store and run the daemon on its promotions; stops it on the way out."""
    async with serving(store.app) as base_url:
        store.base_url = base_url
        promotions = [{"id": pid} for pid in store.pages]
        config = write_config(directory, store, promotions, api=FAST_API, poll=FAST_POLL)
        daemon = await Daemon.start(config)
        try:
            yield daemon
        finally:
            await daemon.stop()


async def test_unknown_statuses_are_kept_verbatim(tmp_path: Path) -> None:
    store = Store.build(seed=51)
    sim, victim = store.sim, store.victim
    sim.add_job(victim, status="archived")  # unknown at the baseline already
    sim.add_job(victim, status="Complete")  # the reference's spelling of completed
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        on_hold = sim.add_job(victim, status="on_hold")
        await daemon.wait_for("job_discovered")
        during = await daemon.metrics()
        sim.set_job_status(victim, on_hold, "failed", error=CODES_LIMIT)
        await daemon.wait_for("job_failed")
        await polled(sim, victim, 2)
        after = await daemon.metrics()
    assert daemon.process.returncode == 0

    (baseline,) = daemon.named("baseline_loaded", promotion_id=victim)
    assert baseline["by_status"] == {"completed": 3, "failed": 1, "processing": 1, "archived": 1}
    (discovered,) = daemon.named("job_discovered")
    assert (discovered["job_id"], discovered["status"]) == (on_hold, "on_hold")
    gauge = jobs_gauge(during, victim)
    assert gauge["code_generate", "on_hold"] == 1
    assert gauge["code_generate", "archived"] == 1
    assert gauge["code_generate", "completed"] == 1
    assert daemon.named("poll_failed") == []
    assert daemon.named("jobs_skipped") == []
    (changed,) = daemon.named("job_status_changed")
    assert (changed["previous_status"], changed["status"]) == ("on_hold", "failed")
    assert [e["job_id"] for e in daemon.named("job_failed")] == [on_hold]
    transitions = value(
        after,
        "epcc_promotion_job_transitions_total",
        promotion_id=victim,
        job_type="code_generate",
        from_status="on_hold",
        to_status="failed",
    )
    assert transitions == 1


async def test_odd_jobs_are_skipped_and_counted_and_error_texts_capped(tmp_path: Path) -> None:
    store = OddStore()
    good = "11111111-2222-4333-8444-555555555555"
    store.pages[ODD_PROMOTION] = [
        api_job(good, status="processing"),
        api_job(None, status="failed", error="lost"),  # id null
        {k: v for k, v in api_job("x").items() if k != "id"},  # id missing
        api_job("   "),  # id blank
        api_job(12345),  # id not text
        "not a job",
        {"id": "bare-minimum"},  # an id and nothing else
        # (failures two hours old: history at the baseline, beyond its lookback)
        api_job("failed-with-novel", status="failed", error=LONG_ERROR, age=7200.0),
    ]
    store.pages[CLEAN_PROMOTION] = [
        api_job("c1"),
        api_job("c2", status="failed", error="x", age=7200.0),
    ]
    async with watching_odd(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=2)
        await store.polled(ODD_PROMOTION, 2)
        during = await daemon.metrics()
        state = read_state(tmp_path)
        store.pages[ODD_PROMOTION][0] = api_job(good, status="failed", error=CODES_LIMIT)
        await daemon.wait_for("job_failed")
        await store.polled(ODD_PROMOTION, 2)
        after = await daemon.metrics()
    assert daemon.process.returncode == 0

    # Jobs that cannot be identified are skipped, and counted, five a poll.
    (baseline,) = daemon.named("baseline_loaded", promotion_id=ODD_PROMOTION)
    assert baseline["jobs"] == 3
    skipped = daemon.named("jobs_skipped")
    assert skipped
    assert {e["promotion_id"] for e in skipped} == {ODD_PROMOTION}
    assert {e["count"] for e in skipped} == {5}
    counted = value(during, "epcc_monitor_jobs_skipped_total", promotion_id=ODD_PROMOTION)
    assert counted is not None
    assert counted >= 5
    assert counted % 5 == 0
    clean = value(during, "epcc_monitor_jobs_skipped_total", promotion_id=CLEAN_PROMOTION)
    assert clean in (None, 0)
    # A job with nothing but an id is kept, its type and status unknown.
    assert jobs_gauge(during, ODD_PROMOTION)["unknown", "unknown"] == 1
    assert set(state[ODD_PROMOTION].jobs) == {good, "bare-minimum", "failed-with-novel"}
    assert daemon.named("poll_failed") == []
    assert daemon.named("job_vanished") == []
    assert [e["job_id"] for e in daemon.named("job_failed")] == [good]

    # API error texts reach the labels single-line and capped, and the snapshot likewise.
    info = {
        dict(labels)["job_id"]: dict(labels)["error"]
        for labels in series(after, "epcc_promotion_job_failed_info")
        if dict(labels)["promotion_id"] == ODD_PROMOTION
    }
    novel = info["failed-with-novel"]
    assert novel.startswith("export failed: disk quota exceeded on node 4711")
    assert not any(c in novel for c in "\r\n\t")
    assert len(novel) <= 200
    stored = state[ODD_PROMOTION].jobs["failed-with-novel"].error
    assert stored is not None
    assert "\n" not in stored
    assert len(stored) <= 200
    for labels in series(after, "epcc_promotion_job_errors_total"):
        error = dict(labels)["error"]
        assert "\n" not in error
        assert len(error) <= 200


async def test_a_watched_job_that_finished_long_ago_is_reported_not_vanished(
    tmp_path: Path,
) -> None:
    # Retention prunes history the monitor already knew as finished; a job it knew as active is
    # news first, whatever its timestamp says.
    store = OddStore()
    watched = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    # Queued for a long time, as code jobs can be; still active, so watched.
    store.pages[STALE_PROMOTION] = [api_job(watched, status="processing", age=30 * DAY)]
    async with watching_odd(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded")
        # It failed long ago by its own timestamp: e.g. while the monitor was down for
        # longer than state.retention_days.
        store.pages[STALE_PROMOTION] = [
            api_job(watched, status="failed", error=CODES_LIMIT, age=8 * DAY)
        ]
        await store.polled(STALE_PROMOTION, 3)
    assert daemon.named("job_vanished") == []
    assert [e["job_id"] for e in daemon.named("job_failed")] == [watched]


async def test_secrets_an_api_quotes_back_never_reach_the_logs(tmp_path: Path) -> None:
    store = OddStore()
    store.pages[ODD_PROMOTION] = [api_job("e1")]
    store.refuse_credentials = True
    async with watching_odd(store, tmp_path) as daemon:
        await daemon.wait_for("poll_failed", count=2)
        store.refuse_credentials = False
        await daemon.wait_for("baseline_loaded")
        store.refuse_token = True
        await daemon.wait_for("poll_failed", lambda e: e["reason"] == "http_4xx", count=2)
        store.refuse_token = False
        await store.polled(ODD_PROMOTION, 2)
        _, metrics_text = await daemon.get("/metrics")

    assert {e["reason"] for e in daemon.named("poll_failed")} == {"auth", "http_4xx"}
    assert store.tokens
    everything = daemon.output + metrics_text
    assert SECRET not in everything
    for token in store.tokens:
        assert token not in everything


async def test_secrets_reach_no_log_line_and_no_metric_at_debug_level(tmp_path: Path) -> None:
    store = Store.build(seed=91, client_secret=SECRET)
    sim, victim, other = store.sim, store.victim, store.others[0]
    debug = {"level": "debug", "format": "json"}
    async with watching(store, tmp_path, log=debug) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        sim.inject(Fault("status", status=401, path_contains=f"/{victim}/jobs"))
        sim.inject(Fault("status", status=500, path_contains=f"/{other}/jobs"))
        sim.inject(Fault("html", path_contains=f"/{other}/jobs"))
        await daemon.wait_for("token_refreshed", count=2)
        await daemon.wait_for("request_retried", count=2)
        sim.revoke_tokens()
        sim.inject(Fault("status", status=503, path_contains="/oauth"))
        await daemon.wait_for("token_refreshed", count=3)
        # A job touched without a status change: a debug-level event.
        sim.set_job_status(victim, store.processing[victim], "processing")
        await daemon.wait_for("job_updated")
        _, metrics_text = await daemon.get("/metrics")
        _, landing = await daemon.get("/")

    tokens = sim.issued_tokens()
    assert len(tokens) >= 3
    assert daemon.named("job_updated")[0]["level"] == "debug"
    everything = daemon.output + metrics_text + landing
    assert SECRET not in everything
    for token in tokens:
        assert token not in everything
    assert "Bearer " not in everything
