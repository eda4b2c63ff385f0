"""What the fault tests share: a store with history, a fast daemon, and readers of /metrics."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.models import PromotionSnapshot
from monitor.simulator import Fault, Kind, RecordedRequest, Simulator
from tests.state_support import on_disk
from tests.support import (
    Daemon,
    Sample,
    long_ago,
    series_where,
    started,
    until,
    value,
    write_config,
)

Samples = dict[Sample, float]
Event = dict[str, Any]

# The daemon's client makes 1 + 3 attempts, waiting ~0.5, ~1 and ~2 s (plus jitter) between them.
ATTEMPTS = 4
FAST_API = {"timeout_seconds": 1.0}
FAST_POLL = {"interval_seconds": 0.3}
CODES_LIMIT = "codes limit exceeded"
SECRET = "s3cr3t-never-print-4f1d9c"  # a test credential, and the leak to look for


@dataclass
class Store:
    """Promotions with history (two completed, one failed long ago) and a processing job each."""

    sim: Simulator
    ids: list[str]
    processing: dict[str, str]
    kinds: dict[str, Kind]

    @classmethod
    def build(cls, seed: int, count: int = 3, *, kind: Kind = "promotion", **options: Any) -> Store:
        """`count` promotions; the first (the victim) of `kind`, the others standard ones."""
        sim = Simulator(seed=seed, **options)
        ids: list[str] = []
        processing: dict[str, str] = {}
        kinds: dict[str, Kind] = {}
        for n in range(count):
            pid = sim.add_promotion("promotion" if n else kind)
            kinds[pid] = "promotion" if n else kind
            sim.add_jobs(pid, 2, status="completed", job_type="code_export")
            # Failures long before the monitor started: state, never news.
            sim.add_job(pid, status="failed", error=CODES_LIMIT, created_at=long_ago())
            processing[pid] = sim.add_job(pid, status="processing")
            ids.append(pid)
        return cls(sim, ids, processing, kinds)

    @property
    def victim(self) -> str:
        return self.ids[0]

    @property
    def others(self) -> list[str]:
        return self.ids[1:]

    def known_jobs(self, pid: str) -> set[str]:
        return {job["id"] for job in self.sim.jobs(pid)}

    def fail(self, pid: str) -> str:
        job = self.processing[pid]
        self.sim.set_job_status(pid, job, "failed", error=CODES_LIMIT)
        return job


@contextlib.asynccontextmanager
async def watching(
    store: Store,
    directory: Path,
    *,
    api: Mapping[str, Any] | None = None,
    poll: Mapping[str, Any] | None = None,
    names: bool = True,
    **sections: Mapping[str, Any],
) -> AsyncIterator[Daemon]:
    """Serve the store and run the daemon against it, polling fast; stops it on the way out.

    With `names`, waits for the startup's name lookups too: a fault injected while one is
    still due would hit the lookup as well as the polls the test is about.
    """
    async with started(store.sim):
        config = write_config(
            directory,
            store.sim,
            [{"id": pid, "kind": store.kinds[pid]} for pid in store.ids],
            api={**FAST_API, **(api or {})},
            poll={**FAST_POLL, **(poll or {})},
            **sections,
        )
        daemon = await Daemon.start(config)
        try:
            if names:
                await until(
                    lambda: all(looked_up(store.sim, pid) for pid in store.ids), "name lookups"
                )
            yield daemon
        finally:
            await daemon.stop()


def read_state(directory: Path) -> dict[str, PromotionSnapshot]:
    return on_disk(directory / "state" / "monitor.db")


def looked_up(sim: Simulator, pid: str) -> bool:
    """The simulator has answered a request for promotion `pid` itself (its name)."""
    return any(r.path.endswith(f"/{pid}") and r.status != 0 for r in sim.requests)


def answered(sim: Simulator, pid: str) -> int:
    """Jobs requests of `pid` the simulator has answered so far."""
    return sum(1 for r in sim.requests if r.path.endswith(f"/{pid}/jobs") and r.status != 0)


async def polled(sim: Simulator, pid: str, times: int = 2) -> None:
    """Wait until `pid` has been polled `times` more times."""
    start = answered(sim, pid)
    await until(lambda: answered(sim, pid) >= start + times, f"{times} more polls of {pid}")


def recovered_since(sim: Simulator, mark: int, pid: str) -> bool:
    """A request the fault spoiled, then a good answer to `pid`'s jobs request."""
    later = sim.requests[mark:]
    spoiled = next((i for i, r in enumerate(later) if r.status not in (0, 200)), None)
    if spoiled is None:
        return False
    return any(r.status == 200 and r.path.endswith(f"/{pid}/jobs") for r in later[spoiled + 1 :])


