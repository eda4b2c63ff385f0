"""ElasticPathClient against the simulator: pages, filters, tokens, every error reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.budget import RequestBudget
from monitor.client import (
    ApiError,
    ElasticPathClient,
    FetchResult,
    PageMemory,
    parse_retry_after,
)
from monitor.models import PromotionKind
from monitor.settings import ApiSettings
from monitor.simulator import Fault, RecordedRequest, Simulator
from tests.support import serving

START = 1_733_270_626.0  # 2024-12-04T00:03:46Z
MAX_RETRIES = 2
TOKEN_PATH = "/oauth/access_token"
# Elastic Path's documented example responses (copied from shared/fixtures, see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordedEvents:
    """A ClientEvents that keeps every call, so tests can read what the client reported."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    retries: list[tuple[str, str, int]] = field(default_factory=list)
    retry_errors: list[ApiError] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def request_done(self, endpoint: str, code: str) -> None:
        self.requests.append((endpoint, code))

    def token_refreshed(self, expires_in: float) -> None:
        self.tokens.append(expires_in)

    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None:
        self.retries.append((endpoint, error.reason, attempt))
        self.retry_errors.append(error)

    def budget_waited(self, seconds: float) -> None:
        self.waits.append(seconds)


Connect = Callable[..., ElasticPathClient]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    simulator = Simulator(clock=clock)
    await simulator.start()
    yield simulator
    await simulator.stop()


def make_client(
    settings: dict[str, Any],
    *,
    events: RecordedEvents | None = None,
    budget: RequestBudget | None = None,
    token_clock: Callable[[], float] = time.monotonic,
) -> ElasticPathClient:
    return ElasticPathClient(
        ApiSettings.model_validate({"timeout_seconds": 0.5, **settings}),
        budget=budget or RequestBudget(1000),
        events=events,
        token_clock=token_clock,
        max_retries=MAX_RETRIES,
        retry_wait_initial=0.01,
        retry_wait_max=0.05,
    )


@pytest.fixture
async def connect(sim: Simulator) -> AsyncIterator[Connect]:
    """Builds clients for `sim` (credentials by default, overridable) and closes them after."""
    clients: list[ElasticPathClient] = []

    def build(
        *,
        events: RecordedEvents | None = None,
        budget: RequestBudget | None = None,
        token_clock: Callable[[], float] = time.monotonic,
        **api: Any,
    ) -> ElasticPathClient:
        settings = {
            "base_url": sim.base_url,
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            **api,
        }
        client = make_client(settings, events=events, budget=budget, token_clock=token_clock)
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


async def issue_any_token(request: web.Request) -> web.Response:
    return web.json_response({"access_token": "t0k3n", "token_type": "Bearer", "expires_in": 3600})


def jobs_path(promotion_id: str, kind: PromotionKind = PromotionKind.PROMOTION) -> str:
    segment = "rule-promotions" if kind is PromotionKind.RULE_PROMOTION else "promotions"
    return f"/v2/{segment}/{promotion_id}/jobs"


def requests_to(sim: Simulator, path: str) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.path == path]


async def fetch(
    client: ElasticPathClient,
    promotion_id: str,
    kind: PromotionKind = PromotionKind.PROMOTION,
    job_filter: str | None = None,
) -> FetchResult:
    return await client.fetch_jobs(client.target(promotion_id, kind, job_filter))


async def fetch_error(
    client: ElasticPathClient,
    promotion_id: str,
    kind: PromotionKind = PromotionKind.PROMOTION,
    job_filter: str | None = None,
) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await fetch(client, promotion_id, kind, job_filter)
    return caught.value


