"""API faults the daemon must ride out, one promotion at a time.

Each test runs the real daemon (a subprocess) against a store of its own, injects a fault and
judges the metrics, the log events and the snapshot, and that the daemon kept working once
the fault was gone. A fault that outlasts the client's attempts costs seconds of back-off, so
the retried ones share one daemon, a fault on each of its promotions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from monitor.simulator import Fault
from tests.fault_support import (
    ATTEMPTS,
    CODES_LIMIT,
    Store,
    assert_every_spoiled_request_counted,
    assert_failed_polls,
    assert_no_poll_failed,
    assert_nothing_known_is_lost,
    assert_only_the_victims_polls_failed,
    assert_retried,
    assert_untouched,
    failed_then_recovered,
    jobs_gauge,
    jobs_requests,
    of,
    poll_errors,
    polled,
    read_state,
    retries,
    ridden_out,
    up,
    watching,
)
from tests.support import Daemon, series

RSS_LIMIT_KB = 300 * 1024
WRONG_SECRET = "not-the-secret-7c1e"  # wrong, but a secret all the same


# faults that outlast the client's attempts: one failed poll per round, the rest untouched


@dataclass(frozen=True)
class FailedPolls:
    """A fault that outlasts the client's attempts, and what its failed polls must say."""

    fault: Fault
    reason: str
    http_status: int | None


async def test_faults_that_outlast_the_retries_fail_only_their_own_promotions_polls(
    tmp_path: Path,
) -> None:
    # Each fault is retried first; they share a daemon (a promotion each) because each costs
    # seconds of back-off. (request_retried names no promotion: the http_status tells them apart.)
    faults = [
        FailedPolls(Fault("status", status=500, times=None), "http_5xx", 500),
        FailedPolls(Fault("status", status=503, times=None), "http_5xx", 503),
        FailedPolls(Fault("html", times=None), "http_5xx", 502),
        FailedPolls(Fault("timeout", delay=3.0, times=None), "timeout", None),
        FailedPolls(Fault("reset", times=None), "network", None),
        FailedPolls(Fault("truncated", times=None), "bad_response", 200),
    ]
    store = Store.build(seed=1, count=len(faults) + 2)
    sim = store.sim
    victims = dict(zip(store.ids, faults, strict=False))
    bystanders = store.ids[len(faults) :]
    known = {pid: store.known_jobs(pid) for pid in victims}
    async with watching(store, tmp_path, poll={"max_concurrent_polls": 16}) as daemon:
        await daemon.wait_for("baseline_loaded", count=len(store.ids))
        before = await daemon.metrics()
        for pid, expected in victims.items():
            sim.inject(replace(expected.fault, path_contains=f"/{pid}/jobs"))
        for pid in victims:
            await daemon.wait_for("poll_failed", of(pid), timeout=30)
        during = await daemon.metrics()
        state = read_state(tmp_path)

        sim.clear_faults()
        failed_jobs = {pid: store.fail(pid) for pid in victims}
        await daemon.wait_for("job_failed", count=len(victims), timeout=30)
        await daemon.wait_for_metric(lambda s: all(up(s, pid) == 1 for pid in victims), timeout=30)
        for pid in victims:
            await polled(sim, pid, 3)
        after = await daemon.metrics()
    assert daemon.process.returncode == 0

    assert daemon.named("job_vanished") == []
    retried = daemon.named("request_retried")
    for pid, expected in victims.items():
        assert_nothing_known_is_lost(before, during, state, pid, known[pid])
        assert up(during, pid) == 0
        assert poll_errors(during, pid).get(expected.reason, 0) >= 1
        assert set(poll_errors(after, pid)) == {expected.reason}
        assert_failed_polls(daemon, pid, expected.reason, expected.http_status)
        mine = [
            e
            for e in retried
            if (e["reason"], e.get("http_status")) == (expected.reason, expected.http_status)
        ]
        assert mine, f"no request_retried event for {expected.fault}"
        # The daemon kept working: the new failure reported once, and the victim is back.
        (failed,) = daemon.named("job_failed", promotion_id=pid)
        assert failed["job_id"] == failed_jobs[pid]
        assert failed["error"] == CODES_LIMIT
        assert up(after, pid) == 1
    # The faults belong to their victims alone.
    assert {e["promotion_id"] for e in daemon.named("poll_failed")} == set(victims)
    assert_untouched(during, after, bystanders)
    assert {(e["endpoint"], e["reason"], e.get("http_status")) for e in retried} == {
        ("promotion_jobs", f.reason, f.http_status) for f in faults
    }
    for reason in {f.reason for f in faults}:
        counted = retries(after, "promotion_jobs", reason)
        assert counted == len([e for e in retried if e["reason"] == reason])
    assert all(1 <= e["attempt"] <= ATTEMPTS - 1 for e in retried)
    assert_every_spoiled_request_counted(after, sim.requests, "promotion_jobs")


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [("1", 1.0), (None, None)],
    ids=["http_429_retry_after", "http_429_no_header"],
)
async def test_a_429_that_outlasts_the_retries_fails_the_poll_as_rate_limited(
    tmp_path: Path, retry_after: str | None, waited: float | None
) -> None:
    # On a daemon of its own: each 429 halves the request budget of the whole process.
    store = Store.build(seed=2)
    jobs = f"/{store.victim}/jobs"
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        before = await daemon.metrics()
        fault = Fault("status", status=429, retry_after=retry_after, path_contains=jobs, times=None)
        store.sim.inject(fault)
        seen = await failed_then_recovered(daemon, store, tmp_path, before)

    assert_only_the_victims_polls_failed(daemon, store, seen, "rate_limited", 429)
    retried = daemon.named("request_retried")
    assert retried
    assert {(e["endpoint"], e["reason"]) for e in retried} == {("promotion_jobs", "rate_limited")}
    # With a Retry-After the client waits as told; without one it backs off on its own.
    # (a field with no value is left out of the line)
    assert {e.get("retry_after") for e in retried} == {waited}
    assert retries(seen.after, "promotion_jobs", "rate_limited") == len(retried)
    assert all(1 <= e["attempt"] <= ATTEMPTS - 1 for e in retried)
    assert_every_spoiled_request_counted(seen.after, store.sim.requests, "promotion_jobs")