def jobs_requests(requests: list[RecordedRequest], pid: str) -> list[RecordedRequest]:
    return [r for r in requests if r.path.endswith(f"/{pid}/jobs")]


def of(pid: str) -> Callable[[Event], bool]:
    """An event predicate: the event is about promotion `pid`."""
    return lambda event: event.get("promotion_id") == pid


def up(samples: Samples, pid: str) -> float | None:
    return value(samples, "epcc_monitor_up", promotion_id=pid)


def jobs_gauge(samples: Samples, pid: str) -> dict[tuple[str, str], float]:
    """epcc_promotion_jobs of one promotion, by (job_type, status)."""
    found = series_where(samples, "epcc_promotion_jobs", promotion_id=pid)
    return {(label["job_type"], label["status"]): v for label, v in found}


def poll_errors(samples: Samples, pid: str) -> dict[str, float]:
    found = series_where(samples, "epcc_monitor_poll_errors_total", promotion_id=pid)
    return {label["reason"]: v for label, v in found}


def retries(samples: Samples, endpoint: str, reason: str) -> float:
    return value(samples, "epcc_monitor_api_retries_total", endpoint=endpoint, reason=reason) or 0


def requests_metric(samples: Samples, endpoint: str) -> dict[str, float]:
    """epcc_monitor_api_requests_total of one endpoint, by code."""
    found = series_where(samples, "epcc_monitor_api_requests_total", endpoint=endpoint)
    return {label["code"]: v for label, v in found}


def store_codes(requests: list[RecordedRequest], endpoint: str) -> Counter[str]:
    """What the simulator answered on one endpoint, by code ('error' when nothing was sent)."""
    prefix = "/oauth/" if endpoint == "token" else "/v2/promotions/"
    return Counter(str(r.status or "error") for r in requests if r.path.startswith(prefix))


def assert_every_spoiled_request_counted(
    samples: Samples, requests: list[RecordedRequest], endpoint: str
) -> None:
    """Every request the store saw with the fault is counted, under the endpoint it was for."""
    counted = requests_metric(samples, endpoint)
    for code, seen_by_store in store_codes(requests, endpoint).items():
        if code != "200":
            assert counted.get(code) == seen_by_store, code


def assert_nothing_known_is_lost(
    before: Samples,
    during: Samples,
    state: dict[str, PromotionSnapshot],
    pid: str,
    known_jobs: set[str],
) -> None:
    """What the monitor knew stays known: gauges keep their values, the snapshot its jobs."""
    assert jobs_gauge(during, pid) == jobs_gauge(before, pid)
    assert jobs_gauge(during, pid), "the victim's jobs left /metrics"
    assert set(state[pid].jobs) == known_jobs


def assert_failed_polls(daemon: Daemon, pid: str, reason: str, http_status: int | None) -> None:
    """`pid`'s polls failed, each logged once as a warning with its reason and a detail."""
    failed_polls = daemon.named("poll_failed", promotion_id=pid)
    assert failed_polls, f"no poll_failed event for {pid}"
    for event in failed_polls:
        assert event["reason"] == reason
        assert event.get("http_status") == http_status
        assert event["level"] == "warning"
        assert event["detail"]


def assert_untouched(during: Samples, after: Samples, pids: list[str]) -> None:
    """A fault belongs to its victim alone: these promotions were up throughout."""
    for pid in pids:
        assert up(during, pid) == 1
        assert up(after, pid) == 1
        assert poll_errors(after, pid) == {}


@dataclass(frozen=True)
class AroundFault:
    """What one fault on the victim left to judge: /metrics before, during and after it, the
    snapshot and the victim's jobs while it was on, and the job failed once it was gone."""

    before: Samples
    during: Samples
    state: dict[str, PromotionSnapshot]
    known_jobs: set[str]
    after: Samples
    failed_job: str