async def request_token(sim: Simulator) -> str:
    """A token straight from the simulator's token endpoint, as an operator would fetch one."""
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(sim.base_url + TOKEN_PATH, data=form) as response,
    ):
        assert response.status == 200
        body = await response.json()
    token = body["access_token"]
    assert isinstance(token, str)
    return token


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

    app = web.Application()
    app.router.add_post(TOKEN_PATH, issue_any_token)
    app.router.add_get("/v2/promotions/{pid}/jobs", handle)
    async with serving(app) as base_url:
        client = make_client(
            {"base_url": base_url, "client_id": "id", "client_secret": "s", "page_limit": 25}
        )
        async with client:
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


# tokens


async def test_one_token_serves_many_requests(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 5)
    events = RecordedEvents()
    client = connect(events=events, page_limit=2)

    for _ in range(4):
        assert len((await fetch(client, pid)).jobs) == 5

    assert sim.tokens_issued == 1
    assert len(requests_to(sim, TOKEN_PATH)) == 1
    assert events.tokens == [3600.0]


async def test_concurrent_first_requests_share_one_token(sim: Simulator, connect: Connect) -> None:
    pids = [sim.add_promotion() for _ in range(20)]
    client = connect()

    await asyncio.gather(*(fetch(client, pid) for pid in pids))
    assert sim.tokens_issued == 1

    sim.revoke_tokens()
    await asyncio.gather(*(fetch(client, pid) for pid in pids))
    assert sim.tokens_issued == 2


