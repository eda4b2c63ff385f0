"""Injected faults break exactly the requests they name, in the ways a client must survive."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import aiohttp
import pytest

from monitor.simulator import Fault, RecordedRequest, Simulator
from tests.simulator_support import Api, eventually, jobs_path
from tests.support import START, FakeClock


@pytest.mark.parametrize("status", [500, 503, 429, 401, 403, 404, 400])
async def test_status_fault_answers_once_with_an_ep_error_body(
    api: Api, sim: Simulator, status: int
) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("status", status=status))
    answered, body = await api.get(jobs_path(pid))
    assert answered == status
    error = body["errors"][0]
    assert int(error["status"]) == status
    assert ("request_id" in error) == (status >= 500)
    assert (await api.get(jobs_path(pid)))[0] == 200


async def test_429_carries_retry_after(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("status", status=429, retry_after="2"))
    async with api.http.get(sim.base_url + jobs_path(pid), headers=await api.headers()) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"


async def test_fault_only_hits_paths_it_names(api: Api, sim: Simulator) -> None:
    healthy, broken = sim.add_promotion(), sim.add_promotion()
    await api.headers()
    sim.inject(Fault("status", status=503, path_contains=broken, times=2))
    assert (await api.get(jobs_path(healthy)))[0] == 200
    assert (await api.get(jobs_path(broken)))[0] == 503
    assert (await api.get(jobs_path(healthy)))[0] == 200
    assert (await api.get(jobs_path(broken)))[0] == 503
    assert (await api.get(jobs_path(broken)))[0] == 200


async def test_unlimited_fault_lasts_until_cleared(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("status", status=500, times=None))
    assert [(await api.get(jobs_path(pid)))[0] for _ in range(3)] == [500, 500, 500]
    sim.clear_faults()
    assert (await api.get(jobs_path(pid)))[0] == 200


async def test_faults_apply_in_injection_order(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("status", status=500))
    sim.inject(Fault("status", status=503))
    assert [(await api.get(jobs_path(pid)))[0] for _ in range(3)] == [500, 503, 200]


async def test_token_endpoint_faults(api: Api, sim: Simulator) -> None:
    sim.inject(Fault("status", status=503, path_contains="/oauth"))
    assert (await api.post_token())[0] == 503
    assert sim.tokens_issued == 0
    assert (await api.post_token())[0] == 200
    sim.inject(Fault("wrong_shape", path_contains="/oauth"))
    status, body = await api.post_token()
    assert status == 200
    assert isinstance(body, list)


async def test_timeout_fault_outlasts_the_client(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("timeout", delay=5.0))
    with pytest.raises(TimeoutError):
        await api.get(jobs_path(pid), timeout=aiohttp.ClientTimeout(total=0.2))
    assert sim.requests[-1].status == 0
    assert (await api.get(jobs_path(pid)))[0] == 200


async def test_stop_releases_a_request_held_by_a_timeout_fault(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("timeout"))
    request = asyncio.create_task(api.get(jobs_path(pid)))
    await eventually(lambda: bool(sim.requests) and sim.requests[-1].path == jobs_path(pid))
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sim.stop()
    assert loop.time() - began < 2.0
    assert (await request)[0] == 200


async def test_slow_fault_delays_a_normal_answer(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("slow", delay=0.3))
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, body = await api.get(jobs_path(pid))
    assert loop.time() - began >= 0.3
    assert status == 200
    assert body["data"] == []


async def test_reset_fault_drops_the_connection(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    # aiohttp retries once on a reused connection, so one reset would go unnoticed
    sim.inject(Fault("reset", times=None))
    with pytest.raises(aiohttp.ClientError):
        await api.get(jobs_path(pid))
    answered = [r.status for r in sim.requests if r.path == jobs_path(pid)]
    assert answered
    assert set(answered) == {0}
    sim.clear_faults()
    assert (await api.get(jobs_path(pid)))[0] == 200


async def test_truncated_fault_sends_half_a_valid_body(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 3)
    await api.headers()
    sim.inject(Fault("truncated"))
    status, content_type, truncated = await api.raw(jobs_path(pid))
    assert (status, content_type) == (200, "application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated)
    _, _, full = await api.raw(jobs_path(pid))
    assert full.startswith(truncated)
    assert len(truncated) == len(full) // 2


async def test_html_fault_looks_like_a_proxy_error(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("html"))
    status, content_type, body = await api.raw(jobs_path(pid))
    assert (status, content_type) == (502, "text/html")
    assert b"<html>" in body


async def test_wrong_shape_fault_is_valid_json_of_the_wrong_shape(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    await api.headers()
    sim.inject(Fault("wrong_shape"))
    status, body = await api.get(jobs_path(pid))
    assert status == 200
    assert not isinstance(body["data"], list)


async def test_huge_fault_streams_64_mib(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    headers = await api.headers()
    sim.inject(Fault("huge"))
    resp = await api.http.get(sim.base_url + jobs_path(pid), headers=headers)
    try:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.content_length is not None
        assert resp.content_length >= 64 * 1024 * 1024
        head = await resp.content.readexactly(64)
        assert head.startswith(b'{"data": [{"type": "promotion_job"')
    finally:
        resp.close()
    assert (await api.get(jobs_path(pid)))[0] == 200


def test_inject_rejects_nonsense(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject(Fault(cast(Any, "gremlins")))
    with pytest.raises(ValueError, match="times"):
        sim.inject(Fault("status", times=0))


async def test_requests_are_recorded_in_order(api: Api, sim: Simulator, clock: FakeClock) -> None:
    pid = sim.add_promotion()
    await api.headers()
    clock.now += 5
    sim.inject(Fault("status", status=503))
    await api.get(jobs_path(pid), {"page[limit]": "10"})
    assert sim.requests == [
        RecordedRequest("POST", "/oauth/access_token", {}, START, 200),
        RecordedRequest("GET", jobs_path(pid), {"page[limit]": "10"}, START + 5, 503),
    ]