@pytest.mark.parametrize(
    ("fault", "reason", "http_status"),
    [
        pytest.param(Fault("status", status=400, times=None), "http_4xx", 400, id="http_400"),
        pytest.param(Fault("status", status=403, times=None), "auth", 403, id="http_403"),
        pytest.param(Fault("wrong_shape", times=None), "bad_response", None, id="wrong_shape"),
    ],
)
async def test_a_fault_that_is_not_retried_fails_the_poll_at_once(
    tmp_path: Path, fault: Fault, reason: str, http_status: int | None
) -> None:
    store = Store.build(seed=3)
    victim = store.victim
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        before = await daemon.metrics()
        store.sim.inject(replace(fault, path_contains=f"/{victim}/jobs"))
        seen = await failed_then_recovered(daemon, store, tmp_path, before)

    assert_only_the_victims_polls_failed(daemon, store, seen, reason, http_status)
    # Not retried: the same answer again would not make it right.
    assert daemon.named("request_retried") == []
    assert series(seen.after, "epcc_monitor_api_retries_total") == {}
    if http_status is not None:
        # One request per poll: every failed poll cost the store exactly one request.
        refused = [r for r in jobs_requests(store.sim.requests, victim) if r.status not in (0, 200)]
        assert len(refused) == len(daemon.named("poll_failed", promotion_id=victim))
    assert_every_spoiled_request_counted(seen.after, store.sim.requests, "promotion_jobs")


async def peak_rss_kb(daemon: Daemon) -> int:
    """The largest VmRSS of the daemon process until it exits (or this task is cancelled)."""
    peak = 0
    status = Path(f"/proc/{daemon.process.pid}/status")
    with contextlib.suppress(asyncio.CancelledError):
        while daemon.process.returncode is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in status.read_text(encoding="utf-8").splitlines():
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
            await asyncio.sleep(0.1)
    return peak


async def test_a_huge_answer_is_refused_without_blowing_up_the_daemon(tmp_path: Path) -> None:
    store = Store.build(seed=4)
    async with watching(store, tmp_path) as daemon:
        rss = asyncio.create_task(peak_rss_kb(daemon))
        await daemon.wait_for("baseline_loaded", count=3)
        before = await daemon.metrics()
        store.sim.inject(Fault("huge", path_contains=f"/{store.victim}/jobs", times=None))
        seen = await failed_then_recovered(daemon, store, tmp_path, before)
        rss.cancel()
        peak = await rss

    assert_only_the_victims_polls_failed(daemon, store, seen, "bad_response", None)
    assert all("too large" in e["detail"] for e in daemon.named("poll_failed"))
    # Every refused poll was offered 64 MiB; reading even one would show here.
    assert 0 < peak < RSS_LIMIT_KB
    assert daemon.named("request_retried") == []
    assert series(seen.after, "epcc_monitor_api_retries_total") == {}
    # (Its requests are not counted against the store's: a huge answer the client walks away
    # from is recorded as 200 or as unanswered, depending on when the handler notices.)


