"""ElasticPathClient and its tokens: one per many requests, renewed, replaced, read from files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from monitor.simulator import Fault, Simulator
from tests.client_support import (
    Connect,
    RecordedEvents,
    fetch,
    fetch_error,
    jobs_path,
    request_token,
    requests_to,
)
from tests.support import TOKEN_PATH, FakeClock

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
