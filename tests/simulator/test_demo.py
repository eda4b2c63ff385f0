"""The demo store and `python -m monitor.simulator` serve every kind, type and status."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from monitor.simulator import Simulator, main, populate_demo
from tests.simulator_support import KNOWN_FAILURES
from tests.support import FakeClock

# demo


def test_populate_demo_covers_every_kind_type_and_status() -> None:
    sim = Simulator(clock=FakeClock())
    ids = populate_demo(sim, 6, 6)
    kinds = [p["type"] for p in sim.promotions()]
    assert len(ids) == 6
    assert 0 < kinds.count("rule_promotion") < kinds.count("promotion")
    jobs = [job for pid in ids for job in sim.jobs(pid)]
    assert {(j["job_type"], j["status"]) for j in jobs} == {
        (job_type, status)
        for job_type in ("code_generate", "code_export")
        for status in ("pending", "processing", "completed", "failed", "cancelling", "cancelled")
    }
    errors = [job["error"] for job in jobs if job["status"] == "failed"]
    assert errors
    assert all(KNOWN_FAILURES.fullmatch(error) for error in errors)
    assert all("error" not in job for job in jobs if job["status"] != "failed")
    for pid in ids:
        active = [j for j in sim.jobs(pid) if j["status"] in ("pending", "processing")]
        assert len(active) <= 1


def test_populate_demo_always_includes_a_rule_promotion() -> None:
    sim = Simulator(clock=FakeClock())
    populate_demo(sim, 2, 1)
    assert [p["type"] for p in sim.promotions()] == ["promotion", "rule_promotion"]


@contextlib.asynccontextmanager
async def served_by_main(
    *flags: str,
    sigint: signal.Handlers = signal.SIG_DFL,
    stop: signal.Signals = signal.SIGINT,
) -> AsyncIterator[tuple[aiohttp.ClientSession, dict[str, str]]]:
    """The simulator CLI as a subprocess on a free port: a session on it and auth headers.

    The child starts with SIGINT set to `sigint`, whatever the test's own disposition (a
    background job of a non-interactive shell has it ignored), and must exit 0 on `stop`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor.simulator",
        "--port",
        "0",
        *flags,
        cwd=Path(__file__).parents[1],
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            line = (await process.stdout.readline()).decode()
        settings = dict(part.split("=", 1) for part in line.split())
        base_url = settings["EPCC_API_BASE_URL"]
        assert base_url.startswith("http://127.0.0.1:")
        form = {
            "grant_type": "client_credentials",
            "client_id": settings["EPCC_CLIENT_ID"],
            "client_secret": settings["EPCC_CLIENT_SECRET"],
        }
        async with aiohttp.ClientSession(base_url) as http:
            async with http.post("/oauth/access_token", data=form) as resp:
                token = (await resp.json())["access_token"]
            yield http, {"Authorization": f"Bearer {token}"}
        process.send_signal(stop)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:  # (never left running, whatever failed)
            process.kill()
            await process.wait()


async def test_main_serves_a_populated_store_until_interrupted() -> None:
    flags = ("--promotions", "3", "--jobs", "2", "--lifecycle-period", "0.05")
    async with served_by_main(*flags) as (http, headers):
        async with http.get("/v2/promotions", headers=headers) as resp:
            standard = (await resp.json())["meta"]["results"]["total"]
        async with http.get("/v2/rule-promotions", headers=headers) as resp:
            rule = (await resp.json())["meta"]["results"]["total"]
    assert (standard, rule) == (2, 1)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored"])
async def test_main_stops_cleanly_on_sigint_and_sigterm_even_started_with_sigint_ignored(
    sigint: signal.Handlers, stop: signal.Signals
) -> None:
    flags = ("--promotions", "1", "--jobs", "1", "--lifecycle-period", "0.05")
    async with (
        served_by_main(*flags, sigint=sigint, stop=stop) as (http, headers),
        http.get("/v2/promotions", headers=headers) as resp,
    ):
        assert resp.status == 200


async def test_main_flags_set_the_store_paging_habits() -> None:
    flags = ("--promotions", "4", "--jobs", "30", "--lifecycle-period", "0")
    async with served_by_main(*flags, "--page-cap", "7", "--ignore-offset", "--unordered") as (
        http,
        headers,
    ):
        pages = []
        for offset in ("0", "7", "7"):
            params = {"page[limit]": "100", "page[offset]": offset}
            async with http.get("/v2/promotions", params=params, headers=headers) as resp:
                promotions = await resp.json()
            pid = promotions["data"][0]["id"]
            async with http.get(f"/v2/promotions/{pid}/jobs", params=params, headers=headers) as r:
                pages.append(await r.json())
    assert promotions["meta"]["page"] == {"limit": 7, "offset": 0, "current": 1, "total": 1}
    assert all(page["meta"]["page"]["limit"] == 7 for page in pages)
    assert all(page["meta"]["page"]["offset"] == 0 for page in pages)
    assert all(page["meta"]["results"]["total"] == 30 for page in pages)
    # the same first page asked three times, listed in three different orders
    assert len({tuple(job["id"] for job in page["data"]) for page in pages}) == 3


def test_main_rejects_a_page_cap_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--page-cap", "0"])
    assert exited.value.code == 2
    assert "--page-cap" in capsys.readouterr().err
