"""Leader election against a fake Lease API over HTTP, with an injected clock.

The elector talks to the fake through the real KubernetesLeases client (kubernetes_asyncio,
configured from a kubeconfig or an in-cluster service account); only time is simulated.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from monitor.coordination import (
    Fence,
    LeaderElector,
    LeaseConflictError,
    LeaseRecord,
    LeaseUnavailableError,
    Timing,
)
from monitor.events import LeaderElected, LeaderLost, LeaseUnavailable
from monitor.handover import ANNOTATION, CAP, Carried, Handover
from monitor.kube import KubernetesLeases
from monitor.models import Change, ChangeKind, Job, PromotionSnapshot
from monitor.settings import ConfigError
from monitor.state import SnapshotStore
from tests.kube_fake import LEASES, FakeLeaseApi, write_kubeconfig
from tests.support import FakeClock, Recorder, serving

NAMESPACE = "shop"
LEASE = "promo-monitor"
TIMING = Timing(lease_duration=3, renew_deadline=2.0, retry_period=0.5)


@dataclass
class Reports:
    """What one candidate's elector reported (the ElectionReports a replica's Lifecycle takes)."""

    events: Recorder
    kept_states: list[bool] = field(default_factory=list)  # kept_state of each election
    found: list[str | None] = field(default_factory=list)  # the handover record each found
    losses: int = 0

    def elected(self, news: LeaderElected, handover: str | None) -> None:
        self.kept_states.append(news.kept_state)
        self.found.append(handover)
        self.events.emit(news)

    def lost(self, news: LeaderLost) -> None:
        self.losses += 1
        self.events.emit(news)

    def unavailable(self, news: LeaseUnavailable) -> None:
        self.events.emit(news)


@dataclass
class Candidate:
    elector: LeaderElector
    leases: KubernetesLeases
    reports: Reports
    store: SnapshotStore
    handover: Handover

    @property
    def elected(self) -> list[bool]:
        return self.reports.kept_states

    @property
    def lost(self) -> int:
        return self.reports.losses


@dataclass
class Cluster:
    fake: FakeLeaseApi
    url: str
    directory: Path
    clock: FakeClock
    candidates: list[Candidate] = field(default_factory=list)
    events: Recorder = field(default_factory=Recorder)

    async def candidate(self, identity: str, cap: int = CAP, lookback: float = 900.0) -> Candidate:
        kubeconfig = write_kubeconfig(
            self.directory / f"{identity}.kubeconfig", self.url, self.fake.token_for(identity)
        )
        leases = KubernetesLeases(
            namespace=NAMESPACE, name=LEASE, timeout=1.0, env={"KUBECONFIG": str(kubeconfig)}
        )
        await leases.open()
        reports = Reports(self.events)
        store = SnapshotStore(self.directory / f"{identity}.db")
        handover = Handover(
            store,
            lease=LEASE,
            clock=self.clock,
            lookback=lookback,
            patience=TIMING.renew_deadline,
            cap=cap,
        )
        elector = LeaderElector(
            leases,
            identity,
            TIMING,
            Fence(TIMING.renew_deadline, self.clock),
            reports,
            record=handover,
            clock=self.clock,
        )
        result = Candidate(elector, leases, reports, store, handover)
        self.candidates.append(result)
        return result

    def spec(self) -> dict[str, object]:
        lease = self.fake.leases[(NAMESPACE, LEASE)]
        spec: dict[str, object] = lease["spec"]
        return spec


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    fake = FakeLeaseApi()
    async with serving(fake.app()) as url:
        world = Cluster(fake, url, tmp_path, FakeClock(1000.0))
        yield world
        for candidate in world.candidates:
            await candidate.leases.close()


async def test_first_candidate_creates_the_lease_and_leads(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    assert not a.elector.fence.allows()
    assert await a.elector.try_acquire_or_renew()
    assert a.elector.fence.allows()
    assert a.elected == [True]
    spec = cluster.spec()
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseDurationSeconds"] == 3
    assert spec["leaseTransitions"] == 0
    # MicroTime as the API server wants it: six fractional digits, UTC.
    assert str(spec["renewTime"]).endswith("Z")
    assert len(str(spec["renewTime"]).split(".")[1]) == len("000000Z")
    assert [(r.method, r.identity, r.status) for r in cluster.fake.requests] == [
        ("GET", "pod-a", 404),
        ("POST", "pod-a", 201),
    ]


async def test_a_follower_waits_until_it_has_seen_the_lease_unrenewed_for_its_duration(
    cluster: Cluster,
) -> None:
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    assert await a.elector.try_acquire_or_renew()
    cluster.clock.now += 0.1
    assert not await b.elector.try_acquire_or_renew()  # b first sees a's record now
    assert not b.elector.fence.allows()
    # a is gone. Expiry is judged from when b saw the record change, on b's clock.
    cluster.clock.now += 2.99
    assert not await b.elector.try_acquire_or_renew()
    assert cluster.spec()["holderIdentity"] == "pod-a"
    cluster.clock.now += 0.02
    assert await b.elector.try_acquire_or_renew()
    assert b.elected == [False]  # another replica polled since: start from a fresh baseline
    spec = cluster.spec()
    assert spec["holderIdentity"] == "pod-b"
    assert spec["leaseTransitions"] == 1


async def test_a_renewed_lease_is_never_taken(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    for _ in range(20):
        assert await a.elector.try_acquire_or_renew()
        assert not await b.elector.try_acquire_or_renew()
        cluster.clock.now += TIMING.retry_period
    assert cluster.spec()["holderIdentity"] == "pod-a"
    assert a.elected == [True]
    assert b.elected == []


async def test_the_fence_counts_from_the_last_successful_renewal(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    assert await a.elector.try_acquire_or_renew()  # renewed at t0
    t0 = cluster.clock.now
    cluster.fake.tokens.clear()  # the API server now refuses every request
    cluster.clock.now = t0 + 1.0
    assert not await a.elector.try_acquire_or_renew()  # the first failed attempt
    cluster.clock.now = t0 + 1.99
    assert a.elector.fence.allows()
    a.elector.notice_fence()
    assert a.lost == 0
    # Closed at t0 + renew_deadline, not at (first failure) + renew_deadline = t0 + 3.0.
    cluster.clock.now = t0 + 2.0
    assert not a.elector.fence.allows()
    a.elector.notice_fence()
    assert a.lost == 1
    assert not a.elector.leading


async def test_a_leader_fenced_off_keeps_its_state_when_it_gets_its_own_lease_back(
    cluster: Cluster,
) -> None:
    a = await cluster.candidate("pod-a")
    assert await a.elector.try_acquire_or_renew()
    token = next(iter(cluster.fake.tokens))
    identity = cluster.fake.tokens.pop(token)
    cluster.clock.now += 2.5
    assert not await a.elector.try_acquire_or_renew()
    assert a.lost == 1
    cluster.fake.tokens[token] = identity  # the API server is back; nobody took the lease
    assert await a.elector.try_acquire_or_renew()
    assert a.elected == [True, True]
    assert cluster.spec()["leaseTransitions"] == 0


async def test_release_hands_over_without_waiting_for_expiry(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    assert await a.elector.try_acquire_or_renew()
    assert not await b.elector.try_acquire_or_renew()
    await a.elector.release()
    assert not a.elector.fence.allows()
    assert a.lost == 1
    assert cluster.spec()["holderIdentity"] == ""
    assert await b.elector.try_acquire_or_renew()  # same instant: no expiry to wait for
    assert cluster.spec()["holderIdentity"] == "pod-b"


async def test_a_write_with_a_stale_resource_version_is_a_conflict(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    created = await a.leases.create(LeaseRecord("pod-a", 3, None, None, 0))
    renewed = await a.leases.replace(created)
    assert renewed.resource_version != created.resource_version
    with pytest.raises(LeaseConflictError):
        await a.leases.replace(created)


async def test_a_refused_token_is_unavailable_and_never_echoed(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    cluster.fake.tokens.clear()
    with pytest.raises(LeaseUnavailableError) as caught:
        await a.leases.get()
    assert str(caught.value) == "HTTP 401 Unauthorized"


async def test_in_cluster_config_uses_the_service_account(tmp_path: Path) -> None:
    """KUBERNETES_SERVICE_HOST/PORT, the token and CA the kubelet mounts, over TLS."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    authority.cert_pem.write_to_path(str(account / "ca.crt"))
    fake = FakeLeaseApi()
    (account / "token").write_text(fake.token_for("pod-a"), encoding="utf-8")
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context).start()
    port = runner.addresses[0][1]
    leases = KubernetesLeases(
        namespace=NAMESPACE,
        name=LEASE,
        timeout=2.0,
        env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)},
        service_account=account,
    )
    try:
        await leases.open()
        assert await leases.get() is None
        await leases.create(LeaseRecord("pod-a", 3, None, None, 0))
        record = await leases.get()
    finally:
        await leases.close()
        await runner.cleanup()
    assert record is not None
    assert record.holder == "pod-a"
    assert [r.identity for r in fake.requests] == ["pod-a"] * 3


