"""Three sidecar replicas (`promo-monitor run` subprocesses) electing one poller through a Lease.

The Kubernetes API is tests/kube_fake.py on 127.0.0.1, reached through a kubeconfig per replica
(each with its own bearer token, so the fake can cut one replica off); Elastic Path is the
simulator. Durations are small: lease 3 s, renew deadline 2 s, retry period 0.5 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.simulator import Simulator
from tests.kube_fake import FakeLeaseApi, write_kubeconfig
from tests.support import Daemon, Sample, series, serving, value, write_config

LEASE_DURATION = 3
RENEW_DEADLINE = 2.0
RETRY_PERIOD = 0.5
NAMESPACE = "shop"
LEASE = "promo-monitor"
PROMOTION_SERIES = (
    "epcc_promotion_jobs",
    "epcc_promotion_job_failures_total",
    "epcc_promotion_job_failed_info",
    "epcc_monitor_up",
    "epcc_monitor_last_success_timestamp_seconds",
)


def at(event: Mapping[str, Any]) -> float:
    """An event's timestamp as Unix time."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def leader_value(samples: Mapping[Sample, float]) -> float | None:
    return value(samples, "epcc_monitor_leader")


def api_requests(samples: Mapping[Sample, float]) -> float:
    return sum(series(samples, "epcc_monitor_api_requests_total").values())