async def test_a_deleted_promotion_is_reported_for_that_promotion_only(tmp_path: Path) -> None:
    # A Promotions Builder promotion: its own endpoint, the same verdict.
    store = Store.build(seed=5, kind="rule_promotion")
    sim, victim = store.sim, store.victim
    known = store.known_jobs(victim)
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        before = await daemon.metrics()
        sim.remove_promotion(victim)
        await daemon.wait_for("poll_failed", of(victim), timeout=30)
        during = await daemon.metrics()
        state = read_state(tmp_path)

        # The daemon keeps working for everyone else.
        failed_job = store.fail(store.others[0])
        await daemon.wait_for("job_failed", timeout=30)
        await polled(sim, store.others[0], 3)
        after = await daemon.metrics()
    assert daemon.process.returncode == 0

    # Gauges keep their last known values and nothing is reported vanished.
    assert daemon.named("job_vanished") == []
    assert_nothing_known_is_lost(before, during, state, victim, known)
    assert up(during, victim) == 0
    assert poll_errors(during, victim).get("not_found", 0) >= 1
    assert set(poll_errors(after, victim)) == {"not_found"}
    assert {e["promotion_id"] for e in daemon.named("poll_failed")} == {victim}
    assert_failed_polls(daemon, victim, "not_found", 404)
    assert_untouched(during, after, store.others)
    assert daemon.named("request_retried") == []
    assert series(after, "epcc_monitor_api_retries_total") == {}
    # One request per poll: every failed poll cost the store exactly one request.
    refused = [r for r in jobs_requests(sim.requests, victim) if r.status not in (0, 200)]
    assert len(refused) == len(daemon.named("poll_failed", promotion_id=victim))
    (failed,) = daemon.named("job_failed")
    assert (failed["job_id"], failed["error"]) == (failed_job, CODES_LIMIT)
    # Still deleted at the end: still down, still known.
    assert up(after, victim) == 0
    assert jobs_gauge(after, victim) == jobs_gauge(before, victim)


# faults the client's retries ride out: the poll succeeds and nothing is reported


async def test_one_500_is_retried_and_the_poll_succeeds(tmp_path: Path) -> None:
    store = Store.build(seed=6)
    fault = Fault("status", status=500, path_contains=f"/{store.victim}/jobs")
    daemon, seen = await ridden_out(store, tmp_path, fault)

    assert_no_poll_failed(daemon, store, seen)
    assert_retried(daemon, seen, "promotion_jobs", "http_5xx")
    assert_every_spoiled_request_counted(seen.after, store.sim.requests, "promotion_jobs")


async def test_one_429_is_retried_no_sooner_than_its_retry_after(tmp_path: Path) -> None:
    store = Store.build(seed=7)
    jobs = f"/{store.victim}/jobs"
    fault = Fault("status", status=429, retry_after="1", path_contains=jobs)
    daemon, seen = await ridden_out(store, tmp_path, fault)

    assert_no_poll_failed(daemon, store, seen)
    (retried,) = daemon.named("request_retried")
    assert (retried["endpoint"], retried["reason"]) == ("promotion_jobs", "rate_limited")
    assert (retried["http_status"], retried["retry_after"], retried["attempt"]) == (429, 1.0, 1)
    assert retries(seen.after, "promotion_jobs", "rate_limited") == 1
    requests = jobs_requests(store.sim.requests, store.victim)
    refused = [r.status for r in requests].index(429)
    assert requests[refused + 1].status == 200
    # Retry-After: 1 means no sooner than a second later.
    assert requests[refused + 1].at - requests[refused].at >= 0.95
    assert_every_spoiled_request_counted(seen.after, store.sim.requests, "promotion_jobs")


async def test_a_revoked_token_is_replaced_once_without_a_failed_poll(tmp_path: Path) -> None:
    store = Store.build(seed=8)
    fault = Fault("status", status=401, path_contains=f"/{store.victim}/jobs")
    daemon, seen = await ridden_out(store, tmp_path, fault)

    assert_no_poll_failed(daemon, store, seen)
    # A new token, once, and the refused request again with it: no retry, no failed poll.
    assert len(daemon.named("token_refreshed")) == 2
    assert len(store.sim.issued_tokens()) == 2
    statuses = [r.status for r in jobs_requests(store.sim.requests, store.victim)]
    assert statuses[statuses.index(401) + 1] == 200
    assert daemon.named("request_retried") == []
    assert series(seen.after, "epcc_monitor_api_retries_total") == {}
    assert_every_spoiled_request_counted(seen.after, store.sim.requests, "promotion_jobs")


