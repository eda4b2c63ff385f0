"""No byte of a secret in any output: a store that quotes the client secret where text is cut
to length, and a base_url that carries a password in its user-info.

Each test runs the real command (a subprocess) against a hand-written store or the simulator.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from monitor.simulator import Simulator
from tests.fault_support import SECRET, read_state
from tests.support import Daemon, run_cli, serving, started, store_app, write_config

PROMOTION = "3c9d1e2f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
JOB = "6e5d4c3b-2a19-4807-b6f5-e4d3c2b1a098"
# Eight characters: any run of a secret this long in an output is a leak.
PREFIX = SECRET[:8]
# Error texts are cut to 200 characters: a secret quoted from 191 on would leave its first 8.
PADDED = "x" * 191 + SECRET
PASSWORD = "pr0xy-pa55-7c2e9b"  # a test credential, and the leak to look for


class QuotingStore:
    """An Elastic Path that refuses the jobs read with an error quoting the client secret, and
    then (when told) serves a job that fails with an error quoting it too."""

    client_id = "quoting-client"
    client_secret = SECRET

    def __init__(self) -> None:
        self.base_url = ""
        self.refuse = True
        self.status = "processing"
        self.app = store_app(self._jobs)

    async def _jobs(self, _: web.Request) -> web.Response:
        if self.refuse:
            detail = "Refused: " + "x" * 182 + f"client secret {SECRET} is not allowed here"
            body = {"errors": [{"status": 400, "title": "Bad Request", "detail": detail}]}
            return web.json_response(body, status=400)
        job: dict[str, Any] = {
            "type": "promotion_job",
            "id": JOB,
            "job_type": "code_export",
            "status": self.status,
            "meta": {"timestamps": {"created_at": datetime.now(UTC).isoformat()}},
        }
        if self.status == "failed":
            job["error"] = PADDED
        return web.json_response({"data": [job], "meta": {"results": {"total": 1}}})


async def test_secrets_are_scrubbed_before_text_is_cut(tmp_path: Path) -> None:
    store = QuotingStore()
    async with serving(store.app) as base_url:
        store.base_url = base_url
        config = write_config(tmp_path, store, [{"id": PROMOTION}])
        daemon = await Daemon.start(config)
        try:
            refused = await daemon.wait_for("poll_failed")
            _, refused_status = await daemon.get("/status.json")
            store.refuse = False
            await daemon.wait_for("baseline_loaded")
            store.status = "failed"
            failed = await daemon.wait_for("job_failed")
            await daemon.polled(PROMOTION, 2)
            _, metrics_text = await daemon.get("/metrics")
            _, status_json = await daemon.get("/status.json")
            _, page = await daemon.get("/")
        finally:
            await daemon.stop()

    assert refused["reason"] == "http_4xx"
    assert "[redacted]" in refused["detail"] or refused["detail"].endswith("…")
    (error,) = json.loads(refused_status)["poll_errors"]
    assert error["reason"] == "http_4xx"
    assert failed["job_id"] == JOB
    assert failed["error"].startswith("x" * 150)
    stored = read_state(tmp_path)[PROMOTION].jobs[JOB].error
    assert stored is not None
    for output in (daemon.output, refused_status, metrics_text, status_json, page, stored):
        assert PREFIX not in output


async def test_a_password_in_base_url_is_never_printed(tmp_path: Path) -> None:
    sim = Simulator(seed=224)
    pid = sim.add_promotion("promotion")
    sim.add_job(pid, status="completed")
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}])
        document = config.read_text(encoding="utf-8")
        with_password = str(URL(sim.base_url).with_user("proxy-user").with_password(PASSWORD))
        config.write_text(document.replace(sim.base_url, with_password), encoding="utf-8")
        checked = run_cli("check-config", "--config", str(config))
        daemon = await Daemon.start(config)
        try:
            started_event = await daemon.wait_for("monitor_started")
            _, status_json = await daemon.get("/status.json")
            _, page = await daemon.get("/")
            _, metrics_text = await daemon.get("/metrics")
        finally:
            await daemon.stop()

    assert checked.returncode == 0, checked.stderr
    # The URL is still shown, with the user, so a reader knows a proxy with credentials is used.
    assert "proxy-user:" in checked.stdout
    assert f"@{URL(sim.base_url).host}:" in checked.stdout
    assert started_event["base_url"].startswith("http://proxy-user:")
    outputs = (checked.stdout, checked.stderr, daemon.output, status_json, page, metrics_text)
    for output in outputs:
        assert PASSWORD not in output