async def test_revoked_token_is_replaced_once(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    events = RecordedEvents()
    client = connect(events=events)
    await fetch(client, pid)

    sim.revoke_tokens()
    result = await fetch(client, pid)

    assert result.listing.pages == 1
    assert sim.tokens_issued == 2
    assert len(events.tokens) == 2
    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [200, 401, 200]


async def test_wrong_client_secret_is_an_auth_error_and_not_retried(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    events = RecordedEvents()
    error = await fetch_error(connect(events=events, client_secret="wrong"), pid)

    assert error.reason == "auth"
    assert error.http_status == 401
    assert [r.status for r in sim.requests] == [401]
    assert sim.requests[0].path == TOKEN_PATH
    assert events.tokens == []
    assert events.retries == []


async def test_token_answer_without_access_token_is_a_bad_response(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    sim.inject(Fault("wrong_shape", path_contains=TOKEN_PATH))
    error = await fetch_error(connect(), pid)
    assert error.reason == "bad_response"
    assert requests_to(sim, jobs_path(pid)) == []


@pytest.fixture
def client_clock() -> FakeClock:
    return FakeClock()


async def test_token_is_renewed_a_minute_before_it_expires(
    sim: Simulator, connect: Connect, clock: FakeClock, client_clock: FakeClock
) -> None:
    pid = sim.add_promotion()
    client = connect(token_clock=client_clock)
    await fetch(client, pid)

    for seconds, issued in ((3600 - 61, 1), (2, 2)):
        clock.now += seconds
        client_clock.now += seconds
        await fetch(client, pid)
        assert sim.tokens_issued == issued

    # renewed ahead of expiry: the API never had to refuse a token
    assert 401 not in {r.status for r in sim.requests}


async def test_short_lived_tokens_are_renewed_before_they_expire(
    sim: Simulator, connect: Connect, clock: FakeClock, client_clock: FakeClock
) -> None:
    sim.token_ttl = 30.0
    pid = sim.add_promotion()
    events = RecordedEvents()
    client = connect(events=events, token_clock=client_clock)

    for _ in range(20):
        await fetch(client, pid)
        clock.now += 5
        client_clock.now += 5

    assert 401 not in {r.status for r in sim.requests}
    # 100 s of 30 s tokens: at least four tokens, whatever the renewal rule
    assert sim.tokens_issued >= 4
    assert set(events.tokens) == {30.0}


async def test_token_expired_early_by_the_server_is_replaced_on_401(
    sim: Simulator, connect: Connect, clock: FakeClock, client_clock: FakeClock
) -> None:
    pid = sim.add_promotion()
    client = connect(token_clock=client_clock)
    await fetch(client, pid)

    clock.now += 3601  # the store's clock runs ahead of ours
    await fetch(client, pid)

    assert sim.tokens_issued == 2
    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [200, 401, 200]


async def test_client_secret_file_is_read_and_reread_after_rotation(
    sim: Simulator, connect: Connect, tmp_path: Path
) -> None:
    pid = sim.add_promotion()
    secret_file = tmp_path / "secret"
    secret_file.write_text(sim.client_secret + "\n", encoding="utf-8")
    client = connect(client_secret=None, client_secret_file=secret_file)
    await fetch(client, pid)

    sim.client_secret = "rotated-secret"
    secret_file.write_text("rotated-secret\n", encoding="utf-8")
    sim.revoke_tokens()
    await fetch(client, pid)

    assert sim.tokens_issued == 2


async def test_unreadable_client_secret_file_is_an_auth_error(
    sim: Simulator, connect: Connect, tmp_path: Path
) -> None:
    pid = sim.add_promotion()
    client = connect(client_secret=None, client_secret_file=tmp_path / "missing")
    error = await fetch_error(client, pid)
    assert error.reason == "auth"
    assert sim.requests == []


async def test_token_file_is_used_and_reread_on_401(
    sim: Simulator, connect: Connect, tmp_path: Path
) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 2)
    token_file = tmp_path / "token"
    token_file.write_text(await request_token(sim) + "\n", encoding="utf-8")
    events = RecordedEvents()
    client = connect(events=events, client_id=None, client_secret=None, token_file=token_file)

    assert len((await fetch(client, pid)).jobs) == 2
    assert sim.tokens_issued == 1  # only the one the test asked for

    sim.revoke_tokens()
    token_file.write_text(await request_token(sim), encoding="utf-8")
    assert len((await fetch(client, pid)).jobs) == 2

    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [200, 401, 200]
    assert sim.tokens_issued == 2
    assert not any(endpoint == "token" for endpoint, _ in events.requests)


async def test_token_file_still_holding_a_rejected_token_is_an_auth_error(
    sim: Simulator, connect: Connect, tmp_path: Path
) -> None:
    pid = sim.add_promotion()
    token_file = tmp_path / "token"
    token_file.write_text(await request_token(sim), encoding="utf-8")
    client = connect(client_id=None, client_secret=None, token_file=token_file)
    await fetch(client, pid)

    sim.revoke_tokens()
    error = await fetch_error(client, pid)

    assert error.reason == "auth"
    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [200, 401]


@pytest.mark.parametrize("make_unreadable", ["missing", "directory", "empty"])
async def test_unreadable_or_empty_token_file_is_an_auth_error(
    sim: Simulator, connect: Connect, tmp_path: Path, make_unreadable: str
) -> None:
    pid = sim.add_promotion()
    token_file = tmp_path / "token"
    if make_unreadable == "directory":
        token_file.mkdir()
    elif make_unreadable == "empty":
        token_file.write_text("  \n", encoding="utf-8")
    client = connect(client_id=None, client_secret=None, token_file=token_file)

    error = await fetch_error(client, pid)

    assert error.reason == "auth"
    assert sim.requests == []


# errors


@pytest.mark.parametrize(
    ("fault", "reason", "http_status", "attempts"),
    [
        (Fault("status", status=403), "auth", 403, 1),
        (Fault("status", status=400), "http_4xx", 400, 1),
        (Fault("status", status=500, times=None), "http_5xx", 500, MAX_RETRIES + 1),
        (Fault("status", status=503, times=None), "http_5xx", 503, MAX_RETRIES + 1),
        (Fault("status", status=429, times=None), "rate_limited", 429, MAX_RETRIES + 1),
        (
            Fault("status", status=429, retry_after="0", times=None),
            "rate_limited",
            429,
            MAX_RETRIES + 1,
        ),
        (Fault("timeout", delay=5.0, times=None), "timeout", None, MAX_RETRIES + 1),
        (Fault("truncated", times=None), "bad_response", 200, MAX_RETRIES + 1),
        (Fault("html", times=None), "http_5xx", 502, MAX_RETRIES + 1),
        (Fault("wrong_shape", times=None), "bad_response", None, 1),
    ],
    ids=lambda value: None if not isinstance(value, Fault) else f"{value.kind}-{value.status}",
)
async def test_each_failure_is_classified_and_retried_only_when_transient(
    sim: Simulator,
    connect: Connect,
    fault: Fault,
    reason: str,
    http_status: int | None,
    attempts: int,
) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 3)
    client = connect(timeout_seconds=0.3)
    await fetch(client, pid)  # token in hand, so only the jobs requests meet the fault
    fault.path_contains = "/jobs"
    sim.inject(fault)

    error = await fetch_error(client, pid)

    assert error.reason == reason
    assert error.http_status == http_status
    assert len(requests_to(sim, jobs_path(pid))) == 1 + attempts


async def test_removed_promotion_is_not_found_and_not_retried(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 2)
    client = connect()
    await fetch(client, pid)
    sim.remove_promotion(pid)

    error = await fetch_error(client, pid)

    assert error.reason == "not_found"
    assert error.http_status == 404
    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [200, 404]


async def test_html_error_page_is_summarised_not_echoed(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    sim.inject(Fault("html", times=None, path_contains="/jobs"))
    error = await fetch_error(connect(), pid)
    assert error.http_status == 502
    assert "HTML page" in str(error)
    assert "<html>" not in str(error)


async def test_connection_reset_is_a_network_error(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    client = connect()
    await fetch(client, pid)
    sim.inject(Fault("reset", times=None, path_contains="/jobs"))

    error = await fetch_error(client, pid)

    assert error.reason == "network"
    assert error.http_status is None
    assert {r.status for r in requests_to(sim, jobs_path(pid))[1:]} == {0}


async def test_nothing_listening_is_a_network_error_on_the_token_request() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events = RecordedEvents()
    client = make_client(
        {"base_url": f"http://127.0.0.1:{port}", "client_id": "id", "client_secret": "s"},
        events=events,
    )
    async with client:
        error = await fetch_error(client, "p")
    assert error.reason == "network"
    assert events.requests == [("token", "error")] * (MAX_RETRIES + 1)


async def test_huge_answer_is_refused_without_reading_it(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    client = connect(timeout_seconds=5)
    await fetch(client, pid)
    sim.inject(Fault("huge", path_contains="/jobs"))

    tracemalloc.start()
    try:
        error = await fetch_error(client, pid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert error.reason == "bad_response"
    assert len(requests_to(sim, jobs_path(pid))) == 2  # not retried
    # the body is 64 MiB; holding even a quarter of it would mean the cap did not work
    assert peak < 16 * 1024 * 1024


async def test_undeclared_oversized_body_is_cut_off_at_the_cap() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        response.content_type = "application/json"
        await response.prepare(request)
        block = b" " * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            await response.write(b'{"data": [')
            for _ in range(20):
                await response.write(block)
            await response.write(b"]}")
        return response

    app = web.Application()
    app.router.add_post(TOKEN_PATH, issue_any_token)
    app.router.add_get("/v2/promotions/{pid}/jobs", stream)
    async with serving(app) as base_url:
        client = make_client(
            {"base_url": base_url, "client_id": "id", "client_secret": "s", "timeout_seconds": 10}
        )
        async with client:
            error = await fetch_error(client, "p")

    assert error.reason == "bad_response"
    assert "larger than" in str(error)


async def test_body_cut_short_by_the_server_is_a_bad_response() -> None:
    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b'{"data": [')
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post(TOKEN_PATH, issue_any_token)
    app.router.add_get("/v2/promotions/{pid}/jobs", truncated)
    async with serving(app) as base_url:
        events = RecordedEvents()
        client = make_client(
            {"base_url": base_url, "client_id": "id", "client_secret": "s"}, events=events
        )
        async with client:
            error = await fetch_error(client, "p")

    assert error.reason == "bad_response"
    assert events.requests.count(("promotion_jobs", "200")) == MAX_RETRIES + 1


async def test_one_server_error_is_retried_and_reported(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 2)
    events = RecordedEvents()
    client = connect(events=events)
    sim.inject(Fault("status", status=500, path_contains="/jobs"))

    result = await fetch(client, pid)

    assert len(result.jobs) == 2
    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [500, 200]
    assert events.retries == [("promotion_jobs", "http_5xx", 1)]


async def test_429_with_retry_after_is_honoured_and_slows_the_budget(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 2)
    events = RecordedEvents()
    budget = RequestBudget(1000)
    client = connect(events=events, budget=budget)
    sim.inject(Fault("status", status=429, retry_after="0", path_contains="/jobs"))

    result = await fetch(client, pid)

    assert len(result.jobs) == 2
    assert [r.status for r in requests_to(sim, jobs_path(pid))] == [429, 200]
    assert events.retries == [("promotion_jobs", "rate_limited", 1)]
    assert events.retry_errors[0].retry_after == 0.0
    assert budget.rate < budget.max_rate


async def test_a_failure_in_a_later_page_fails_the_whole_fetch(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 5)
    client = connect(page_limit=2)
    await fetch(client, pid)
    # the first page answers normally (a slow fault of no delay), the second of three is refused:
    # no partial list may pass for the whole
    sim.inject(Fault("slow", path_contains="/jobs"))
    sim.inject(Fault("status", status=403, path_contains="/jobs"))

    error = await fetch_error(client, pid)

    assert error.reason == "auth"
    assert [r.query["page[offset]"] for r in requests_to(sim, jobs_path(pid))][3:] == ["0", "2"]


async def test_retry_scheduled_is_reported_only_for_retries_that_happen(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    events = RecordedEvents()
    client = connect(events=events)
    sim.inject(Fault("status", status=500, times=None, path_contains="/jobs"))

    await fetch_error(client, pid)

    assert len(requests_to(sim, jobs_path(pid))) == MAX_RETRIES + 1
    assert len(events.retries) == MAX_RETRIES


@pytest.mark.parametrize(
    "fault", [Fault("status", status=503, times=None), Fault("reset", times=None)]
)
async def test_failing_token_endpoint_gets_max_retries_plus_one_attempts(
    sim: Simulator, connect: Connect, fault: Fault
) -> None:
    pid = sim.add_promotion()
    events = RecordedEvents()
    client = connect(events=events)
    fault.path_contains = TOKEN_PATH
    sim.inject(fault)

    await fetch_error(client, pid)

    assert len(events.requests) == MAX_RETRIES + 1


async def test_every_request_the_store_sees_is_counted_even_after_a_reset(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    events = RecordedEvents()
    client = connect(events=events)
    await fetch(client, pid)
    sim.inject(Fault("reset", path_contains="/jobs"))

    await fetch(client, pid)

    assert len(events.requests) == len(sim.requests)


@pytest.mark.parametrize("path", ["/jobs", TOKEN_PATH])
async def test_each_429_halves_the_budget_once(sim: Simulator, connect: Connect, path: str) -> None:
    pid = sim.add_promotion()
    budget = RequestBudget(1000)
    client = connect(budget=budget)
    if path != TOKEN_PATH:
        await fetch(client, pid)
    sim.inject(Fault("status", status=429, retry_after="0", times=None, path_contains=path))

    error = await fetch_error(client, pid)

    assert error.reason == "rate_limited"
    refusals = sum(r.status == 429 for r in sim.requests)
    assert refusals == MAX_RETRIES + 1
    assert budget.rate == 1000 / 2**refusals


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


# accounting


def endpoint_of(path: str) -> str:
    if path == TOKEN_PATH:
        return "token"
    if path.startswith("/v2/rule-promotions/"):
        return "rule_promotion_jobs"
    assert path.startswith("/v2/promotions/")
    return "promotion_jobs"


async def test_every_request_is_reported_once_with_endpoint_and_code(
    sim: Simulator, connect: Connect
) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 3)
    rule = sim.add_promotion("rule_promotion")
    sim.add_jobs(rule, 1)
    events = RecordedEvents()
    client = connect(events=events, page_limit=2, timeout_seconds=0.3)

    await fetch(client, pid)
    await fetch(client, rule, PromotionKind.RULE_PROMOTION)
    sim.inject(Fault("status", status=503, path_contains="/jobs"))
    await fetch(client, rule, PromotionKind.RULE_PROMOTION)
    sim.inject(Fault("timeout", delay=5.0, path_contains="/jobs"))
    await fetch(client, rule, PromotionKind.RULE_PROMOTION)
    sim.revoke_tokens()
    await fetch(client, rule, PromotionKind.RULE_PROMOTION)
    sim.remove_promotion(pid)
    await fetch_error(client, pid)

    expected = [(endpoint_of(r.path), str(r.status) if r.status else "error") for r in sim.requests]
    assert events.requests == expected
    # every kind of outcome was exercised, so the comparison covered them all
    assert {code for _, code in expected} == {"200", "401", "404", "503", "error"}
    assert {endpoint for endpoint, _ in expected} == {
        "token",
        "promotion_jobs",
        "rule_promotion_jobs",
    }


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

    app = web.Application()
    app.router.add_post(TOKEN_PATH, issue)
    app.router.add_get("/v2/promotions/{pid}/jobs", jobs)
    async with serving(app) as base_url:
        events = RecordedEvents()
        client = make_client(
            {"base_url": base_url, "client_id": "id", "client_secret": "s"}, events=events
        )
        async with client:
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

    app = web.Application()
    app.router.add_post(TOKEN_PATH, issue)
    app.router.add_get("/v2/promotions/{pid}/jobs", jobs)
    async with serving(app) as base_url:
        client = make_client({"base_url": base_url, "client_id": "id", "client_secret": "s"})
        async with client:
            error = await fetch_error(client, "p")

    assert error.reason == reason
    assert error.http_status == status
    for word in words:
        assert word in str(error)
    # a 401 earns exactly one fresh token before it counts as a credentials problem
    assert tokens_issued == (2 if status == 401 else 1)


# Retry-After

NOW = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        (http_date(NOW + 90), 90.0),
        (http_date(NOW - 90), 0.0),
        (http_date(NOW + 86_400), 300.0),
        ("-5", 0.0),
        ("100000", 300.0),
        ("inf", 300.0),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


async def test_a_byte_identical_page_is_not_decoded_again(sim: Simulator, connect: Connect) -> None:
    pid = sim.add_promotion()
    sim.add_jobs(pid, 130, status="completed")
    client = connect()
    target = client.target(pid, PromotionKind.PROMOTION)
    memory = PageMemory()  # (the poller's, in the daemon)
    first = await client.fetch_jobs(target, memory, {})
    assert not first.unchanged
    known = {job.id: job for job in first.jobs}
    second = await client.fetch_jobs(target, memory, known)
    # Same bytes on both pages: the very same Job objects, nothing re-parsed.
    assert second.unchanged
    assert [id(job) for job in second.jobs] == [id(job) for job in first.jobs]
    changed = first.jobs[-1].id
    sim.set_job_status(pid, changed, "failed", error="codes limit exceeded")
    third = await client.fetch_jobs(target, memory, known)
    assert not third.unchanged
    by_id = {job.id: job for job in third.jobs}
    assert by_id[changed].status == "failed"
    assert len(third.jobs) == 130
    # The unchanged first page was still reused as is.
    assert third.jobs[0] is first.jobs[0]
