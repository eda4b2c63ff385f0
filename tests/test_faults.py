"""The fault matrix: every API fault, bad answer and state fault the daemon must ride out.

Each scenario runs the real daemon (a subprocess) against a simulated store of its own and
injects one fault. A poll that really fails takes seconds (the daemon backs off between its
retries before it gives up), so the scenarios run concurrently, once per module, and each test
then judges the scenario it is about: the metrics, the log events, the snapshot, and that the
daemon kept working once the fault was gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import web

from monitor.models import PromotionSnapshot
from monitor.simulator import Fault, FaultKind, RecordedRequest, Simulator
from monitor.state import decode
from tests.support import Daemon, Sample, long_ago, series, value, write_config
from tests.support import serving as serve_app

Samples = dict[Sample, float]
Event = dict[str, Any]

# The daemon's client makes 1 + 3 attempts, waiting ~0.5, ~1 and ~2 s (plus jitter) between them.
ATTEMPTS = 4
INTERVAL = 0.3
API_TIMEOUT = 1.0
CODES_LIMIT = "codes limit exceeded"
RSS_LIMIT_KB = 300 * 1024
# Only this many daemons start at once: imports are CPU-bound and the machine has few cores.
PARALLEL_STARTS = 4
SECRET = "s3cr3t-never-print-4f1d9c"  # a test credential, and the leak to look for
WRONG_SECRET = "not-the-secret-7c1e"  # wrong, but a secret all the same


# what a scenario leaves behind for the tests to judge


@dataclass
class Observed:
    """What one scenario saw: daemon output, /metrics at each phase, the simulator's requests."""

    victim: str = ""
    others: list[str] = field(default_factory=list)
    victim_jobs: set[str] = field(default_factory=set)
    failed_job: str = ""  # the job made to fail once the fault was gone
    events: list[Event] = field(default_factory=list)
    output: str = ""  # stdout and stderr, every byte the daemon wrote
    before: Samples = field(default_factory=dict)  # after the baselines
    during: Samples = field(default_factory=dict)  # while the fault was on
    after: Samples = field(default_factory=dict)  # after the fault was cleared
    state: dict[str, PromotionSnapshot] | None = None  # the state file while the fault was on
    requests: list[RecordedRequest] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    exit_code: int | None = None
    peak_rss_kb: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def named(self, name: str, **fields: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def jobs_requests(self, pid: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(f"/{pid}/jobs")]


class Lab:
    """Shared by the scenarios of one run: temp directories and the start throttle."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self.starts = asyncio.Semaphore(PARALLEL_STARTS)

    def directory(self, name: str) -> Path:
        return self._tmp.mktemp(name)

    async def start(self, config: Path) -> tuple[Daemon, asyncio.Task[int]]:
        """Start the daemon (as Daemon.start does) and never leave it behind if it hangs."""
        async with self.starts:
            daemon = await Daemon.start(config)
        return daemon, asyncio.create_task(peak_rss_kb(daemon))


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


Scenario = Callable[[Lab], Awaitable[Observed]]
SCENARIOS: dict[str, Scenario] = {}
F = TypeVar("F", bound=Callable[..., Any])


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(run: Scenario) -> Scenario:
        SCENARIOS[name] = run
        return run

    return register


def uses(*names: str) -> Callable[[F], F]:
    """Declare which scenarios a test judges, so a -k selection runs only those."""

    def mark(test: F) -> F:
        test.scenarios = names  # type: ignore[attr-defined]
        return test

    return mark


class Matrix:
    """The outcome of every scenario run, by name; a scenario that broke re-raises here."""

    def __init__(self, outcomes: Mapping[str, Observed | BaseException]) -> None:
        self._outcomes = outcomes

    def __getitem__(self, name: str) -> Observed:
        outcome = self._outcomes[name]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _wanted(items: list[pytest.Item], module: ModuleType) -> set[str]:
    names: set[str] = set()
    for item in items:
        if getattr(item, "module", None) is not module:
            continue
        names.update(getattr(getattr(item, "function", None), "scenarios", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("case"), str):
            names.add(callspec.params["case"])
    return names


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    wanted = _wanted(request.session.items, request.module) or set(SCENARIOS)

    async def run_all() -> dict[str, Observed | BaseException]:
        lab = Lab(tmp_path_factory)
        names = sorted(wanted)
        results = await asyncio.gather(
            *(SCENARIOS[name](lab) for name in names), return_exceptions=True
        )
        return dict(zip(names, results, strict=True))

    return Matrix(asyncio.run(run_all()))


# helpers for scenarios


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def answered(sim: Simulator, pid: str) -> int:
    """Jobs requests of `pid` the simulator has answered so far."""
    return sum(1 for r in sim.requests if r.path.endswith(f"/{pid}/jobs") and r.status != 0)


async def polled(sim: Simulator, pid: str, times: int = 2) -> None:
    """Wait until `pid` has been polled `times` more times."""
    start = answered(sim, pid)
    await until(lambda: answered(sim, pid) >= start + times, f"{times} more polls of {pid}")


def of(pid: str) -> Callable[[Event], bool]:
    """An event predicate: the event is about promotion `pid`."""
    return lambda event: event.get("promotion_id") == pid


def up(samples: Samples, pid: str) -> float | None:
    return value(samples, "epcc_monitor_up", promotion_id=pid)


def jobs_gauge(samples: Samples, pid: str) -> dict[tuple[str, str], float]:
    """epcc_promotion_jobs of one promotion, by (job_type, status)."""
    found: dict[tuple[str, str], float] = {}
    for labels, v in series(samples, "epcc_promotion_jobs").items():
        label = dict(labels)
        if label["promotion_id"] == pid:
            found[label["job_type"], label["status"]] = v
    return found


def poll_errors(samples: Samples, pid: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for labels, v in series(samples, "epcc_monitor_poll_errors_total").items():
        label = dict(labels)
        if label["promotion_id"] == pid:
            found[label["reason"]] = v
    return found


def retries(samples: Samples, endpoint: str, reason: str) -> float:
    return value(samples, "epcc_monitor_api_retries_total", endpoint=endpoint, reason=reason) or 0


def requests_metric(samples: Samples, endpoint: str) -> dict[str, float]:
    """epcc_monitor_api_requests_total of one endpoint, by code."""
    found: dict[str, float] = {}
    for labels, v in series(samples, "epcc_monitor_api_requests_total").items():
        label = dict(labels)
        if label["endpoint"] == endpoint:
            found[label["code"]] = v
    return found


def store_codes(requests: list[RecordedRequest], endpoint: str) -> Counter[str]:
    """What the simulator answered on one endpoint, by code ('error' when nothing was sent)."""
    prefix = "/oauth/" if endpoint == "token" else "/v2/promotions/"
    return Counter(str(r.status or "error") for r in requests if r.path.startswith(prefix))


@dataclass
class Store:
    """Three promotions, each with history (two completed, one failed) and a processing job."""

    sim: Simulator
    ids: list[str]
    processing: dict[str, str]

    @classmethod
    def build(cls, seed: int, **options: Any) -> Store:
        sim = Simulator(seed=seed, **options)
        ids: list[str] = []
        processing: dict[str, str] = {}
        for _ in range(3):
            pid = sim.add_promotion()
            sim.add_jobs(pid, 2, status="completed", job_type="code_export")
            # Failures long before the monitor started: state, never news.
            sim.add_job(pid, status="failed", error=CODES_LIMIT, created_at=long_ago())
            processing[pid] = sim.add_job(pid, status="processing")
            ids.append(pid)
        return cls(sim, ids, processing)

    def promotions(self) -> list[dict[str, str]]:
        return [{"id": pid} for pid in self.ids]

    def fail(self, pid: str) -> str:
        job = self.processing[pid]
        self.sim.set_job_status(pid, job, "failed", error=CODES_LIMIT)
        return job


def fast_config(directory: Path, sim: Simulator, promotions: Any, **sections: Any) -> Path:
    merged: dict[str, dict[str, Any]] = {
        "api": {"timeout_seconds": API_TIMEOUT},
        "poll": {"interval_seconds": INTERVAL},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return write_config(directory, sim, promotions, **merged)


@contextlib.asynccontextmanager
async def serving(sim: Simulator) -> AsyncIterator[Simulator]:
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def running(
    lab: Lab, observed: Observed, directory: Path, sim: Simulator, promotions: Any, **sections: Any
) -> AsyncIterator[Daemon]:
    """Serve `sim` and run the daemon against it with a fast config written to `directory`."""
    async with serving(sim):
        config = fast_config(directory, sim, promotions, **sections)
        async with daemon_of(lab, config, observed) as daemon:
            yield daemon


@contextlib.asynccontextmanager
async def daemon_of(lab: Lab, config: Path, observed: Observed) -> AsyncIterator[Daemon]:
    """Run the daemon; on the way out stop it and record its exit code, output and peak RSS."""
    daemon, rss = await lab.start(config)
    try:
        yield daemon
    finally:
        observed.exit_code = await daemon.stop()
        rss.cancel()
        observed.peak_rss_kb = await rss
        observed.events = list(daemon.events)
        observed.output = "\n".join(daemon.raw) + "\n" + daemon.stderr


def read_state(path: Path) -> dict[str, PromotionSnapshot]:
    return decode(path.read_bytes())


# the per-promotion fault cases


Inject = Callable[[Simulator, str], None]


def fault(kind: FaultKind = "status", **options: Any) -> Inject:
    """Inject one fault on the victim's jobs endpoint."""

    def inject(sim: Simulator, victim: str) -> None:
        sim.inject(Fault(kind, path_contains=victim, **options))

    return inject


def delete_promotion(sim: Simulator, victim: str) -> None:
    sim.remove_promotion(victim)


def token_endpoint_fails_twice(sim: Simulator, _: str) -> None:
    # The next jobs request meets a revoked token, so the daemon must fetch a new one.
    sim.revoke_tokens()
    sim.inject(Fault("status", status=500, path_contains="/oauth", times=2))


@dataclass(frozen=True)
class Case:
    """One fault on one promotion and what the daemon must make of it."""

    name: str
    inject: Inject
    # The reason of the failed polls; None for a transient fault that retries ride out.
    reason: str | None
    http_status: int | None = None
    retried: str | None = None  # the reason of the request_retried events, if retried
    endpoint: str = "promotion_jobs"  # of the retries
    recovers: bool = True  # False when the fault is permanent (a deleted promotion)
    # False when the simulator cannot tell what it answered: a huge answer the client walks
    # away from is recorded as 200 or as unanswered, depending on when the handler notices.
    accountable: bool = True


CASES = [
    # persistent: retried (if transient), then a failed poll
    Case("http_500", fault(status=500, times=None), "http_5xx", 500, retried="http_5xx"),
    Case("http_503", fault(status=503, times=None), "http_5xx", 503, retried="http_5xx"),
    Case(
        "http_429_retry_after",
        fault(status=429, retry_after="1", times=None),
        "rate_limited",
        429,
        retried="rate_limited",
    ),
    Case(
        "http_429_no_header",
        fault(status=429, times=None),
        "rate_limited",
        429,
        retried="rate_limited",
    ),
    Case("http_403", fault(status=403, times=None), "auth", 403),
    Case("http_400", fault(status=400, times=None), "http_4xx", 400),
    Case("deleted_404", delete_promotion, "not_found", 404, recovers=False),
    Case("timeout", fault("timeout", delay=3.0, times=None), "timeout", retried="timeout"),
    Case("reset", fault("reset", times=None), "network", retried="network"),
    Case(
        "truncated_json",
        fault("truncated", times=None),
        "bad_response",
        200,
        retried="bad_response",
    ),
    Case("html_502", fault("html", times=None), "http_5xx", 502, retried="http_5xx"),
    Case("wrong_shape", fault("wrong_shape", times=None), "bad_response"),
    Case("huge_body", fault("huge", times=None), "bad_response", accountable=False),
    # transient: retried, then the poll succeeds
    Case("http_500_once", fault(status=500), None, retried="http_5xx"),
    Case("http_429_once", fault(status=429, retry_after="1"), None, retried="rate_limited"),
    Case("http_401_once", fault(status=401), None),
    Case(
        "token_500_twice",
        token_endpoint_fails_twice,
        None,
        retried="http_5xx",
        endpoint="token",
    ),
]
CASE = {case.name: case for case in CASES}


def recovered_since(sim: Simulator, mark: int, pid: str) -> bool:
    """A request the fault spoiled, then a good answer to `pid`'s jobs request."""
    later = sim.requests[mark:]
    spoiled = next((i for i, r in enumerate(later) if r.status not in (0, 200)), None)
    if spoiled is None:
        return False
    return any(r.status == 200 and r.path.endswith(f"/{pid}/jobs") for r in later[spoiled + 1 :])


def fault_scenario(case: Case) -> Scenario:
    async def run(lab: Lab) -> Observed:
        store = Store.build(seed=len(case.name))
        sim = store.sim
        victim, others = store.ids[0], store.ids[1:]
        observed = Observed(victim=victim, others=others)
        observed.victim_jobs = {job["id"] for job in sim.jobs(victim)}
        directory = lab.directory(case.name)
        async with running(lab, observed, directory, sim, store.promotions()) as daemon:
            await daemon.wait_for("baseline_loaded", count=3)
            observed.before = await daemon.metrics()
            mark = len(sim.requests)
            case.inject(sim, victim)
            if case.reason is None:
                await until(lambda: recovered_since(sim, mark, victim), "a retried poll", 20)
                await polled(sim, victim, 1)
            else:
                await daemon.wait_for("poll_failed", of(victim), timeout=30)
            observed.during = await daemon.metrics()
            observed.state = read_state(directory / "state" / "snapshot.json")

            sim.clear_faults()
            target = victim if case.recovers else others[0]
            observed.failed_job = store.fail(target)
            await daemon.wait_for("job_failed", timeout=30)
            await daemon.wait_for_metric(
                lambda s: up(s, victim) == (1 if case.recovers else 0), timeout=30
            )
            await polled(sim, target, 3)
            observed.after = await daemon.metrics()
        observed.requests = list(sim.requests)
        observed.tokens = sim.issued_tokens()
        return observed

    return run


for _case in CASES:
    scenario(_case.name)(fault_scenario(_case))


@pytest.mark.parametrize("case", [case.name for case in CASES])
def test_a_fault_on_one_promotion_costs_nothing_but_its_polls(matrix: Matrix, case: str) -> None:
    spec = CASE[case]
    seen = matrix[case]
    victim = seen.victim
    everyone = [victim, *seen.others]

    # What the monitor knew stays known: no phantom vanishing, gauges keep their last values,
    # and the state file still holds the victim's jobs.
    assert seen.named("job_vanished") == []
    assert jobs_gauge(seen.during, victim) == jobs_gauge(seen.before, victim)
    assert jobs_gauge(seen.during, victim), "the victim's jobs left /metrics"
    assert seen.state is not None
    assert set(seen.state[victim].jobs) == seen.victim_jobs

    failed_polls = seen.named("poll_failed")
    if spec.reason is None:
        assert failed_polls == []
        assert all(poll_errors(seen.after, pid) == {} for pid in everyone)
        assert up(seen.during, victim) == 1
    else:
        assert up(seen.during, victim) == 0
        assert poll_errors(seen.during, victim).get(spec.reason, 0) >= 1
        assert set(poll_errors(seen.after, victim)) == {spec.reason}
        assert failed_polls, "no poll_failed event"
        for event in failed_polls:
            assert event["promotion_id"] == victim
            assert event["reason"] == spec.reason
            assert event.get("http_status") == spec.http_status
            assert event["level"] == "warning"
            assert event["detail"]
    # The fault belongs to the victim alone.
    for pid in seen.others:
        assert up(seen.during, pid) == 1
        assert up(seen.after, pid) == 1
        assert poll_errors(seen.after, pid) == {}

    retried = seen.named("request_retried")
    if spec.retried is not None:
        assert retried, "no request_retried event"
        assert {(e["endpoint"], e["reason"]) for e in retried} == {(spec.endpoint, spec.retried)}
        assert retries(seen.after, spec.endpoint, spec.retried) == len(retried)
        assert all(1 <= e["attempt"] <= ATTEMPTS - 1 for e in retried)
    else:
        assert retried == []
        assert series(seen.after, "epcc_monitor_api_retries_total") == {}

    # Every request the store saw with the fault is counted, under the endpoint it was for.
    if spec.recovers and spec.accountable:
        counted = requests_metric(seen.after, spec.endpoint)
        for code, seen_by_store in store_codes(seen.requests, spec.endpoint).items():
            if code != "200":
                assert counted.get(code) == seen_by_store, code

    # The daemon kept working: one new failure, reported once, and the victim is back.
    (failed,) = seen.named("job_failed")
    assert failed["job_id"] == seen.failed_job
    assert failed["error"] == CODES_LIMIT
    assert up(seen.after, victim) == (1 if spec.recovers else 0)
    assert seen.exit_code == 0


def test_429_retry_after_is_honoured_before_the_retry(matrix: Matrix) -> None:
    seen = matrix["http_429_once"]
    (retried,) = seen.named("request_retried")
    assert retried["reason"] == "rate_limited"
    assert retried["http_status"] == 429
    assert retried["retry_after"] == 1.0
    statuses = [r.status for r in seen.jobs_requests(seen.victim)]
    refused = statuses.index(429)
    assert statuses[refused + 1] == 200
    requests = seen.jobs_requests(seen.victim)
    # Retry-After: 1 means no sooner than a second later.
    assert requests[refused + 1].at - requests[refused].at >= 0.95


def test_429_without_retry_after_backs_off_and_is_rate_limited(matrix: Matrix) -> None:
    seen = matrix["http_429_no_header"]
    retried = seen.named("request_retried", reason="rate_limited")
    assert retried
    assert {e.get("retry_after") for e in retried} == {None}  # (a field with no value is left out)


@pytest.mark.parametrize("case", ["http_400", "http_403", "deleted_404"])
def test_a_permanent_answer_is_not_retried(matrix: Matrix, case: str) -> None:
    seen = matrix[case]
    answers = [r.status for r in seen.jobs_requests(seen.victim) if r.status not in (0, 200)]
    # One request per poll: every failed poll cost the store exactly one request.
    assert len(answers) == len(seen.named("poll_failed", promotion_id=seen.victim))


def test_a_revoked_token_is_replaced_once_without_a_failed_poll(matrix: Matrix) -> None:
    seen = matrix["http_401_once"]
    assert len(seen.named("token_refreshed")) == 2
    assert len(seen.tokens) == 2
    statuses = [r.status for r in seen.jobs_requests(seen.victim)]
    refused = statuses.index(401)
    assert statuses[refused + 1] == 200
    assert seen.named("poll_failed") == []


def test_a_deleted_promotion_is_reported_for_that_promotion_only(matrix: Matrix) -> None:
    seen = matrix["deleted_404"]
    for pid in seen.others:
        assert seen.named("poll_failed", promotion_id=pid) == []
    # Still deleted at the end: still down, still known.
    assert up(seen.after, seen.victim) == 0
    assert jobs_gauge(seen.after, seen.victim) == jobs_gauge(seen.before, seen.victim)


def test_a_huge_answer_does_not_blow_up_the_daemon(matrix: Matrix) -> None:
    seen = matrix["huge_body"]
    refused = seen.named("poll_failed", promotion_id=seen.victim)
    assert refused
    assert all("too large" in e["detail"] for e in refused)
    # Every refused poll was offered 64 MiB; reading even one would show here.
    assert 0 < seen.peak_rss_kb < RSS_LIMIT_KB


# global faults: the token endpoint, credentials


@scenario("token_500_persistent")
async def _token_endpoint_down(lab: Lab) -> Observed:
    store = Store.build(seed=31)
    sim = store.sim
    observed = Observed(victim=store.ids[0], others=store.ids[1:])
    async with running(
        lab, observed, lab.directory("token-down"), sim, store.promotions()
    ) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        observed.before = await daemon.metrics()
        sim.revoke_tokens()
        sim.inject(Fault("status", status=500, path_contains="/oauth", times=None))
        first = await daemon.wait_for("poll_failed", timeout=15)
        observed.extra["first_failure"] = first
        observed.extra["token_requests_at_first_failure"] = sum(
            1 for r in sim.requests if r.path.startswith("/oauth") and r.status == 500
        )
        observed.during = await daemon.metrics()
        sim.clear_faults()
        observed.failed_job = store.fail(observed.victim)
        await daemon.wait_for("job_failed", timeout=30)
        await daemon.wait_for_metric(
            lambda s: all(up(s, pid) == 1 for pid in store.ids), timeout=30
        )
        observed.after = await daemon.metrics()
    observed.requests = list(sim.requests)
    return observed


@uses("token_500_persistent")
def test_a_failing_token_endpoint_is_backed_off_then_recovers(matrix: Matrix) -> None:
    seen = matrix["token_500_persistent"]
    first = seen.extra["first_failure"]
    assert first["reason"] == "http_5xx"
    assert first["http_status"] == 500
    # Backed off like any other fault: bounded attempts per poll, not attempts squared.
    assert seen.extra["token_requests_at_first_failure"] <= ATTEMPTS + 1
    token_retries = seen.named("request_retried", endpoint="token")
    assert token_retries
    assert {e["reason"] for e in token_retries} == {"http_5xx"}
    assert seen.named("job_vanished") == []
    failed_pid = first["promotion_id"]
    assert up(seen.during, failed_pid) == 0
    assert jobs_gauge(seen.during, failed_pid) == jobs_gauge(seen.before, failed_pid)
    # ...and once the endpoint answers again, everything is back.
    assert [e["job_id"] for e in seen.named("job_failed")] == [seen.failed_job]
    assert all(up(seen.after, pid) == 1 for pid in [seen.victim, *seen.others])
    assert seen.exit_code == 0


@scenario("wrong_credentials")
async def _wrong_credentials(lab: Lab) -> Observed:
    store = Store.build(seed=41)
    sim = store.sim
    observed = Observed(victim=store.ids[0], others=store.ids[1:])
    wrong = WRONG_SECRET
    async with running(
        lab,
        observed,
        lab.directory("wrong-credentials"),
        sim,
        store.promotions(),
        api={"client_secret": wrong},
    ) as daemon:
        # Several rounds of refusals: the daemon must neither exit nor give up.
        for pid in store.ids:
            await daemon.wait_for("poll_failed", of(pid), count=3)
        observed.during = await daemon.metrics()
        observed.extra["running"] = daemon.process.returncode is None
        observed.extra["readyz"] = await daemon.get("/readyz")
        observed.extra["healthz"] = await daemon.get("/healthz")
        observed.extra["events_during"] = list(daemon.events)
        # The operator fixes the credentials (here: the store starts accepting them).
        sim.client_secret = wrong
        await daemon.wait_for("baseline_loaded", count=3)
        observed.failed_job = store.fail(observed.victim)
        await daemon.wait_for("job_failed")
        observed.after = await daemon.wait_for_metric(
            lambda s: all(up(s, pid) == 1 for pid in store.ids)
        )
    return observed


@uses("wrong_credentials")
def test_wrong_credentials_are_an_auth_failure_everywhere_not_a_crash(matrix: Matrix) -> None:
    seen = matrix["wrong_credentials"]
    everyone = [seen.victim, *seen.others]
    for pid in everyone:
        assert up(seen.during, pid) == 0
        assert set(poll_errors(seen.during, pid)) == {"auth"}
    during = seen.extra["events_during"]
    failed = [e for e in during if e["event"] == "poll_failed"]
    assert {e["reason"] for e in failed} == {"auth"}
    assert {e["http_status"] for e in failed} == {401}
    assert not [e for e in during if e["event"] == "baseline_loaded"]
    # Not retried: a wrong secret does not become right by asking again.
    assert not [e for e in during if e["event"] == "request_retried"]
    assert seen.extra["running"]
    # Readiness never depends on Elastic Path: a sidecar's readiness gates its pod.
    assert seen.extra["readyz"] == (200, "ready\n")
    assert seen.extra["healthz"][0] == 200
    # Fixed credentials: baselines come, and only news is reported.
    assert len(seen.named("baseline_loaded")) == 3
    assert [e["job_id"] for e in seen.named("job_failed")] == [seen.failed_job]
    assert all(up(seen.after, pid) == 1 for pid in everyone)
    assert WRONG_SECRET not in seen.output
    assert seen.exit_code == 0


@uses("wrong_credentials")
def test_wrong_credentials_log_says_what_to_check(matrix: Matrix) -> None:
    seen = matrix["wrong_credentials"]
    hints = [
        e
        for e in seen.extra["events_during"]
        if e["level"] in ("warning", "error")
        and "client_id" in json.dumps(e).lower()
        and "client_secret" in json.dumps(e).lower()
    ]
    assert hints


# bad answers: unknown statuses, jobs that cannot be identified, error texts


@scenario("unknown_status")
async def _unknown_status(lab: Lab) -> Observed:
    store = Store.build(seed=51)
    sim = store.sim
    victim = store.ids[0]
    sim.add_job(victim, status="archived")  # unknown at the baseline already
    sim.add_job(victim, status="Complete")  # the reference's spelling of completed
    observed = Observed(victim=victim, others=store.ids[1:])
    async with running(
        lab, observed, lab.directory("unknown-status"), sim, store.promotions()
    ) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        observed.before = await daemon.metrics()
        on_hold = sim.add_job(victim, status="on_hold")
        observed.extra["on_hold"] = on_hold
        await daemon.wait_for("job_discovered")
        observed.during = await daemon.metrics()
        sim.set_job_status(victim, on_hold, "failed", error=CODES_LIMIT)
        observed.failed_job = on_hold
        await daemon.wait_for("job_failed")
        await polled(sim, victim, 2)
        observed.after = await daemon.metrics()
    return observed


@uses("unknown_status")
def test_unknown_statuses_are_kept_verbatim(matrix: Matrix) -> None:
    seen = matrix["unknown_status"]
    victim = seen.victim
    (baseline,) = seen.named("baseline_loaded", promotion_id=victim)
    assert baseline["by_status"] == {"completed": 3, "failed": 1, "processing": 1, "archived": 1}
    (discovered,) = seen.named("job_discovered")
    assert (discovered["job_id"], discovered["status"]) == (seen.extra["on_hold"], "on_hold")
    gauge = jobs_gauge(seen.during, victim)
    assert gauge["code_generate", "on_hold"] == 1
    assert gauge["code_generate", "archived"] == 1
    assert gauge["code_generate", "completed"] == 1
    assert seen.named("poll_failed") == []
    assert seen.named("jobs_skipped") == []
    (changed,) = seen.named("job_status_changed")
    assert (changed["previous_status"], changed["status"]) == ("on_hold", "failed")
    assert [e["job_id"] for e in seen.named("job_failed")] == [seen.failed_job]
    assert (
        value(
            seen.after,
            "epcc_promotion_job_transitions_total",
            promotion_id=victim,
            job_type="code_generate",
            from_status="on_hold",
            to_status="failed",
        )
        == 1
    )
    assert seen.exit_code == 0


LONG_ERROR = "export failed:\n" + "\tdisk quota exceeded on node 4711\r\n" * 200
ODD_PROMOTION = "0b6f0c8e-6a7f-4d43-9e7a-3c1d2b9e0f11"
CLEAN_PROMOTION = "5d2c6a9b-1f0e-4b8d-a3c7-9e8f7a6b5c4d"


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
    """A minimal Elastic Path whose jobs pages hold whatever a test puts in them."""

    def __init__(self) -> None:
        self.pages: dict[str, list[Any]] = {}
        self.polls: dict[str, int] = {}
        self.tokens: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/oauth/access_token", self._token)
        self.app.router.add_get("/v2/promotions/{pid}/jobs", self._jobs)

    async def _token(self, _: web.Request) -> web.Response:
        token = f"odd-token-{len(self.tokens)}-9f2e6d"
        self.tokens.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    async def _jobs(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        if pid not in self.pages:
            return web.json_response(
                {"errors": [{"status": 404, "title": "Not Found"}]}, status=404
            )
        self.polls[pid] = self.polls.get(pid, 0) + 1
        data = self.pages[pid] if request.query.get("page[offset]", "0") == "0" else []
        return web.json_response({"data": data, "meta": {"results": {"total": len(data)}}})

    def serving(self) -> contextlib.AbstractAsyncContextManager[str]:
        return serve_app(self.app)

    async def polled(self, pid: str, times: int = 2) -> None:
        start = self.polls.get(pid, 0)
        await until(lambda: self.polls.get(pid, 0) >= start + times, f"polls of {pid}")


def odd_config(directory: Path, base_url: str, promotions: list[str]) -> Path:
    document = {
        "api": {
            "base_url": base_url,
            "client_id": "odd-client",
            "client_secret": SECRET,
            "timeout_seconds": API_TIMEOUT,
        },
        "poll": {"interval_seconds": INTERVAL},
        "promotions": [{"id": pid} for pid in promotions],
        "server": {"host": "127.0.0.1", "port": 0},
        "state": {"path": str(directory / "state" / "snapshot.json")},
        "log": {"level": "info", "format": "json"},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@scenario("odd_jobs")
async def _odd_jobs(lab: Lab) -> Observed:
    odd = OddStore()
    good = "11111111-2222-4333-8444-555555555555"
    odd.pages[ODD_PROMOTION] = [
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
    odd.pages[CLEAN_PROMOTION] = [
        api_job("c1"),
        api_job("c2", status="failed", error="x", age=7200.0),
    ]
    observed = Observed(victim=ODD_PROMOTION, others=[CLEAN_PROMOTION])
    directory = lab.directory("odd-jobs")
    async with odd.serving() as base_url:
        config = odd_config(directory, base_url, [ODD_PROMOTION, CLEAN_PROMOTION])
        async with daemon_of(lab, config, observed) as daemon:
            await daemon.wait_for("baseline_loaded", count=2)
            await odd.polled(ODD_PROMOTION, 2)
            observed.during = await daemon.metrics()
            observed.state = read_state(directory / "state" / "snapshot.json")
            pages = odd.pages[ODD_PROMOTION]
            pages[0] = api_job(good, status="failed", error=CODES_LIMIT)
            observed.failed_job = good
            await daemon.wait_for("job_failed")
            await odd.polled(ODD_PROMOTION, 2)
            observed.after = await daemon.metrics()
    observed.tokens = odd.tokens
    return observed


@uses("odd_jobs")
def test_jobs_that_cannot_be_identified_are_skipped_and_counted(matrix: Matrix) -> None:
    seen = matrix["odd_jobs"]
    victim = seen.victim
    (baseline,) = seen.named("baseline_loaded", promotion_id=victim)
    assert baseline["jobs"] == 3
    skipped = seen.named("jobs_skipped")
    assert skipped
    assert {e["promotion_id"] for e in skipped} == {victim}
    assert {e["count"] for e in skipped} == {5}
    counted = value(seen.during, "epcc_monitor_jobs_skipped_total", promotion_id=victim)
    assert counted is not None
    assert counted >= 5
    assert counted % 5 == 0
    assert value(seen.during, "epcc_monitor_jobs_skipped_total", promotion_id=seen.others[0]) in (
        None,
        0,
    )
    # A job with nothing but an id is kept, its type and status unknown.
    assert jobs_gauge(seen.during, victim)["unknown", "unknown"] == 1
    assert seen.state is not None
    assert set(seen.state[victim].jobs) == {
        "11111111-2222-4333-8444-555555555555",
        "bare-minimum",
        "failed-with-novel",
    }
    assert seen.named("poll_failed") == []
    assert seen.named("job_vanished") == []
    assert [e["job_id"] for e in seen.named("job_failed")] == [seen.failed_job]
    assert seen.exit_code == 0


@uses("odd_jobs")
def test_api_error_texts_reach_labels_single_line_and_capped(matrix: Matrix) -> None:
    seen = matrix["odd_jobs"]
    info = {
        dict(labels)["job_id"]: dict(labels)["error"]
        for labels in series(seen.after, "epcc_promotion_job_failed_info")
        if dict(labels)["promotion_id"] == seen.victim
    }
    novel = info["failed-with-novel"]
    assert novel.startswith("export failed: disk quota exceeded on node 4711")
    assert not any(c in novel for c in "\r\n\t")
    assert len(novel) <= 200
    assert seen.state is not None
    stored = seen.state[seen.victim].jobs["failed-with-novel"].error
    assert stored is not None
    assert "\n" not in stored
    assert len(stored) <= 200
    for labels in series(seen.after, "epcc_promotion_job_errors_total"):
        error = dict(labels)["error"]
        assert "\n" not in error
        assert len(error) <= 200


STALE_PROMOTION = "7e3a1c52-94b0-4f6e-8d21-0c5b6a7f8e90"
DAY = 86_400.0


@scenario("stale_finish")
async def _a_watched_job_finishing_with_an_old_timestamp(lab: Lab) -> Observed:
    odd = OddStore()
    watched = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    # Queued for a long time, as code jobs can be; still active, so watched.
    odd.pages[STALE_PROMOTION] = [api_job(watched, status="processing", age=30 * DAY)]
    observed = Observed(victim=STALE_PROMOTION, failed_job=watched)
    directory = lab.directory("stale-finish")
    async with odd.serving() as base_url:
        config = odd_config(directory, base_url, [STALE_PROMOTION])
        async with daemon_of(lab, config, observed) as daemon:
            await daemon.wait_for("baseline_loaded")
            # It failed long ago by its own timestamp: e.g. while the monitor was down for
            # longer than state.retention_days.
            odd.pages[STALE_PROMOTION] = [
                api_job(watched, status="failed", error=CODES_LIMIT, age=8 * DAY)
            ]
            await odd.polled(STALE_PROMOTION, 3)
    return observed


@uses("stale_finish")
def test_a_watched_job_that_finished_long_ago_is_reported_not_vanished(matrix: Matrix) -> None:
    # Retention prunes history the monitor already knew as finished; a job it knew as active is
    # news first, whatever its timestamp says.
    seen = matrix["stale_finish"]
    assert seen.named("job_vanished") == []
    assert [e["job_id"] for e in seen.named("job_failed")] == [seen.failed_job]


class EchoStore:
    """An API that quotes what it was sent back in its error texts, secrets included."""

    def __init__(self) -> None:
        self.refuse_credentials = True
        self.refuse_token = False
        self.tokens: list[str] = []
        self.polls = 0
        self.app = web.Application()
        self.app.router.add_post("/oauth/access_token", self._token)
        self.app.router.add_get("/v2/promotions/{pid}/jobs", self._jobs)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.refuse_credentials:
            detail = f"client {form.get('client_id')!r} with secret {form.get('client_secret')!r}"
            return error_response(401, detail)
        token = f"echo-token-{len(self.tokens)}-5be1c7a9d3"
        self.tokens.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    async def _jobs(self, request: web.Request) -> web.Response:
        self.polls += 1
        if self.refuse_token:
            detail = f"malformed header {request.headers.get('Authorization')}"
            return error_response(400, detail)
        return web.json_response({"data": [api_job("e1")], "meta": {"results": {"total": 1}}})


def error_response(status: int, detail: str) -> web.Response:
    body = {"errors": [{"status": status, "title": "Refused", "detail": detail}]}
    return web.json_response(body, status=status)


@scenario("echoed_secrets")
async def _an_api_that_echoes_secrets(lab: Lab) -> Observed:
    echo = EchoStore()
    observed = Observed(victim=ODD_PROMOTION)
    directory = lab.directory("echoed-secrets")
    async with serve_app(echo.app) as base_url:
        config = odd_config(directory, base_url, [ODD_PROMOTION])
        async with daemon_of(lab, config, observed) as daemon:
            await daemon.wait_for("poll_failed", count=2)
            echo.refuse_credentials = False
            await daemon.wait_for("baseline_loaded")
            echo.refuse_token = True
            await daemon.wait_for("poll_failed", lambda e: e["reason"] == "http_4xx", count=2)
            echo.refuse_token = False
            start = echo.polls
            await until(lambda: echo.polls >= start + 2, "polls after the echoes")
            _, metrics_text = await daemon.get("/metrics")
            observed.extra["http"] = metrics_text
    observed.tokens = echo.tokens
    return observed


@uses("echoed_secrets")
def test_secrets_an_api_quotes_back_never_reach_the_logs(matrix: Matrix) -> None:
    seen = matrix["echoed_secrets"]
    assert {e["reason"] for e in seen.named("poll_failed")} == {"auth", "http_4xx"}
    assert seen.tokens
    everything = seen.output + seen.extra["http"]
    assert SECRET not in everything
    for token in seen.tokens:
        assert token not in everything


# state faults


TORN = b'{"version": 1, "promotions": {"'
FOREIGN = b'{"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}'
OLD_FORMAT = b'{"version": 0, "promotions": {"x": {"jobs": {"j": "failed"}}}}'
STATE_FILES = {"torn": TORN, "foreign": FOREIGN, "old_format": OLD_FORMAT}


def state_scenario(kind: str) -> Scenario:
    async def run(lab: Lab) -> Observed:
        store = Store.build(seed=61)
        sim = store.sim
        observed = Observed(victim=store.ids[0], others=store.ids[1:])
        directory = lab.directory(f"state-{kind}")
        state = directory / "state" / "snapshot.json"
        state.parent.mkdir()
        state.write_bytes(STATE_FILES[kind])
        async with running(lab, observed, directory, sim, store.promotions()) as daemon:
            await daemon.wait_for("baseline_loaded", count=3)
            observed.before = await daemon.metrics()
            observed.failed_job = store.fail(observed.victim)
            await daemon.wait_for("job_failed")
            await polled(sim, observed.victim, 2)
        observed.state = read_state(state)
        observed.extra["aside"] = state.with_name("snapshot.json.discarded").read_bytes()
        return observed

    return run


for _kind in STATE_FILES:
    scenario(f"state_{_kind}")(state_scenario(_kind))


@pytest.mark.parametrize("case", [f"state_{kind}" for kind in STATE_FILES])
def test_an_unusable_state_file_is_set_aside_for_a_fresh_baseline(
    matrix: Matrix, case: str
) -> None:
    seen = matrix[case]
    (discarded,) = seen.named("state_discarded")
    assert discarded["level"] == "warning"
    assert discarded["reason"]
    assert seen.extra["aside"] == STATE_FILES[case.removeprefix("state_")]
    if case == "state_old_format":
        # Discarded explicitly, saying why: no older format has a migration.
        assert "version" in discarded["reason"]
    assert len(seen.named("baseline_loaded")) == 3
    # Nothing in the unusable file is taken for news, and the new file is whole.
    assert [e["job_id"] for e in seen.named("job_failed")] == [seen.failed_job]
    assert seen.state is not None
    assert set(seen.state) == {seen.victim, *seen.others}
    assert seen.state[seen.victim].jobs[seen.failed_job].status == "failed"
    assert seen.exit_code == 0


@scenario("state_unwritable")
async def _state_unwritable(lab: Lab) -> Observed:
    store = Store.build(seed=71)
    sim = store.sim
    observed = Observed(victim=store.ids[0], others=store.ids[1:])
    directory = lab.directory("state-unwritable")
    # A regular file where the state directory should be: every write fails, even for root.
    blocker = directory / "blocked"
    blocker.write_text("not a directory", encoding="utf-8")
    state = blocker / "snapshot.json"
    async with running(
        lab, observed, directory, sim, store.promotions(), state={"path": str(state)}
    ) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        await daemon.wait_for("state_write_failed")
        observed.failed_job = store.fail(observed.victim)
        await daemon.wait_for("job_failed")
        await polled(sim, observed.victim, 3)
        observed.during = await daemon.metrics()
        observed.extra["running"] = daemon.process.returncode is None
        # The disk comes back: the next change is written, with everything before it.
        blocker.unlink()
        second = store.fail(observed.others[0])
        observed.extra["second"] = second
        await daemon.wait_for("job_failed", count=2)
        await until(state.exists, "the state file to be written")
        observed.state = read_state(state)
        await polled(sim, observed.victim, 2)
    return observed


@uses("state_unwritable")
def test_a_state_write_that_fails_is_logged_and_never_fatal(matrix: Matrix) -> None:
    seen = matrix["state_unwritable"]
    failures = seen.named("state_write_failed")
    assert failures
    assert all(e["level"] == "error" and e["detail"] for e in failures)
    assert seen.extra["running"]
    assert all(up(seen.during, pid) == 1 for pid in [seen.victim, *seen.others])
    assert [e["job_id"] for e in seen.named("job_failed")] == [
        seen.failed_job,
        seen.extra["second"],
    ]
    assert seen.state is not None
    assert set(seen.state) == {seen.victim, *seen.others}
    assert seen.state[seen.victim].jobs[seen.failed_job].status == "failed"
    (stopped,) = seen.named("monitor_stopped")
    assert stopped["state_saved"] is True
    assert seen.exit_code == 0


# shutdown


@scenario("sigterm_hung_request")
async def _sigterm_during_a_hung_request(lab: Lab) -> Observed:
    store = Store.build(seed=81)
    sim = store.sim
    victim = store.ids[0]
    observed = Observed(victim=victim, others=store.ids[1:])
    directory = lab.directory("sigterm")
    timeout = {"timeout_seconds": 30}
    async with running(lab, observed, directory, sim, store.promotions(), api=timeout) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        observed.failed_job = store.fail(victim)
        await daemon.wait_for("job_failed")
        sim.inject(Fault("timeout", delay=60, path_contains=victim, times=None))
        mark = len(sim.requests)
        await until(
            lambda: any(
                r.status == 0 and r.path.endswith(f"/{victim}/jobs") for r in sim.requests[mark:]
            ),
            "a hung request",
        )
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.process.wait(), 15)
        observed.extra["exit_seconds"] = time.monotonic() - started
    observed.state = read_state(directory / "state" / "snapshot.json")
    return observed


@uses("sigterm_hung_request")
def test_sigterm_during_a_hung_request_exits_0_with_state_saved(matrix: Matrix) -> None:
    seen = matrix["sigterm_hung_request"]
    assert seen.exit_code == 0
    (stopped,) = seen.named("monitor_stopped")
    assert stopped["state_saved"] is True
    assert seen.state is not None
    assert set(seen.state) == {seen.victim, *seen.others}
    assert seen.state[seen.victim].jobs[seen.failed_job].status == "failed"


@uses("sigterm_hung_request")
def test_sigterm_during_a_hung_request_exits_within_5_seconds(matrix: Matrix) -> None:
    seen = matrix["sigterm_hung_request"]
    assert seen.exit_code == 0
    assert seen.extra["exit_seconds"] < 5.0


# secrets


@scenario("secrets_debug")
async def _secrets_at_debug_level(lab: Lab) -> Observed:
    store = Store.build(seed=91, client_secret=SECRET)
    sim = store.sim
    victim, other = store.ids[0], store.ids[1]
    observed = Observed(victim=victim, others=store.ids[1:])
    async with running(
        lab,
        observed,
        lab.directory("secrets"),
        sim,
        store.promotions(),
        log={"level": "debug", "format": "json"},
    ) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        sim.inject(Fault("status", status=401, path_contains=victim))
        sim.inject(Fault("status", status=500, path_contains=other))
        sim.inject(Fault("html", path_contains=other))
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
        observed.extra["http"] = metrics_text + landing
    observed.tokens = sim.issued_tokens()
    return observed


@uses("secrets_debug")
def test_secrets_reach_no_log_line_and_no_metric_at_debug_level(matrix: Matrix) -> None:
    seen = matrix["secrets_debug"]
    assert len(seen.tokens) >= 3
    assert seen.named("job_updated")[0]["level"] == "debug"
    everything = seen.output + seen.extra["http"]
    assert SECRET not in everything
    for token in seen.tokens:
        assert token not in everything
    assert "Bearer " not in everything


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def base_document(tmp_path: Path) -> dict[str, Any]:
    return {
        "api": {"base_url": "https://useast.api.elasticpath.com", "client_id": "client-1"},
        "promotions": [{"id": "ad386702-e780-42c6-b190-0527ad768917"}],
        "state": {"path": str(tmp_path / "state.json")},
    }


@pytest.mark.parametrize("source", ["file", "environment", "secret_file"])
def test_check_config_prints_no_secret(tmp_path: Path, source: str) -> None:
    document = base_document(tmp_path)
    env = {"EPCC_CLIENT_SECRET": ""}
    if source == "file":
        document["api"]["client_secret"] = SECRET
    elif source == "environment":
        env["EPCC_CLIENT_SECRET"] = SECRET
    else:
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        document["api"]["client_secret_file"] = str(secret_file)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_an_invalid_config_does_not_echo_the_secret(tmp_path: Path) -> None:
    document = base_document(tmp_path)
    document["api"]["client_secret"] = SECRET
    document["api"]["client_secret_file"] = str(tmp_path / "also")
    document["api"]["timeout_seconds"] = SECRET
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), env={"EPCC_CLIENT_SECRET": ""})
    assert result.returncode == 2
    assert "api.timeout_seconds" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# config: promotion ids go into URL paths

INJECTIONS = [
    "../../oauth/access_token",
    "ad386702-e780-42c6-b190-0527ad768917/../../oauth",
    "ad386702-e780-42c6-b190-0527ad768917%2F..%2F..%2Foauth",
    "%2e%2e%2f%2e%2e%2foauth",
    "ad386702-e780-42c6-b190-0527ad768917?filter=eq(status,failed)",
    "ad386702-e780-42c6-b190-0527ad768917#fragment",
    "ad386702-e780-42c6-b190-0527ad768917/jobs",
    "ad386702\u2010e780\u201042c6\u2010b190\u20100527ad768917",  # unicode hyphens
]


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_promotion_ids_that_try_to_leave_their_path_are_refused(
    tmp_path: Path, command: str
) -> None:
    document = base_document(tmp_path)
    document["api"]["client_secret"] = SECRET
    document["promotions"] = [{"id": bad} for bad in INJECTIONS]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli(command, "--config", str(path), env={"EPCC_CLIENT_SECRET": ""})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines == [
        f"promo-monitor: promotions[{i}].id: must be a UUID such as "
        "ad386702-e780-42c6-b190-0527ad768917"
        for i in range(len(INJECTIONS))
    ]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
