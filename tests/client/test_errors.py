"""ElasticPathClient when answers go wrong: every error reason, retries, accounting, Retry-After."""

from __future__ import annotations

import contextlib
import socket
import tracemalloc
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from aiohttp import web

from monitor.client import parse_retry_after
from monitor.client.budget import RequestBudget
from monitor.client.errors import error_summary
from monitor.models import PromotionKind
from monitor.simulator import Fault, Simulator
from tests.client_support import (
    MAX_RETRIES,
    Connect,
    RecordedEvents,
    fetch,
    fetch_error,
    jobs_path,
    make_client,
    requests_to,
    store_client,
)
from tests.support import TOKEN_PATH

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

    async with store_client(stream, timeout_seconds=10) as client:
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

    events = RecordedEvents()
    async with store_client(truncated, events=events) as client:
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


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"errors": [{"status": 401, "title": "Unauthorized"}]}', "Unauthorized"),
        (
            b'{"errors": [{"status": "400", "title": "Bad Request", "detail": "bad filter"}]}',
            "Bad Request: bad filter",
        ),
        # Promotions Standard's 401 example writes one error object, not an array of them.
        (b'{"errors": {"status": 401, "title": "Unauthorized"}}', "Unauthorized"),
        (b'{"errors": []}', "non-JSON error body (14 bytes)"),
        (b"<html><body>Bad gateway</body></html>", "non-JSON error body (HTML page)"),
    ],
)
def test_error_summary(body: bytes, expected: str) -> None:
    assert error_summary(body) == expected