async def failed_then_recovered(
    daemon: Daemon, store: Store, directory: Path, before: Samples
) -> AroundFault:
    """The victim's poll fails; then the fault is cleared, a job fails, and the victim is back."""
    victim = store.victim
    await daemon.wait_for("poll_failed", of(victim), timeout=30)
    during = await daemon.metrics()
    state = read_state(directory)
    known = store.known_jobs(victim)
    store.sim.clear_faults()
    failed_job = store.fail(victim)
    await daemon.wait_for("job_failed", timeout=30)
    await daemon.wait_for_metric(lambda s: up(s, victim) == 1, timeout=30)
    await polled(store.sim, victim, 3)
    return AroundFault(before, during, state, known, await daemon.metrics(), failed_job)


async def ridden_out(
    store: Store, directory: Path, *faults: Fault, revoke_tokens: bool = False
) -> tuple[Daemon, AroundFault]:
    """Once the daemon's baseline is in, `faults` (the tokens revoked first, with
    `revoke_tokens`) spoil a request, then the victim's poll succeeds; then a job fails.
    Returns the daemon, stopped, and what it showed."""
    victim = store.victim
    async with watching(store, directory) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        before, mark = await daemon.metrics(), len(store.sim.requests)
        if revoke_tokens:
            store.sim.revoke_tokens()
        for fault in faults:
            store.sim.inject(fault)
        await until(lambda: recovered_since(store.sim, mark, victim), "a retried poll")
        await polled(store.sim, victim, 1)
        during = await daemon.metrics()
        state = read_state(directory)
        failed_job = store.fail(victim)
        await daemon.wait_for("job_failed", timeout=30)
        await polled(store.sim, victim, 3)
        known = store.known_jobs(victim)
        after = await daemon.metrics()
    return daemon, AroundFault(before, during, state, known, after, failed_job)


def assert_only_the_victims_polls_failed(
    daemon: Daemon, store: Store, seen: AroundFault, reason: str, http_status: int | None
) -> None:
    """The victim's polls failed for `reason` and nothing it knew was lost; the others were
    untouched; once the fault was gone its new failure was reported once, and it was back."""
    victim = store.victim
    assert daemon.process.returncode == 0
    assert daemon.named("job_vanished") == []
    assert_nothing_known_is_lost(seen.before, seen.during, seen.state, victim, seen.known_jobs)
    assert up(seen.during, victim) == 0
    assert poll_errors(seen.during, victim).get(reason, 0) >= 1
    assert set(poll_errors(seen.after, victim)) == {reason}
    assert {e["promotion_id"] for e in daemon.named("poll_failed")} == {victim}
    assert_failed_polls(daemon, victim, reason, http_status)
    assert_untouched(seen.during, seen.after, store.others)
    (failed,) = daemon.named("job_failed")
    assert (failed["job_id"], failed["error"]) == (seen.failed_job, CODES_LIMIT)
    assert up(seen.after, victim) == 1


def assert_no_poll_failed(daemon: Daemon, store: Store, seen: AroundFault) -> None:
    """No poll failed and nothing was lost or reported but the one new failure."""
    victim = store.victim
    assert daemon.process.returncode == 0
    assert daemon.named("job_vanished") == []
    assert daemon.named("poll_failed") == []
    assert_nothing_known_is_lost(seen.before, seen.during, seen.state, victim, seen.known_jobs)
    assert up(seen.during, victim) == 1
    assert poll_errors(seen.after, victim) == {}
    assert_untouched(seen.during, seen.after, store.others)
    (failed,) = daemon.named("job_failed")
    assert (failed["job_id"], failed["error"]) == (seen.failed_job, CODES_LIMIT)
    assert up(seen.after, victim) == 1


def assert_retried(daemon: Daemon, seen: AroundFault, endpoint: str, reason: str) -> None:
    """Requests to `endpoint` were retried for `reason` alone, each counted, within the attempts."""
    retried = daemon.named("request_retried")
    assert retried
    assert {(e["endpoint"], e["reason"]) for e in retried} == {(endpoint, reason)}
    assert retries(seen.after, endpoint, reason) == len(retried)
    assert all(1 <= e["attempt"] <= ATTEMPTS - 1 for e in retried)
