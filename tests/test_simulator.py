"""The simulator must answer like Elastic Path and obey its controls exactly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from yarl import URL

from monitor.simulator import Fault, RecordedRequest, Simulator, main, populate_demo

# Elastic Path's documented example responses (copied from shared/fixtures, see its README).
FIXTURES = Path(__file__).parent / "fixtures"
START = 1_733_270_626.0  # 2024-12-04T00:03:46Z
FILTER_ERROR = {
    "errors": [
        {"status": "400", "title": "Bad Request", "detail": "Could not parse the supplied filter"}
    ]
}
KNOWN_FAILURES = re.compile(
    r"codes limit exceeded"
    r"|Promotion code generation failed: database timeout after \d+s"
    r"|code generation aborted after \d+ of \d+ codes: duplicate code collision"
    r"|export failed: storage unavailable \(request id [0-9a-f]{16}\)"
    r"|export failed: upload of \d+ codes timed out after \d+s"
)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    """A minimal client, so each test reads as requests and answers."""

    sim: Simulator
    http: aiohttp.ClientSession
    token: str = ""

    async def post_token(self, form: Mapping[str, str] | None = None) -> tuple[int, Any]:
        form = form or {
            "grant_type": "client_credentials",
            "client_id": "demo-client-id",
            "client_secret": "demo-client-secret",
        }
        async with self.http.post(f"{self.sim.base_url}/oauth/access_token", data=form) as resp:
            return resp.status, await resp.json()

    async def headers(self) -> dict[str, str]:
        if not self.token:
            status, body = await self.post_token()
            assert status == 200
            self.token = body["access_token"]
        return {"Authorization": f"Bearer {self.token}"}

    async def get(
        self, path: str, params: Mapping[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = await self.headers()
        url = f"{self.sim.base_url}{path}"
        async with self.http.get(url, params=params, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()

    async def raw(self, path: str) -> tuple[int, str, bytes]:
        headers = await self.headers()
        async with self.http.get(f"{self.sim.base_url}{path}", headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    simulator = Simulator(clock=clock)
    simulator.spawn_rate = 0.0
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(sim, http)


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def jobs_path(promotion_id: str, kind: str = "promotion") -> str:
    prefix = "rule-promotions" if kind == "rule_promotion" else "promotions"
    return f"/v2/{prefix}/{promotion_id}/jobs"


# tokens


async def test_token_answer_has_the_fixture_shape(api: Api, sim: Simulator) -> None:
    status, body = await api.post_token()
    assert status == 200
    assert set(body) == set(load("access-token.json"))
    assert re.fullmatch(r"[0-9a-f]{40}", body["access_token"])
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["expires"] == int(START + 3600)
    assert body["identifier"] == "client_credentials"
    assert sim.tokens_issued == 1


async def test_token_expires_by_the_clock(api: Api, sim: Simulator, clock: FakeClock) -> None:
    pid = sim.add_promotion()
    assert (await api.get(jobs_path(pid)))[0] == 200
    clock.now += 3599
    assert (await api.get(jobs_path(pid)))[0] == 200
    clock.now += 1
    status, body = await api.get(jobs_path(pid))
    assert status == 401
    assert body == load("errors.json")["unauthorized_401"]


async def test_revoked_tokens_answer_401_until_a_new_one_is_issued(
    api: Api, sim: Simulator
) -> None:
    pid = sim.add_promotion()
    assert (await api.get(jobs_path(pid)))[0] == 200
    sim.revoke_tokens()
    assert (await api.get(jobs_path(pid)))[0] == 401
    api.token = ""
    assert (await api.get(jobs_path(pid)))[0] == 200
    assert sim.tokens_issued == 2


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials", "client_id": "demo-client-id", "client_secret": "x"},
        {
            "grant_type": "client_credentials",
            "client_id": "x",
            "client_secret": "demo-client-secret",
        },
        {
            "grant_type": "password",
            "client_id": "demo-client-id",
            "client_secret": "demo-client-secret",
        },
        {"client_id": "demo-client-id", "client_secret": "demo-client-secret"},
    ],
)
async def test_wrong_credentials_answer_401(api: Api, sim: Simulator, form: dict[str, str]) -> None:
    status, body = await api.post_token(form)
    assert status == 401
    assert body["errors"][0]["status"] == "401"
    assert sim.tokens_issued == 0


@pytest.mark.parametrize(
    "authorization", [None, "Bearer nope", "Basic ZGVtbzpkZW1v", "Bearer ", "Token {token}"]
)
async def test_requests_without_a_valid_bearer_token_answer_401(
    api: Api, sim: Simulator, authorization: str | None
) -> None:
    pid = sim.add_promotion()
    token = (await api.headers())["Authorization"].removeprefix("Bearer ")
    headers = {} if authorization is None else {"Authorization": authorization.format(token=token)}
    async with api.http.get(sim.base_url + jobs_path(pid), headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == load("errors.json")["unauthorized_401"]


# jobs endpoints


async def test_standard_jobs_page_equals_the_fixture(api: Api, sim: Simulator) -> None:
    fixture_text = (FIXTURES / "promotion-jobs-failed.json").read_text()
    job = json.loads(fixture_text)["data"][0]
    pid = sim.add_promotion(promotion_id=job["promotion_id"])
    sim.add_job(
        pid,
        job_id=job["id"],
        status="failed",
        error="codes limit exceeded",
        created_at=epoch(job["meta"]["timestamps"]["created_at"]),
        updated_at=epoch(job["meta"]["timestamps"]["updated_at"]),
    )
    status, body = await api.get(jobs_path(pid))
    assert status == 200
    assert set(body["data"][0]) == set(job)
    # a single page: every link, next included, points at it, as in the fixture
    expected = json.loads(fixture_text.replace("https://useast.api.elasticpath.com", sim.base_url))
    assert body == expected
    assert sim.jobs(pid) == body["data"]


async def test_rule_promotion_jobs_match_the_fixture(api: Api, sim: Simulator) -> None:
    job = load("rule-promotion-job-created.json")["data"]
    created = job["meta"]["timestamps"]["created_at"]
    pid = sim.add_promotion("rule_promotion", promotion_id=job["rule_promotion_id"])
    sim.add_job(
        pid,
        job_id=job["id"],
        job_type="code_export",
        name="Demo export codes",
        created_at=epoch(created),
    )
    status, body = await api.get(jobs_path(pid, "rule_promotion"))
    assert status == 200
    rendered = body["data"][0]
    stamps = rendered["meta"].pop("timestamps")
    job["meta"].pop("timestamps")
    assert rendered == job
    # a float clock cannot carry the last nanosecond digits; shape and microseconds must match
    assert re.fullmatch(r"2024-12-04T00:03:46\.388696\d{3}Z", stamps["created_at"])
    assert stamps["updated_at"] == stamps["created_at"]


async def test_each_kind_is_only_found_under_its_own_endpoint(api: Api, sim: Simulator) -> None:
    standard = sim.add_promotion()
    rule = sim.add_promotion("rule_promotion")
    assert (await api.get(jobs_path(standard)))[0] == 200
    assert (await api.get(jobs_path(rule, "rule_promotion")))[0] == 200
    assert (await api.get(jobs_path(rule)))[0] == 404
    assert (await api.get(jobs_path(standard, "rule_promotion")))[0] == 404


async def test_parameters_and_result_only_where_the_api_sends_them(
    api: Api, sim: Simulator
) -> None:
    pid = sim.add_promotion()
    sim.add_job(pid, status="completed", number_of_codes=500)
    sim.add_job(pid, status="pending")
    sim.add_job(pid, job_type="code_export", status="completed")
    _, body = await api.get(jobs_path(pid))
    done, pending, export = body["data"]
    assert done["result"] == {"generated": 500, "deleted": 0}
    assert done["parameters"]["number_of_codes"] == 500
    assert "parameters" in pending
    assert "result" not in pending
    assert "parameters" not in export
    assert "result" not in export
    assert all("error" not in job for job in body["data"])


async def test_removed_promotion_answers_404(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    assert (await api.get(jobs_path(pid)))[0] == 200
    sim.remove_promotion(pid)
    status, body = await api.get(jobs_path(pid))
    assert status == 404
    assert body["errors"][0]["status"] == 404
    assert (await api.get(jobs_path("no-such-promotion")))[0] == 404


async def test_unknown_path_answers_a_json_404(api: Api) -> None:
    status, body = await api.get("/v2/no-such-thing")
    assert status == 404
    assert body["errors"][0]["status"] == 404


async def test_removed_job_disappears(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    keep, gone = sim.add_jobs(pid, 2)
    sim.remove_job(pid, gone)
    _, body = await api.get(jobs_path(pid))
    assert [job["id"] for job in body["data"]] == [keep]


# paging


async def test_paging_130_jobs_by_100_keeps_insertion_order(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    # newest first in insertion order, so a time-sorted answer would be caught
    ids = [sim.add_job(pid, created_at=START - i) for i in range(130)]
    status, first = await api.get(jobs_path(pid), {"page[limit]": "100"})
    assert status == 200
    assert [job["id"] for job in first["data"]] == ids[:100]
    assert first["meta"] == {
        "page": {"limit": 100, "offset": 0, "current": 1, "total": 2},
        "results": {"total": 130},
    }
    _, last = await api.get(jobs_path(pid), {"page[limit]": "100", "page[offset]": "100"})
    assert [job["id"] for job in last["data"]] == ids[100:]
    assert last["meta"]["page"] == {"limit": 100, "offset": 100, "current": 2, "total": 2}
    assert last["meta"]["results"]["total"] == 130
    assert "page[offset]=100&page[limit]=100" in last["links"]["next"]


async def test_paging_130_jobs_by_25_and_by_default(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    ids = sim.add_jobs(pid, 130)
    _, default = await api.get(jobs_path(pid))
    assert len(default["data"]) == 25
    assert default["meta"]["page"] == {"limit": 25, "offset": 0, "current": 1, "total": 6}
    seen: list[str] = []
    pages = 0
    while True:
        params = {"page[limit]": "25", "page[offset]": str(len(seen))}
        _, body = await api.get(jobs_path(pid), params)
        if not body["data"]:
            break
        pages += 1
        seen += [job["id"] for job in body["data"]]
        assert body["meta"]["results"]["total"] == 130
        assert body["links"]["next"]
    assert seen == ids
    assert pages == 6


async def test_empty_list_has_the_negative_last_offset_seen_in_the_wild(
    api: Api, sim: Simulator
) -> None:
    pid = sim.add_promotion()
    _, body = await api.get(jobs_path(pid))
    assert body["data"] == []
    assert body["meta"] == {
        "page": {"limit": 25, "offset": 0, "current": 1, "total": 0},
        "results": {"total": 0},
    }
    assert "page[offset]=-25" in body["links"]["last"]


@pytest.mark.parametrize(
    "params",
    [
        {"page[limit]": "101"},
        {"page[limit]": "0"},
        {"page[limit]": "ten"},
        {"page[offset]": "10001"},
        {"page[offset]": "-1"},
    ],
)
async def test_out_of_range_paging_answers_400(
    api: Api, sim: Simulator, params: dict[str, str]
) -> None:
    pid = sim.add_promotion()
    status, body = await api.get(jobs_path(pid), params)
    assert status == 400
    assert body["errors"][0]["title"] == "Bad Request"


async def test_largest_allowed_page_and_offset_are_accepted(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 3)
    status, body = await api.get(jobs_path(pid), {"page[limit]": "100", "page[offset]": "10000"})
    assert status == 200
    assert body["data"] == []
    assert body["meta"]["results"]["total"] == 3


# store paging habits (page-length setting, ignored offset, no ORDER BY)


async def test_page_cap_serves_at_most_the_cap_whatever_is_asked(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    ids = sim.add_jobs(pid, 45)
    sim.page_cap = 20
    _, first = await api.get(jobs_path(pid), {"page[limit]": "100"})
    assert [job["id"] for job in first["data"]] == ids[:20]
    assert first["meta"] == {
        "page": {"limit": 20, "offset": 0, "current": 1, "total": 3},
        "results": {"total": 45},
    }
    _, small = await api.get(jobs_path(pid), {"page[limit]": "5", "page[offset]": "40"})
    assert [job["id"] for job in small["data"]] == ids[40:45]
    assert small["meta"]["page"]["limit"] == 5
    # stepping by records received still walks the whole list
    seen: list[str] = []
    while len(seen) < 45:
        _, body = await api.get(
            jobs_path(pid), {"page[limit]": "25", "page[offset]": str(len(seen))}
        )
        assert 0 < len(body["data"]) <= 20
        seen += [job["id"] for job in body["data"]]
    assert seen == ids


async def test_page_cap_applies_to_promotion_lists(clock: FakeClock) -> None:
    sim = Simulator(clock=clock, page_cap=2)
    for kind in ("promotion", "rule_promotion"):
        for _ in range(3):
            sim.add_promotion(kind)
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(sim, http)
            for path in ("/v2/promotions", "/v2/rule-promotions"):
                _, body = await api.get(path, {"page[limit]": "100"})
                assert len(body["data"]) == 2
                assert body["meta"]["page"]["limit"] == 2
                assert body["meta"]["results"]["total"] == 3
    finally:
        await sim.stop()


def test_page_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="page_cap"):
        Simulator(page_cap=0)


async def test_ignore_offset_always_serves_the_first_page(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    ids = sim.add_jobs(pid, 30)
    sim.ignore_offset = True
    for offset in ("0", "10", "25", "10000"):
        _, body = await api.get(jobs_path(pid), {"page[limit]": "10", "page[offset]": offset})
        assert [job["id"] for job in body["data"]] == ids[:10]
        assert body["meta"]["page"]["offset"] == 0
        assert body["meta"]["results"]["total"] == 30
    sim.add_promotion()
    _, listed = await api.get("/v2/promotions", {"page[limit]": "1", "page[offset]": "1"})
    assert [p["id"] for p in listed["data"]] == [pid]


async def test_unordered_lists_jobs_in_a_fresh_order_each_request(api: Api, sim: Simulator) -> None:
    pid = sim.add_promotion()
    ids = sim.add_jobs(pid, 50)
    sim.unordered = True
    orders = []
    for _ in range(3):
        _, body = await api.get(jobs_path(pid), {"page[limit]": "100"})
        assert body["meta"]["results"]["total"] == 50
        orders.append([job["id"] for job in body["data"]])
    assert all(sorted(order) == sorted(ids) for order in orders)
    assert len({tuple(order) for order in [ids, *orders]}) == 4
    # pages are cut from a fresh order each time: walking by offset repeats some jobs, misses others
    seen: list[str] = []
    for offset in range(0, 50, 10):
        _, body = await api.get(jobs_path(pid), {"page[limit]": "10", "page[offset]": str(offset)})
        seen += [job["id"] for job in body["data"]]
    assert len(seen) == 50
    assert len(set(seen)) < 50
    assert set(seen) <= set(ids)


async def test_unordered_keeps_the_filter_and_the_seeded_ids(clock: FakeClock) -> None:
    def build(*, unordered: bool) -> Simulator:
        sim = Simulator(clock=clock, seed=9, unordered=unordered)
        populate_demo(sim, 3, 6)
        return sim

    plain, shuffled = build(unordered=False), build(unordered=True)
    assert [p["id"] for p in plain.promotions()] == [p["id"] for p in shuffled.promotions()]
    pid = shuffled.promotions()[0]["id"]
    await shuffled.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(shuffled, http)
            _, body = await api.get(jobs_path(pid), {"filter": "eq(job_type,code_generate)"})
    finally:
        await shuffled.stop()
    expected = [j["id"] for j in plain.jobs(pid) if j["job_type"] == "code_generate"]
    assert sorted(job["id"] for job in body["data"]) == sorted(expected)
    assert body["meta"]["results"]["total"] == len(expected)


# filters


@pytest.fixture
def mixed_jobs(sim: Simulator) -> str:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 2, status="pending")
    sim.add_jobs(pid, 3, status="failed", error="codes limit exceeded")
    sim.add_jobs(pid, 1, job_type="code_export", status="failed", error="export failed")
    sim.add_jobs(pid, 4, job_type="code_export", status="completed")
    return pid


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("eq(job_type,code_export)", 5),
        ("eq(status,failed)", 4),
        ("eq(job_type,code_generate):eq(status,failed)", 3),
        ("eq(status,failed):eq(job_type,code_export)", 1),
        # the reference's own examples: a space after the comma, and `complete`
        ("eq(job_type, code_export)", 5),
        ("eq(status, complete)", 4),
        ("eq(status,complete):eq(job_type,code_export)", 4),
    ],
)
async def test_job_filters(api: Api, mixed_jobs: str, expression: str, expected: int) -> None:
    status, body = await api.get(jobs_path(mixed_jobs), {"filter": expression})
    assert status == 200
    assert body["meta"]["results"]["total"] == expected
    assert len(body["data"]) == expected
    for clause in expression.split(":"):
        name, value = clause[3:-1].replace(" ", "").split(",")
        wanted = "completed" if value == "complete" else value
        assert all(job[name] == wanted for job in body["data"])


async def test_url_encoded_filter_is_accepted(api: Api, sim: Simulator, mixed_jobs: str) -> None:
    query = "filter=eq%28status%2Cfailed%29%3Aeq%28job_type%2Ccode_export%29"
    url = URL(f"{sim.base_url}{jobs_path(mixed_jobs)}?{query}", encoded=True)
    async with api.http.get(url, headers=await api.headers()) as resp:
        body = await resp.json()
    assert resp.status == 200
    assert [job["job_type"] for job in body["data"]] == ["code_export"]


@pytest.mark.parametrize(
    "expression",
    [
        "eq(status,failed",
        "status=failed",
        "eq(status,failed):",
        "eq(status,failed)eq(job_type,code_export)",
        "like(status,fail*)",
        "gt(status,failed)",
        "eq(colour,red)",
        "",
    ],
)
async def test_malformed_job_filter_answers_400(api: Api, mixed_jobs: str, expression: str) -> None:
    status, body = await api.get(jobs_path(mixed_jobs), {"filter": expression})
    assert status == 400
    assert body == FILTER_ERROR


# promotion lists


async def test_standard_promotion_list(api: Api, sim: Simulator) -> None:
    first = sim.add_promotion(name="Summer sale")
    second = sim.add_promotion(enabled=False, end="2025-01-01T00:00:00.000Z")
    sim.add_promotion("rule_promotion")
    sim.set_promotion(first, name="Summer sale 10%")
    status, body = await api.get("/v2/promotions")
    assert status == 200
    assert [p["id"] for p in body["data"]] == [first, second]
    assert body["meta"]["results"]["total"] == 2
    keys = {"type", "id", "name", "enabled", "start", "end", "promotion_type", "automatic"}
    # Promotions Standard requires description and schema on every item
    keys |= {"description", "schema"}
    assert all(set(p) == keys and p["type"] == "promotion" for p in body["data"])
    assert all(isinstance(p["schema"], dict) and p["description"] for p in body["data"])
    assert body["data"][0]["name"] == "Summer sale 10%"
    assert body["data"][1]["enabled"] is False
    assert body["data"][1]["end"] == "2025-01-01T00:00:00.000Z"
    assert sim.promotions()[:2] == body["data"]
    # only eq(code,...) is filtered server-side: accepted, everything else is a parse error
    status, coded = await api.get("/v2/promotions", {"filter": "eq(code,SUMMER10)"})
    assert (status, coded["data"], coded["meta"]) == (200, body["data"], body["meta"])
    assert await api.get("/v2/promotions", {"filter": "eq(enabled,true)"}) == (400, FILTER_ERROR)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("eq(enabled,true)", {"live", "ended"}),
        ("gt(end,2025-01-01T00:00:00.000Z)", {"live", "off"}),
        ("eq(enabled,true):gt(end,2025-01-01T00:00:00.000Z)", {"live"}),
        ("le(end,2025-01-01)", {"ended"}),
        ("eq(name,off)", {"off"}),
    ],
)
async def test_rule_promotion_list_filters(
    api: Api, sim: Simulator, expression: str, expected: set[str]
) -> None:
    sim.add_promotion("rule_promotion", name="live", end="2026-06-01T00:00:00.000Z")
    sim.add_promotion("rule_promotion", name="off", enabled=False, end="2026-06-01T00:00:00Z")
    sim.add_promotion("rule_promotion", name="ended", end="2024-06-01T00:00:00.000Z")
    sim.add_promotion(name="standard")
    status, body = await api.get("/v2/rule-promotions", {"filter": expression})
    assert status == 200
    assert {p["name"] for p in body["data"]} == expected
    assert all(p["type"] == "rule_promotion" for p in body["data"])


@pytest.mark.parametrize("expression", ["eq(enabled,maybe)", "gt(end,yesterday)", "gt(enabled,1)"])
async def test_malformed_rule_promotion_filter_answers_400(api: Api, expression: str) -> None:
    assert await api.get("/v2/rule-promotions", {"filter": expression}) == (400, FILTER_ERROR)


# faults


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


# lifecycle


def statuses(sim: Simulator, *promotion_ids: str) -> dict[str, str]:
    return {job["id"]: job["status"] for pid in promotion_ids for job in sim.jobs(pid)}


def test_step_moves_pending_to_processing_to_completed(sim: Simulator) -> None:
    sim.failure_rate = 0.0
    pid = sim.add_promotion()
    job = sim.add_job(pid, number_of_codes=250)
    assert sim.step() == 1
    assert statuses(sim, pid) == {job: "processing"}
    assert sim.step() == 1
    [rendered] = sim.jobs(pid)
    assert rendered["status"] == "completed"
    assert rendered["result"] == {"generated": 250, "deleted": 0}
    assert sim.step() == 0
    assert sim.transitions == 2


@pytest.mark.parametrize("job_type", ["code_generate", "code_export"])
def test_step_fails_jobs_with_realistic_errors(sim: Simulator, job_type: str) -> None:
    sim.failure_rate = 1.0
    pid = sim.add_promotion()
    sim.add_jobs(pid, 5, job_type=job_type)
    for _ in range(6):
        sim.step()
    errors = [job["error"] for job in sim.jobs(pid)]
    assert {job["status"] for job in sim.jobs(pid)} == {"failed"}
    assert all(KNOWN_FAILURES.fullmatch(error) for error in errors)


def test_jobs_run_one_at_a_time_oldest_first(sim: Simulator, clock: FakeClock) -> None:
    first, second = sim.add_promotion(), sim.add_promotion()
    # inserted newest first: the queue must follow created_at, not insertion
    queue = [sim.add_job(first, created_at=START - i) for i in range(4)]
    sim.add_jobs(second, 3)
    started: list[str] = []
    for _ in range(20):
        clock.now += 1
        sim.step()
        for pid in (first, second):
            processing = [j for j, s in statuses(sim, pid).items() if s == "processing"]
            assert len(processing) <= 1
            if pid == first and processing and processing[0] not in started:
                started.append(processing[0])
    assert started == queue[::-1]
    assert set(statuses(sim, first, second).values()) <= {"completed", "failed"}


def test_cancelled_code_generate_job_reports_the_codes_it_removed(sim: Simulator) -> None:
    pid = sim.add_promotion()
    job = sim.add_job(pid, number_of_codes=400)
    export = sim.add_job(pid, job_type="code_export")
    sim.set_job_status(pid, job, "cancelling")
    sim.set_job_status(pid, export, "cancelling")
    assert "result" not in sim.jobs(pid)[0]
    sim.step()
    cancelled, export_cancelled = sim.jobs(pid)
    assert cancelled["status"] == "cancelled"
    result = cancelled["result"]
    assert set(result) == {"generated", "deleted"}
    assert 0 <= result["deleted"] <= result["generated"] <= 400
    assert "result" not in export_cancelled


def test_step_spawns_jobs_on_disabled_promotions_too(sim: Simulator) -> None:
    # codes are generated before a campaign is switched on
    sim.spawn_rate = 1.0
    off = sim.add_promotion(enabled=False)
    rule_off = sim.add_promotion("rule_promotion", enabled=False)
    sim.step()
    assert len(sim.jobs(off)) == 1
    assert len(sim.jobs(rule_off)) == 1


def test_rule_promotion_jobs_stay_within_the_builder_limits(sim: Simulator) -> None:
    rule = sim.add_promotion("rule_promotion")
    with pytest.raises(ValueError, match="above Promotions Builder's maximum of 1000"):
        sim.add_job(rule, number_of_codes=1001)
    sim.add_job(rule, number_of_codes=1000)
    standard = sim.add_promotion()
    sim.add_job(standard, number_of_codes=10_000)
    [rule_job], [standard_job] = sim.jobs(rule), sim.jobs(standard)
    assert rule_job["parameters"]["consume_unit"] == "per_checkout"
    assert standard_job["parameters"]["consume_unit"] == "per_cart"
    # the lifecycle never asks a rule promotion for more than the maximum either
    sim.spawn_rate = 1.0
    for _ in range(60):
        sim.step()
    counts = [j["parameters"]["number_of_codes"] for j in sim.jobs(rule) if "parameters" in j]
    assert len(counts) > 5
    assert max(counts) <= 1000


def test_cancelling_becomes_cancelled(sim: Simulator) -> None:
    pid = sim.add_promotion()
    job = sim.add_job(pid, status="cancelling")
    assert sim.step() == 1
    assert statuses(sim, pid) == {job: "cancelled"}


def test_transitions_equal_observed_status_changes() -> None:
    sim = Simulator(clock=FakeClock(), seed=7)
    sim.spawn_rate = 0.5
    ids = populate_demo(sim, 6, 5)
    counted = 0
    spawned = False
    for _ in range(25):
        before = statuses(sim, *ids)
        made = sim.step()
        after = statuses(sim, *ids)
        spawned = spawned or bool(after.keys() - before.keys())
        assert made == sum(before[j] != after[j] for j in before)
        counted += made
    assert counted > 0
    assert spawned
    assert sim.transitions == counted


def test_set_job_status_bumps_updated_at_and_counts_changes_only(
    sim: Simulator, clock: FakeClock
) -> None:
    pid = sim.add_promotion()
    job = sim.add_job(pid)
    clock.now = epoch("2024-12-05T10:00:00.250Z")
    sim.set_job_status(pid, job, "failed", error="codes limit exceeded")
    [rendered] = sim.jobs(pid)
    assert rendered["status"] == "failed"
    assert rendered["error"] == "codes limit exceeded"
    assert rendered["meta"]["timestamps"]["updated_at"] == "2024-12-05T10:00:00.250Z"
    assert sim.transitions == 1
    sim.set_job_status(pid, job, "failed", error="codes limit exceeded")
    assert sim.transitions == 1
    sim.set_job_status(pid, job, "shelved")
    assert sim.jobs(pid)[0]["status"] == "shelved"
    assert "error" not in sim.jobs(pid)[0]
    assert sim.transitions == 2


def test_same_seed_gives_the_same_lifecycle() -> None:
    def run(seed: int) -> list[list[tuple[str, str, str | None]]]:
        sim = Simulator(clock=FakeClock(), seed=seed)
        sim.spawn_rate = 0.3
        ids = [sim.add_promotion(promotion_id=f"p{i}") for i in range(4)]
        for pid in ids:
            sim.add_jobs(pid, 3)
        for _ in range(15):
            sim.step()
        return [[(j["job_type"], j["status"], j.get("error")) for j in sim.jobs(p)] for p in ids]

    assert run(3) == run(3)
    assert run(3) != run(4)


async def test_run_lifecycle_steps_until_cancelled(sim: Simulator) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 3)
    runner = asyncio.create_task(sim.run_lifecycle(0.01))
    try:
        await eventually(lambda: sim.transitions >= 3)
    finally:
        runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert "processing" in statuses(sim, pid).values()


def test_data_helpers_reject_duplicates_and_unknown_ids(sim: Simulator) -> None:
    pid = sim.add_promotion(promotion_id="p1")
    sim.add_job(pid, job_id="j1")
    with pytest.raises(ValueError, match="already exists"):
        sim.add_promotion(promotion_id="p1")
    with pytest.raises(ValueError, match="already exists"):
        sim.add_job(pid, job_id="j1")
    with pytest.raises(ValueError, match="ISO 8601"):
        sim.add_promotion(end="next tuesday")
    with pytest.raises(KeyError):
        sim.add_job("nope")


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
) -> AsyncIterator[tuple[aiohttp.ClientSession, dict[str, str]]]:
    """The simulator CLI as a subprocess on a free port: a session on it and auth headers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor.simulator",
        "--port",
        "0",
        *flags,
        cwd=Path(__file__).parents[1],
        stdout=asyncio.subprocess.PIPE,
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
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            returncode = await process.wait()
    assert returncode == 0


async def test_main_serves_a_populated_store_until_interrupted() -> None:
    flags = ("--promotions", "3", "--jobs", "2", "--lifecycle-period", "0.05")
    async with served_by_main(*flags) as (http, headers):
        async with http.get("/v2/promotions", headers=headers) as resp:
            standard = (await resp.json())["meta"]["results"]["total"]
        async with http.get("/v2/rule-promotions", headers=headers) as resp:
            rule = (await resp.json())["meta"]["results"]["total"]
    assert (standard, rule) == (2, 1)


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