async def test_no_way_to_the_api_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    leases = KubernetesLeases(namespace=NAMESPACE, name=LEASE, timeout=1.0, env={})
    with pytest.raises(ConfigError) as caught:
        await leases.open()
    (problem,) = caught.value.problems
    assert problem.startswith("coordination: no Kubernetes API to reach")


def test_a_monitor_without_coordination_does_not_load_the_kubernetes_client() -> None:
    # kubernetes_asyncio costs ~35 MB of RSS: a monitor that does not elect must not pay for it.
    probe = (
        "import sys, monitor.app, monitor.cli; "
        "print(any(m.startswith('kubernetes_asyncio') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


async def test_a_leader_failing_to_renew_says_so_and_a_follower_only_at_debug(
    cluster: Cluster,
) -> None:
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    assert await a.elector.try_acquire_or_renew()
    cluster.fake.tokens.clear()  # the API server now refuses every request
    assert not await b.elector.try_acquire_or_renew()
    assert not await a.elector.try_acquire_or_renew()
    seen = [(e.NAME, e.LEVEL) for e in cluster.events.events if e.NAME == "lease_unavailable"]
    # the follower's attempt, then the leader's failed renewal: its fence is closing
    assert seen == [("lease_unavailable", "debug"), ("lease_unavailable", "warning")]


# the handover record (monitor.handover) on the Lease


def failed(pid: str, job_id: str) -> Change:
    before = Job(job_id, "code_generate", "processing", None, 1.0, 1.0)
    return Change(ChangeKind.STATUS_CHANGED, pid, replace(before, status="failed"), before)


def annotation(cluster: Cluster) -> dict[str, Any]:
    lease = cluster.fake.leases[(NAMESPACE, LEASE)]
    found: dict[str, Any] = json.loads(lease["metadata"]["annotations"][ANNOTATION])
    return found


async def test_the_leader_keeps_its_record_on_the_lease_and_its_successor_reads_it(
    cluster: Cluster,
) -> None:
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    assert await a.elector.try_acquire_or_renew()
    a.store.owe("p1", [failed("p1", "j1")], cluster.clock.now)
    a.store.put(PromotionSnapshot("p1", {"j2": Job("j2", "code_export", "pending", None, 1, 1)}))
    cluster.clock.now += 5
    assert await a.elector.try_acquire_or_renew()  # a renewal carries it
    record = {
        "v": 1,
        "at": 1005,
        "failed": {"p1": {"j1": 5}},  # reported 5 s before the record was written
        "active": {"p1": {"j2": "pending"}},
    }
    assert annotation(cluster) == record
    await a.elector.release()
    assert annotation(cluster) == record  # (released in the same second)
    assert await b.elector.try_acquire_or_renew()
    assert annotation(cluster) == record  # kept until b has read it and writes its own
    assert b.reports.found == [json.dumps(record, separators=(",", ":"))]


async def test_a_new_failure_wakes_a_write_and_waits_for_it(cluster: Cluster) -> None:
    a = await cluster.candidate("pod-a")
    assert await a.elector.try_acquire_or_renew()
    owed = a.store.owe("p1", [failed("p1", "j1")], cluster.clock.now)
    carried = asyncio.create_task(a.handover.carry(owed.changes))
    await asyncio.sleep(0.01)
    assert not carried.done()  # not announced before the Lease holds it
    async with asyncio.timeout(1):
        await a.handover.asked()  # the elector's wait between renewals ends at once
    assert await a.elector.try_acquire_or_renew()
    assert await carried == Carried()  # nothing to count or warn of
    assert annotation(cluster)["failed"] == {"p1": {"j1": 0}}


async def test_a_restarted_replica_leaves_out_of_what_it_owed_what_another_announced(
    cluster: Cluster,
) -> None:
    # a is killed between its state write and its record's: two failures owed on its disk
    # (kept, as an emptyDir is), none on the Lease. b takes over and announces j1 itself.
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    assert a.store.load() is None
    assert await a.elector.try_acquire_or_renew()
    assert not await b.elector.try_acquire_or_renew()
    a.store.owe("p1", [failed("p1", "j1"), failed("p1", "j2")], cluster.clock.now)
    assert (await a.store.save()).ok
    a.store.close()
    cluster.clock.now += TIMING.lease_duration + 0.1
    assert await b.elector.try_acquire_or_renew()
    assert b.handover.take(b.reports.found[-1]) is None
    b.store.owe("p1", [failed("p1", "j1")], cluster.clock.now)
    b.handover.announced([failed("p1", "j1")])
    assert await b.elector.try_acquire_or_renew()
    record = annotation(cluster)
    assert record["failed"] == {"p1": {"j1": 0}}
    assert record["active"] == {"p1": {"j1": "announced"}}
    owed = {("p1", "j1"), ("p1", "j2")}

    # Restarted as a follower: j1 is left out as soon as a record says b announced it; j2,
    # which nobody announced, waits for the bound (the lookback; here 0.3 s) and goes out.
    again = await cluster.candidate("pod-a", lookback=0.3)
    assert again.store.load() is None
    assert [len(o.changes) for o in again.store.owed()] == [2]
    waiting = asyncio.create_task(again.handover.announced_elsewhere(owed))
    await asyncio.sleep(0.01)
    assert not await again.elector.try_acquire_or_renew()  # (b leads; its record is read)
    await asyncio.sleep(0.1)
    assert not waiting.done()
    async with asyncio.timeout(1):
        assert await waiting == {("p1", "j1")}

    # Restarted again, and it leads: what the record says is known at once, without the bound.
    again.store.close()
    last = await cluster.candidate("pod-a")
    assert last.store.load() is None
    waiting = asyncio.create_task(last.handover.announced_elsewhere(owed))
    await b.elector.release()
    assert await last.elector.try_acquire_or_renew()
    assert last.handover.take(last.reports.found[-1]) is None  # (as Lifecycle.elected does)
    async with asyncio.timeout(1):
        assert await waiting == {("p1", "j1")}


async def test_a_deposed_leader_cannot_overwrite_its_successor_and_announces_anyway(
    cluster: Cluster,
) -> None:
    a = await cluster.candidate("pod-a")
    b = await cluster.candidate("pod-b")
    assert await a.elector.try_acquire_or_renew()
    assert await a.elector.try_acquire_or_renew()  # (with its record)
    assert not await b.elector.try_acquire_or_renew()
    cluster.clock.now += TIMING.lease_duration + 0.1  # a is cut off; its lease expires
    assert await b.elector.try_acquire_or_renew()
    before = annotation(cluster)
    owed = a.store.owe("p1", [failed("p1", "j1")], cluster.clock.now)
    carried = asyncio.create_task(a.handover.carry(owed.changes))
    await asyncio.sleep(0.01)
    assert not await a.elector.try_acquire_or_renew()  # b holds it: nothing written
    async with asyncio.timeout(1):
        result = await carried  # given up on at once, not after the patience
    assert annotation(cluster) == before
    assert result.unwritten == 1  # counted, and warned of:
    assert [(e.NAME, e.LEVEL, e.fields()) for e in result.news] == [
        ("handover_not_written", "warning", {"lease": LEASE, "failures": 1})
    ]


async def test_the_record_stays_under_the_api_servers_limit_dropping_its_oldest_failures(
    cluster: Cluster,
) -> None:
    now = cluster.clock.now
    burst = {("p1", f"job-{n:05}-0000-4000-8000-000000000000"): now - n / 10 for n in range(7000)}
    unbounded = await cluster.candidate("pod-a", cap=300 * 1024)
    unbounded.store.remember(burst)
    assert await unbounded.elector.try_acquire_or_renew()  # created, without a record
    # Refused by the API server (422): without the cap, the renewal and so the lease would go.
    assert not await unbounded.elector.try_acquire_or_renew()
    refused = [e for e in cluster.events.events if e.NAME == "lease_unavailable"]
    assert refused[-1].fields()["detail"] == "HTTP 422 Unprocessable Entity"
    capped = await cluster.candidate("pod-b")
    capped.store.remember(burst)
    assert not await capped.elector.try_acquire_or_renew()
    cluster.clock.now += TIMING.lease_duration + 0.1
    assert await capped.elector.try_acquire_or_renew()
    owed = capped.store.owe("p2", [failed("p2", "j1")], now)
    carried = asyncio.create_task(capped.handover.carry(owed.changes))
    await asyncio.sleep(0.01)
    assert await capped.elector.try_acquire_or_renew()
    kept = annotation(cluster)["failed"]["p1"]
    size = len(cluster.fake.leases[(NAMESPACE, LEASE)]["metadata"]["annotations"][ANNOTATION])
    assert CAP - 100 < size <= CAP
    newest = {f"job-{n:05}-0000-4000-8000-000000000000" for n in range(len(kept))}
    assert set(kept) == newest
    (truncated,) = (await carried).news
    assert truncated.NAME == "handover_truncated"
    assert truncated.fields()["dropped"] == 7000 - len(kept)  # (p2's j1, the newest, is kept)


async def test_the_fake_api_server_merges_patches_and_refuses_annotations_over_256_kib(
    cluster: Cluster,
) -> None:
    """What the record's tests rely on: the fake treats annotations as the API server does."""
    a = await cluster.candidate("pod-a")
    assert await a.elector.try_acquire_or_renew()
    url = f"{cluster.url}{LEASES.format(namespace=NAMESPACE)}/{LEASE}"
    headers = {
        "Authorization": f"Bearer {cluster.fake.token_for('pod-a')}",
        "Content-Type": "application/merge-patch+json",
    }

    async def patch(annotations: dict[str, str | None]) -> int:
        body = {"metadata": {"annotations": annotations}}
        async with (
            aiohttp.ClientSession() as session,
            session.patch(url, json=body, headers=headers) as response,
        ):
            return response.status

    assert await patch({"x": "1", "y": "2"}) == 200
    assert await patch({"x": None}) == 200  # null removes a key; the rest is kept
    lease = cluster.fake.leases[(NAMESPACE, LEASE)]
    assert lease["metadata"]["annotations"] == {"y": "2"}
    assert lease["spec"]["holderIdentity"] == "pod-a"
    version = lease["metadata"]["resourceVersion"]
    assert await patch({"z": "z" * (256 * 1024 - 2)}) == 422  # keys count too: 1 byte over
    assert cluster.fake.leases[(NAMESPACE, LEASE)]["metadata"]["resourceVersion"] == version
    assert await patch({"z": "z" * (256 * 1024 - 3)}) == 200  # (y, 2, z: exactly 256 KiB)