@dataclass
class Workload:
    """A simulated store, a fake API server, and the replicas of one workload."""

    sim: Simulator
    fake: FakeLeaseApi
    api_url: str
    directory: Path
    promotion: str
    processing: list[str]  # jobs of `promotion` that are processing now
    replicas: dict[str, Daemon] = field(default_factory=dict)
    everyone: list[Daemon] = field(default_factory=list)  # restarted ones too

    async def start(
        self,
        identity: str,
        *,
        timing: Mapping[str, float] | None = None,
        again: bool = False,
        **poll: Any,
    ) -> Daemon:
        """Start a replica; `again`: the same pod restarted, with its old state."""
        home = self.directory / identity
        home.mkdir(exist_ok=again)
        kubeconfig = write_kubeconfig(
            home / "kubeconfig", self.api_url, self.fake.token_for(identity)
        )
        config = write_config(
            home,
            self.sim,
            [{"id": self.promotion}],
            coordination={
                "mode": "lease",
                "lease_name": LEASE,
                "namespace": NAMESPACE,
                "identity": identity,
                "lease_duration_seconds": LEASE_DURATION,
                "renew_deadline_seconds": RENEW_DEADLINE,
                "retry_period_seconds": RETRY_PERIOD,
                **(timing or {}),
            },
            poll={"interval_seconds": 0.5, **poll},
        )
        daemon = await Daemon.start(config, env={"KUBECONFIG": str(kubeconfig)})
        self.replicas[identity] = daemon
        self.everyone.append(daemon)
        return daemon

    async def start_all(self, *identities: str, **poll: Any) -> None:
        await asyncio.gather(*(self.start(identity, **poll) for identity in identities))

    async def polling(self, *identities: str, **poll: Any) -> Daemon:
        """Start the replicas; returns the one elected, once it has polled (its baseline)."""
        await self.start_all(*identities, **poll)
        leader = await self.leader()
        await leader.wait_for("baseline_loaded")
        return leader

    async def leader(self, *, timeout: float = 15.0, besides: Daemon | None = None) -> Daemon:
        """The replica that logs leader_elected (the first one other than `besides`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for daemon in self.replicas.values():
                if daemon is not besides and daemon.named("leader_elected"):
                    return daemon
            await asyncio.sleep(0.05)
        raise AssertionError("no replica became the leader in time")

    def identity(self, daemon: Daemon) -> str:
        return next(name for name, d in self.replicas.items() if d is daemon)

    def job_failed(self, job_id: str) -> list[dict[str, Any]]:
        return [e for d in self.everyone for e in d.named("job_failed", job_id=job_id)]

    async def elected_after(self, moment: float, timeout: float = 15.0) -> Daemon:
        """The replica that logs leader_elected after `moment` (Unix time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for daemon in self.everyone:
                if any(at(e) > moment for e in daemon.named("leader_elected")):
                    return daemon
            await asyncio.sleep(0.05)
        raise AssertionError("no replica became the leader in time")

    async def stop(self) -> None:
        self.fake.cut_off.clear()
        await asyncio.gather(*(d.stop() for d in self.everyone))


@pytest.fixture
async def workload(tmp_path: Path) -> AsyncIterator[Workload]:
    sim = Simulator(seed=15)
    promotion = sim.add_promotion("promotion", name="Handover sale")
    sim.add_jobs(promotion, 5, status="completed")
    processing = [sim.add_job(promotion, status="processing") for _ in range(3)]
    await sim.start()
    fake = FakeLeaseApi()
    async with serving(fake.app()) as api_url:
        world = Workload(sim, fake, api_url, tmp_path, promotion, processing)
        try:
            yield world
        finally:
            await world.stop()
    await sim.stop()


async def test_three_replicas_one_polls_and_the_others_stand_by_ready(
    workload: Workload,
) -> None:
    leader = await workload.polling("pod-a", "pod-b", "pod-c")
    await asyncio.sleep(2 * RETRY_PERIOD + 1.0)  # several polls and renewals
    followers = [d for d in workload.replicas.values() if d is not leader]

    samples = await leader.metrics()
    assert leader_value(samples) == 1
    assert api_requests(samples) > 0
    assert value(samples, "epcc_monitor_up", promotion_id=workload.promotion) == 1
    # Names are looked up as soon as it leads, not a discovery interval (300 s) later.
    assert series(samples, "epcc_promotion_info") != {}
    for follower in followers:
        samples = await follower.metrics()
        assert leader_value(samples) == 0
        assert api_requests(samples) == 0, "a follower called Elastic Path"
        for name in PROMOTION_SERIES:
            assert series(samples, name) == {}, name
        assert value(samples, "epcc_monitor_build_info", version="0.1.0") == 1
        assert await follower.get("/readyz") == (200, "ready\n")
        assert await follower.get("/healthz") == (200, "ok\n")
        assert follower.named("leader_elected") == []
        assert follower.named("baseline_loaded") == []
    assert workload.fake.holder(NAMESPACE, LEASE) == workload.identity(leader)
    elected = leader.named("leader_elected")[0]
    assert (elected["identity"], elected["lease"]) == (workload.identity(leader), LEASE)


async def test_sigkill_of_the_leader_hands_over_within_lease_duration(
    workload: Workload,
) -> None:
    leader = await workload.polling("pod-a", "pod-b", "pod-c")
    await asyncio.sleep(1.0)
    killed = time.time()
    await leader.stop(signal.SIGKILL)
    successor = await workload.leader(besides=leader, timeout=10)
    takeover = at(successor.named("leader_elected")[0]) - killed
    print(f"takeover after SIGKILL: {takeover:.2f} s")
    # Expiry is judged from when a follower last saw the lease renewed (up to a retry period
    # after the kill), then its next attempt (up to another retry period).
    assert takeover <= LEASE_DURATION + 2 * RETRY_PERIOD + 0.5
    assert takeover >= LEASE_DURATION - RETRY_PERIOD  # it waited for the lease to expire
    await successor.wait_for("baseline_loaded")  # a fresh baseline: it never polled before
    samples = await successor.wait_for_metric(
        lambda s: value(s, "epcc_monitor_up", promotion_id=workload.promotion) == 1
    )
    assert leader_value(samples) == 1
    third = next(d for d in workload.replicas.values() if d not in (leader, successor))
    assert leader_value(await third.metrics()) == 0


async def test_a_failure_during_the_handover_is_reported_once(workload: Workload) -> None:
    """Needs poll.baseline_lookback_seconds (issue #10): the successor's baseline reports jobs
    that failed within the lookback window, so nothing failing during the handover is lost."""
    leader = await workload.polling("pod-a", "pod-b", "pod-c", baseline_lookback_seconds=120)
    before, during, after = workload.processing
    workload.sim.set_job_status(workload.promotion, before, "failed", error="codes limit exceeded")
    await leader.wait_for("job_failed")
    await leader.stop(signal.SIGKILL)
    workload.sim.set_job_status(workload.promotion, during, "failed", error="database timeout")
    successor = await workload.leader(besides=leader, timeout=10)
    await successor.wait_for("job_failed", lambda e: e["job_id"] == during)
    workload.sim.set_job_status(workload.promotion, after, "failed", error="export failed")
    await successor.wait_for("job_failed", lambda e: e["job_id"] == after)
    await asyncio.sleep(2.0)  # more polls: nothing is reported again
    assert len(workload.job_failed(during)) == 1
    assert len(workload.job_failed(after)) == 1
    # Reported by the old leader only: the new one found it on the Lease's handover record.
    assert len(workload.job_failed(before)) == 1
    assert len(leader.named("job_failed", job_id=before)) == 1


async def test_a_leader_cut_off_from_the_api_server_stops_polling_before_anyone_takes_over(
    workload: Workload,
) -> None:
    leader = await workload.polling("pod-a", "pod-b", "pod-c")
    await asyncio.sleep(1.0)
    cut = time.time()
    workload.fake.cut_off.add(workload.identity(leader))  # its requests now hang
    lost = await leader.wait_for("leader_lost", timeout=10)
    fenced = at(lost) - cut
    print(f"fenced after the cut: {fenced:.2f} s")
    assert lost["reason"] == "renew_deadline_passed"
    assert lost["identity"] == workload.identity(leader)
    assert fenced <= RENEW_DEADLINE + 0.3
    successor = await workload.leader(besides=leader, timeout=10)
    elected = at(successor.named("leader_elected")[0])
    # Quiet before the lease could be another's: nobody polled between the two.
    assert at(lost) < elected
    quiet = [r for r in workload.sim.requests if at(lost) + 0.2 < r.at < elected]
    assert quiet == [], f"{len(quiet)} requests to Elastic Path while nobody held the lease"
    # The old leader stays ready, stands by, and polls no more.
    samples = await leader.metrics()
    assert leader_value(samples) == 0
    assert series(samples, "epcc_monitor_up") == {}
    requests_then = api_requests(samples)
    await asyncio.sleep(1.5)
    assert api_requests(await leader.metrics()) == requests_then
    assert await leader.get("/readyz") == (200, "ready\n")
    assert await leader.get("/healthz") == (200, "ok\n")


async def test_sigterm_releases_the_lease_for_a_quick_handover(workload: Workload) -> None:
    leader = await workload.polling("pod-a", "pod-b", "pod-c")
    terminated = time.time()
    assert await leader.stop(signal.SIGTERM) == 0
    successor = await workload.leader(besides=leader, timeout=10)
    handover = at(successor.named("leader_elected")[0]) - terminated
    print(f"handover after SIGTERM: {handover:.2f} s")
    (lost,) = leader.named("leader_lost")
    assert lost["reason"] == "released"
    assert leader.named("monitor_stopped")[0]["state_saved"] is True
    # A retry period, not a lease duration.
    assert handover < LEASE_DURATION - RETRY_PERIOD


async def test_sigterm_with_the_api_server_unreachable_still_exits_within_5_seconds(
    workload: Workload,
) -> None:
    # Production timings: a lease request may take up to renew deadline - retry period = 8 s.
    timing = {"lease_duration_seconds": 15, "renew_deadline_seconds": 10, "retry_period_seconds": 2}
    leader = await workload.start("pod-a", timing=timing)
    await leader.wait_for("leader_elected")
    await leader.wait_for("baseline_loaded")
    workload.fake.cut_off.add("pod-a")  # the release request will hang
    terminated = time.monotonic()
    assert await leader.stop(signal.SIGTERM) == 0
    assert time.monotonic() - terminated < 5.0
    (lost,) = leader.named("leader_lost")
    assert lost["reason"] == "released"
    assert leader.named("monitor_stopped")[0]["state_saved"] is True


def failures_counted(samples: Mapping[Sample, float], promotion: str) -> float:
    name = "epcc_promotion_job_failures_total"
    return value(samples, name, promotion_id=promotion, job_type="code_generate") or 0.0


async def test_a_rollout_a_crash_and_a_flap_back_report_six_failures_six_times(
    workload: Workload,
) -> None:
    """Fresh state per pod; one failure before and one in the gap of each leader change."""
    sim, pid = workload.sim, workload.promotion
    jobs = [sim.add_job(pid, status="processing") for _ in range(6)]
    counted: dict[str, float] = {}  # each leader's failure counter, read while it leads

    async def fail(n: int, reporter: Daemon | None = None) -> None:
        sim.set_job_status(pid, jobs[n], "failed", error=f"failure {n}")
        if reporter is not None:
            await reporter.wait_for("job_failed", lambda e: e["job_id"] == jobs[n])

    async def count(leader: Daemon, name: str) -> None:
        counted[name] = failures_counted(await leader.metrics(), pid)

    first = await workload.polling("pod-a", "pod-b", "pod-c")
    await fail(0, first)
    # A rolling update: the new pod is up, then the old leader is terminated.
    await workload.start("pod-d")
    await count(first, "first")
    moment = time.time()
    assert await first.stop(signal.SIGTERM) == 0
    await fail(1)
    second = await workload.elected_after(moment)
    await second.wait_for("job_failed", lambda e: e["job_id"] == jobs[1])
    await fail(2, second)
    # A crash of the leader.
    await count(second, "second")
    moment = time.time()
    await second.stop(signal.SIGKILL)
    await fail(3)
    third = await workload.elected_after(moment)
    await third.wait_for("job_failed", lambda e: e["job_id"] == jobs[3])
    await fail(4, third)
    # A flap back: the crashed pod restarts with its old state and leads again (the others
    # are cut off from the API server).
    restarted = await workload.start(workload.identity(second), again=True)
    await count(third, "third")
    moment = time.time()
    for identity, daemon in workload.replicas.items():
        if daemon is not restarted:
            workload.fake.cut_off.add(identity)
    await third.wait_for("leader_lost")
    await fail(5)
    assert await workload.elected_after(moment) is restarted
    await restarted.wait_for("job_failed", lambda e: e["job_id"] == jobs[5])
    await restarted.polled(pid, 3)
    await count(restarted, "restarted")

    reported = sorted(e["job_id"] for d in workload.everyone for e in d.named("job_failed"))
    outputs = "\n".join(d.output[-3000:] for d in workload.everyone)
    assert reported == sorted(jobs), outputs
    assert sum(counted.values()) == 6, counted
    assert restarted.named("leader_elected")[0]["kept_state"] is False
    assert [e for d in workload.everyone for e in d.named("handover_not_written")] == []


async def test_a_job_last_seen_active_that_failed_in_the_gap_is_reported_whatever_its_times(
    workload: Workload,
) -> None:
    """A store whose jobs carry no timestamps: at a fresh baseline a failure of unknown age is
    history; only the handover record tells the successor this one was processing."""
    workload.sim.timestamps = "missing"
    leader = await workload.polling("pod-a", "pod-b")
    gap = workload.processing[0]
    await asyncio.sleep(3 * RETRY_PERIOD)  # renewals carry the record
    moment = time.time()
    await leader.stop(signal.SIGKILL)
    workload.sim.set_job_status(workload.promotion, gap, "failed", error="database timeout")
    successor = await workload.elected_after(moment)
    reported = await successor.wait_for("job_failed")
    await successor.polled(workload.promotion, 3)
    assert (reported["job_id"], reported["during_baseline"]) == (gap, True)
    assert len(workload.job_failed(gap)) == 1