async def test_a_token_endpoint_failing_twice_is_retried_and_the_poll_succeeds(
    tmp_path: Path,
) -> None:
    store = Store.build(seed=9)
    # The next jobs request meets a revoked token, so the daemon must fetch a new one.
    fault = Fault("status", status=500, path_contains="/oauth", times=2)
    daemon, seen = await ridden_out(store, tmp_path, fault, revoke_tokens=True)

    assert_no_poll_failed(daemon, store, seen)
    assert_retried(daemon, seen, "token", "http_5xx")
    assert_every_spoiled_request_counted(seen.after, store.sim.requests, "token")


# global faults: the token endpoint, credentials


async def test_a_failing_token_endpoint_is_backed_off_then_recovers(tmp_path: Path) -> None:
    store = Store.build(seed=31)
    sim = store.sim
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        before = await daemon.metrics()
        sim.revoke_tokens()
        sim.inject(Fault("status", status=500, path_contains="/oauth", times=None))
        first = await daemon.wait_for("poll_failed", timeout=15)
        token_requests = [r for r in sim.requests if r.path.startswith("/oauth")]
        refused_at_first_failure = sum(1 for r in token_requests if r.status == 500)
        during = await daemon.metrics()

        sim.clear_faults()
        failed_job = store.fail(store.victim)
        await daemon.wait_for("job_failed", timeout=30)
        after = await daemon.wait_for_metric(
            lambda s: all(up(s, pid) == 1 for pid in store.ids), timeout=30
        )
    assert daemon.process.returncode == 0

    assert (first["reason"], first["http_status"]) == ("http_5xx", 500)
    # Backed off like any other fault: bounded attempts per poll, not attempts squared.
    assert refused_at_first_failure <= ATTEMPTS + 1
    token_retries = daemon.named("request_retried", endpoint="token")
    assert token_retries
    assert {e["reason"] for e in token_retries} == {"http_5xx"}
    assert daemon.named("job_vanished") == []
    failed_pid = first["promotion_id"]
    assert up(during, failed_pid) == 0
    assert jobs_gauge(during, failed_pid) == jobs_gauge(before, failed_pid)
    # ...and once the endpoint answers again, everything is back.
    assert [e["job_id"] for e in daemon.named("job_failed")] == [failed_job]
    assert all(up(after, pid) == 1 for pid in store.ids)


async def test_wrong_credentials_are_an_auth_failure_everywhere_not_a_crash(
    tmp_path: Path,
) -> None:
    store = Store.build(seed=41)
    sim = store.sim
    wrong = {"client_secret": WRONG_SECRET}
    async with watching(store, tmp_path, api=wrong, names=False) as daemon:
        # Several rounds of refusals: the daemon must neither exit nor give up.
        for pid in store.ids:
            await daemon.wait_for("poll_failed", of(pid), count=3)
        during = await daemon.metrics()
        running = daemon.process.returncode is None
        readyz = await daemon.get("/readyz")
        healthz = await daemon.get("/healthz")
        events_during = list(daemon.events)
        # The operator fixes the credentials (here: the store starts accepting them).
        sim.client_secret = WRONG_SECRET
        await daemon.wait_for("baseline_loaded", count=3)
        failed_job = store.fail(store.victim)
        await daemon.wait_for("job_failed")
        after = await daemon.wait_for_metric(lambda s: all(up(s, pid) == 1 for pid in store.ids))
    assert daemon.process.returncode == 0

    for pid in store.ids:
        assert up(during, pid) == 0
        assert set(poll_errors(during, pid)) == {"auth"}
    failed = [e for e in events_during if e["event"] == "poll_failed"]
    assert {e["reason"] for e in failed} == {"auth"}
    assert {e["http_status"] for e in failed} == {401}
    assert not [e for e in events_during if e["event"] == "baseline_loaded"]
    # Not retried: a wrong secret does not become right by asking again.
    assert not [e for e in events_during if e["event"] == "request_retried"]
    assert running
    # Readiness never depends on Elastic Path: a sidecar's readiness gates its pod.
    assert readyz == (200, "ready\n")
    assert healthz[0] == 200
    # The log says what to check.
    hints = [
        e
        for e in events_during
        if e["level"] in ("warning", "error")
        and "client_id" in json.dumps(e).lower()
        and "client_secret" in json.dumps(e).lower()
    ]
    assert hints
    # Fixed credentials: baselines come, and only news is reported.
    assert len(daemon.named("baseline_loaded")) == 3
    assert [e["job_id"] for e in daemon.named("job_failed")] == [failed_job]
    assert all(up(after, pid) == 1 for pid in store.ids)
    assert WRONG_SECRET not in daemon.output
