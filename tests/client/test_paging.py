"""ElasticPathClient reading listings: pages, filters, rule promotions, the shared fixtures."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from monitor.models import PromotionKind
from monitor.simulator import Simulator
from tests.client_support import (
    FIXTURES,
    Connect,
    RecordedEvents,
    fetch,
    fetch_error,
    jobs_path,
    requests_to,
    store_client,
)

# paging


@pytest.mark.parametrize("limit", [100, 25])
async def test_paging_reads_every_job_once_and_stops_by_the_total(
    sim: Simulator, connect: Connect, limit: int
) -> None:
    pid = sim.add_promotion()
    ids = sim.add_jobs(pid, 130)
    client = connect(page_limit=limit)

    result = await fetch(client, pid)

    assert Counter(job.id for job in result.jobs) == Counter(ids)
    pages = requests_to(sim, jobs_path(pid))
    expected_pages = math.ceil(130 / limit)
    # links.next is filled on every page, the last included: only the total can stop the client
    assert len(pages) == expected_pages == result.listing.pages
    assert [r.query["page[offset]"] for r in pages] == [
        str(i * limit) for i in range(expected_pages)
    ]
    assert {r.query["page[limit]"] for r in pages} == {str(limit)}
    assert all(r.status == 200 for r in pages)
    assert result.skipped == []
    assert result.complete


async def test_empty_promotion_is_one_request_and_no_jobs(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    client = connect(page_limit=25)

    result = await fetch(client, pid)

    assert result.jobs == []
    assert result.listing.pages == 1
    assert len(requests_to(sim, jobs_path(pid))) == 1


async def test_more_jobs_than_the_offset_limit_are_read_partially(
    sim: Simulator, connect: Connect
) -> None:
    # The API serves offsets up to 10,000: with pages of 100 that is 10,100 jobs, no more.
    pid = sim.add_promotion()
    sim.add_jobs(pid, 10_101)
    client = connect(page_limit=100)

    result = await fetch(client, pid)

    assert result.listing.incomplete == "offset_limit"
    assert len(result.jobs) == 10_100
    assert len({job.id for job in result.jobs}) == 10_100
    offsets = [int(r.query["page[offset]"]) for r in requests_to(sim, jobs_path(pid))]
    assert max(offsets) == 10_000
    assert all(r.status == 200 for r in sim.requests)


# Without a total a short page proves nothing (a store's page length may be shorter than asked):
# only an empty page ends the listing. Offsets step by the records received.
@pytest.mark.parametrize(("jobs", "offsets"), [(60, [0, 25, 50, 60]), (50, [0, 25, 50]), (0, [0])])
async def test_paging_without_a_total_stops_on_an_empty_page(jobs: int, offsets: list[int]) -> None:
    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        limit = int(request.query["page[limit]"])
        offset = int(request.query["page[offset]"])
        seen.append(offset)
        page = [{"id": f"job-{i}", "status": "completed"} for i in range(jobs)][
            offset : offset + limit
        ]
        # no meta at all, and a next link that never ends: only the data can stop the client
        return web.json_response({"data": page, "links": {"next": str(request.url)}})

    async with store_client(handle, page_limit=25) as client:
        result = await fetch(client, "p")

    assert sorted(job.id for job in result.jobs) == sorted(f"job-{i}" for i in range(jobs))
    assert seen == offsets


# filters


@pytest.fixture
def mixed_jobs(sim: Simulator) -> tuple[str, dict[str, list[str]]]:
    pid = sim.add_promotion()
    groups = {
        "export_completed": sim.add_jobs(pid, 3, job_type="code_export", status="completed"),
        "export_failed": sim.add_jobs(pid, 1, job_type="code_export", status="failed"),
        "generate_failed": sim.add_jobs(
            pid, 2, job_type="code_generate", status="failed", error="codes limit exceeded"
        ),
        "generate_completed": sim.add_jobs(pid, 4, job_type="code_generate", status="completed"),
    }
    return pid, groups


@pytest.mark.parametrize(
    ("expression", "wanted"),
    [
        ("eq(job_type,code_export)", ["export_completed", "export_failed"]),
        ("eq(job_type,code_generate):eq(status,failed)", ["generate_failed"]),
        ("eq(status,failed)", ["export_failed", "generate_failed"]),
    ],
)
async def test_filter_reaches_the_server_intact_and_selects_jobs(
    sim: Simulator,
    connect: Connect,
    mixed_jobs: tuple[str, dict[str, list[str]]],
    expression: str,
    wanted: list[str],
) -> None:
    pid, groups = mixed_jobs
    client = connect(page_limit=2)

    result = await fetch(client, pid, job_filter=expression)

    expected = sorted(job_id for name in wanted for job_id in groups[name])
    assert sorted(job.id for job in result.jobs) == expected
    pages = requests_to(sim, jobs_path(pid))
    assert len(pages) == math.ceil(len(expected) / 2)
    assert [r.query.get("filter") for r in pages] == [expression] * len(pages)


async def test_no_filter_sends_no_filter_parameter(
    sim: Simulator, connect: Connect, mixed_jobs: tuple[str, dict[str, list[str]]]
) -> None:
    pid, groups = mixed_jobs
    result = await fetch(connect(), pid)
    assert len(result.jobs) == sum(len(ids) for ids in groups.values())
    assert "filter" not in requests_to(sim, jobs_path(pid))[0].query


async def test_malformed_filter_is_a_4xx_that_is_not_retried(
    sim: Simulator, connect: Connect, mixed_jobs: tuple[str, dict[str, list[str]]]
) -> None:
    pid, _ = mixed_jobs
    error = await fetch_error(connect(), pid, job_filter="eq(name,x)")
    assert error.reason == "http_4xx"
    assert error.http_status == 400
    assert "Could not parse the supplied filter" in str(error)
    assert len(requests_to(sim, jobs_path(pid))) == 1


# rule promotions


async def test_rule_promotion_jobs_come_from_their_own_endpoint(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion("rule_promotion")
    created = datetime(2024, 12, 4, 0, 3, 46, 388696, tzinfo=UTC).timestamp()
    job_id = sim.add_job(
        pid, job_type="code_export", status="pending", created_at=created, updated_at=created + 2.5
    )
    events = RecordedEvents()
    client = connect(events=events)

    result = await fetch(client, pid, PromotionKind.RULE_PROMOTION)

    [job] = result.jobs
    assert (job.id, job.job_type, job.status) == (job_id, "code_export", "pending")
    # the simulator renders these with nanoseconds; microseconds must survive
    assert job.created_at == pytest.approx(created, abs=1e-6)
    assert job.updated_at == pytest.approx(created + 2.5, abs=1e-6)
    assert [r.path for r in sim.requests if r.method == "GET"] == [
        f"/v2/rule-promotions/{pid}/jobs"
    ]
    assert ("rule_promotion_jobs", "200") in events.requests


async def test_a_rule_promotion_is_not_found_under_the_standard_endpoint(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion("rule_promotion")
    sim.add_job(pid)
    error = await fetch_error(connect(), pid, PromotionKind.PROMOTION)
    assert error.reason == "not_found"


async def test_promotion_lists_are_paged_per_kind(sim: Simulator, connect: Connect) -> None:
    standard = {sim.add_promotion() for _ in range(30)}
    rules = {sim.add_promotion("rule_promotion") for _ in range(7)}
    events = RecordedEvents()
    client = connect(events=events, page_limit=25)

    found, listing = await client.list_promotions(PromotionKind.PROMOTION)
    found_rules, rule_listing = await client.list_promotions(PromotionKind.RULE_PROMOTION)

    assert sorted(str(p["id"]) for p in found) == sorted(standard)
    assert sorted(str(p["id"]) for p in found_rules) == sorted(rules)
    assert listing.incomplete is None
    assert rule_listing.incomplete is None
    assert [r.query["page[offset]"] for r in requests_to(sim, "/v2/promotions")] == ["0", "25"]
    assert len(requests_to(sim, "/v2/rule-promotions")) == 1
    assert [endpoint for endpoint, _ in events.requests] == [
        "token",
        "promotions",
        "promotions",
        "rule_promotions",
    ]


# the shared fixtures, served as given


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


async def test_fixture_page_with_a_self_referencing_next_link_is_read_once() -> None:
    page = fixture_json("promotion-jobs-failed.json")
    token = fixture_json("access-token.json")
    seen: list[str] = []

    async def issue(request: web.Request) -> web.Response:
        return web.json_response(token)

    async def jobs(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        return web.json_response(page)

    events = RecordedEvents()
    async with store_client(jobs, token=issue, events=events) as client:
        result = await fetch(client, "ad386702-e780-42c6-b190-0527ad768917")

    [job] = result.jobs
    assert (job.id, job.status, job.error) == (
        "84d86114-a92d-4c34-92f1-3e36ef6cabeb",
        "failed",
        "codes limit exceeded",
    )
    assert seen == [f"Bearer {token['access_token']}"]
    assert events.tokens == [float(token["expires_in"])]


@pytest.mark.parametrize(
    ("name", "status", "reason", "words"),
    [
        (
            "too_many_jobs_400",
            400,
            "http_4xx",
            ["Too many jobs", "Only 1 pending or processing job is allowed per promotion."],
        ),
        ("unauthorized_401", 401, "auth", ["Unable to validate access token"]),
        (
            "internal_500",
            500,
            "http_5xx",
            ["Internal Server Error", "there was a problem processing your request"],
        ),
    ],
)
async def test_fixture_error_bodies_are_classified_and_summarised(
    name: str, status: int, reason: str, words: list[str]
) -> None:
    body = fixture_json("errors.json")[name]
    tokens_issued = 0

    async def issue(request: web.Request) -> web.Response:
        nonlocal tokens_issued
        tokens_issued += 1
        return web.json_response({"access_token": f"t{tokens_issued}", "expires_in": 3600})

    async def jobs(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    async with store_client(jobs, token=issue) as client:
        error = await fetch_error(client, "p")

    assert error.reason == reason
    assert error.http_status == status
    for word in words:
        assert word in str(error)
    # a 401 earns exactly one fresh token before it counts as a credentials problem
    assert tokens_issued == (2 if status == 401 else 1)
