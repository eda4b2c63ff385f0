"""Every failure announced exactly once at the edges of a pod's life: an empty answer, SIGTERM
landing anywhere in a poll, and processes killed while jobs keep failing.

Each test runs the real daemon (a subprocess) against a simulated store of its own, with the
state on disk kept between the processes, as on a persistent volume.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
from pathlib import Path

import pytest

from monitor.app import Monitor
from monitor.events import JobFailed
from monitor.poller import PollOutcome
from monitor.simulator import Fault, Simulator
from monitor.state import SnapshotStore
from tests.fault_support import CODES_LIMIT, Store, polled, watching
from tests.kube_fake import FakeLeaseApi, write_kubeconfig
from tests.support import (
    Daemon,
    Recorder,
    in_process_monitor,
    running_daemon,
    serving,
    started,
    value,
    write_config,
)


def failures(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], pid: str) -> float:
    return (
        value(
            samples, "epcc_promotion_job_failures_total", promotion_id=pid, job_type="code_generate"
        )
        or 0.0
    )


async def failed_after_baseline(
    sim: Simulator, directory: Path, events: Recorder
) -> tuple[Monitor, PollOutcome, str]:
    """A monitor in process whose promotion's job failed after its baseline, polled (the
    outcome not reported yet); returns the monitor, that outcome and the failed job."""
    pid = sim.add_promotion()
    running = sim.add_job(pid, status="processing")
    monitor = in_process_monitor(directory, sim, [{"id": pid}], events=events)
    await monitor.lifecycle.load_state()
    target = monitor.scheduler.plan.targets[0]
    assert await monitor.scheduler.reporter.report(await monitor.poller.poll(target))
    sim.set_job_status(pid, running, "failed", error=CODES_LIMIT)
    return monitor, await monitor.poller.poll(target), running


async def killed_owing(
    sim: Simulator, directory: Path, events: Recorder
) -> tuple[PollOutcome, str]:
    """failed_after_baseline, killed after its write and before its announcement: the poll's
    record and what it owes are on disk, nothing was emitted."""
    monitor, outcome, running = await failed_after_baseline(sim, directory, events)
    assert outcome.snapshot is not None
    monitor.store.put(outcome.snapshot)
    monitor.store.owe(outcome.promotion_id, outcome.changes, 0.0)
    assert await monitor.scheduler.reporter.save()
    await monitor.client.close()
    monitor.store.close()
    return outcome, running


async def restarted_failures(sim: Simulator, directory: Path, pid: str) -> list[JobFailed]:
    """The failures a new process on the same state announces at start and at its first poll."""
    again = Recorder()
    restarted = in_process_monitor(directory, sim, [{"id": pid}], events=again)
    await restarted.lifecycle.load_state()  # (announces what is still owed)
    poll = await restarted.poller.poll(restarted.scheduler.plan.targets[0])
    assert await restarted.scheduler.reporter.report(poll)
    await restarted.client.close()
    restarted.store.close()
    return [e for e in again.events if isinstance(e, JobFailed)]


def failed_ids(events: Recorder) -> list[str]:
    return [e.job_id for e in events.events if isinstance(e, JobFailed)]


async def test_a_poll_cancelled_inside_its_write_still_announces_and_no_restart_repeats(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SIGTERM grace ends while the poll that saw a failure is writing it: the poll is
    # cancelled in its save, and the shutdown's last write carries what it recorded.
    first = Recorder()
    monitor, outcome, running = await failed_after_baseline(sim, tmp_path, first)
    reporter = monitor.scheduler.reporter

    writing, go_on = threading.Event(), threading.Event()
    real = SnapshotStore._write

    def held(store: SnapshotStore, batch: object) -> None:
        writing.set()
        go_on.wait(10)
        real(store, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(SnapshotStore, "_write", held)
    poll = asyncio.create_task(reporter.report(outcome))
    assert await asyncio.to_thread(writing.wait, 10)
    poll.cancel()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await poll
    monkeypatch.undo()
    assert await reporter.save(compact=True)  # the shutdown's last write
    await monitor.client.close()
    monitor.store.close()

    again = await restarted_failures(sim, tmp_path, outcome.promotion_id)
    assert (failed_ids(first), again) == ([running], [])
    assert [e.redelivered for e in first.events if isinstance(e, JobFailed)] == [None]


async def test_what_a_killed_process_owed_is_announced_at_the_next_start(
    sim: Simulator, tmp_path: Path
) -> None:
    first = Recorder()
    outcome, running = await killed_owing(sim, tmp_path, first)

    again = await restarted_failures(sim, tmp_path, outcome.promotion_id)
    assert (failed_ids(first), [e.job_id for e in again]) == ([], [running])
    # It may have been announced before the kill: said so, for consumers to dedupe on.
    assert [(e.status, e.redelivered, e.fields()["redelivered"]) for e in again] == [
        ("failed", True, True)
    ]


async def test_a_replica_restarted_on_its_state_leaves_out_what_the_new_leader_announced(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a lease: a is killed between its state write and its record's, its failure owed on
    # its disk (an emptyDir outlives a container) and not on the Lease. b takes over and reports
    # it from its baseline; a's container restarts, a follower now, and must not report it too.
    pid = sim.add_promotion()
    running = sim.add_job(pid, status="processing")
    fake = FakeLeaseApi()
    timing = {"lease_duration_seconds": 1, "renew_deadline_seconds": 0.8}
    async with serving(fake.app()) as url:

        async def replica(name: str, events: Recorder) -> Monitor:
            kubeconfig = write_kubeconfig(tmp_path / name, url, fake.token_for(name))
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            lease = {
                "mode": "lease",
                "namespace": "shop",
                "identity": name,
                "retry_period_seconds": 0.2,
            }
            monitor = in_process_monitor(
                tmp_path / f"{name}-state",
                sim,
                [{"id": pid}],
                events=events,
                coordination=lease | timing,
            )
            assert monitor.leases is not None
            await monitor.leases.open()
            await monitor.lifecycle.load_state()
            return monitor

        async def stopped(monitor: Monitor) -> None:
            assert monitor.leases is not None
            await monitor.leases.close()
            await monitor.client.close()
            monitor.store.close()

        a = await replica("pod-a", Recorder())
        assert a.elector is not None
        assert await a.elector.try_acquire_or_renew()
        assert await a.scheduler.reporter.report(await a.poller.poll(a.scheduler.plan.targets[0]))
        sim.set_job_status(pid, running, "failed", error=CODES_LIMIT)
        outcome = await a.poller.poll(a.scheduler.plan.targets[0])
        assert outcome.snapshot is not None
        a.store.put(outcome.snapshot)
        a.store.owe(pid, outcome.changes, a.scheduler.clock())
        assert await a.scheduler.reporter.save()
        await stopped(a)  # (killed: the Lease still in its name, nothing announced)

        b_events = Recorder()
        b = await replica("pod-b", b_events)
        assert b.elector is not None
        campaign = asyncio.create_task(b.elector.run())
        async with asyncio.timeout(10):
            while not b.elector.leading:  # (once a's lease has expired)
                await asyncio.sleep(0.05)
            assert await b.scheduler.reporter.report(
                await b.poller.poll(b.scheduler.plan.targets[0])
            )
            while '"announced"' not in str(fake.leases):  # (b's next renewal says so)
                await asyncio.sleep(0.05)

        a_events = Recorder()
        again = await replica("pod-a", a_events)
        assert again.elector is not None
        assert [len(o.changes) for o in again.store.owed()] == [1]  # (held, not announced)
        assert not await again.elector.try_acquire_or_renew()  # b leads; its record is read
        async with asyncio.timeout(2):
            while again.store.owed():
                await asyncio.sleep(0.01)
        campaign.cancel()
        await asyncio.gather(campaign, return_exceptions=True)
        await stopped(b)
        await stopped(again)
    assert [(e.job_id, e.during_baseline) for e in b_events.events if isinstance(e, JobFailed)] == [
        (running, True)
    ]
    assert failed_ids(a_events) == []


async def test_an_empty_answer_does_not_announce_a_failure_again(tmp_path: Path) -> None:
    store = Store.build(seed=301)
    victim = store.victim
    async with watching(store, tmp_path) as daemon:
        await daemon.wait_for("baseline_loaded", count=3)
        failed = store.fail(victim)
        await daemon.wait_for("job_failed")
        # One valid answer with no jobs: every job of the promotion vanishes, then comes back.
        store.sim.inject(Fault("empty", path_contains=f"/{victim}/jobs"))
        await daemon.wait_for("job_vanished", lambda e: e["job_id"] == failed)
        await daemon.wait_for("job_discovered")  # (the failure itself comes back as history)
        await polled(store.sim, victim, 3)
        after = await daemon.metrics()
    assert [e["job_id"] for e in daemon.named("job_failed")] == [failed]
    assert failures(after, victim) == 1


# When the slow answer lands relative to SIGTERM's 3 s grace: inside it, at its very end (the
# poll is cancelled in its save), and after it (the poll is abandoned before its diff).
@pytest.mark.parametrize("lands_after", [2.5, 2.95, 2.99, 3.3])
async def test_sigterm_anywhere_in_a_poll_neither_loses_nor_repeats_a_failure(
    tmp_path: Path, lands_after: float
) -> None:
    store = Store.build(seed=311)
    victim = store.victim
    async with started(store.sim):
        config = write_config(
            tmp_path,
            store.sim,
            [{"id": pid} for pid in store.ids],
            poll={"interval_seconds": 0.3},
            api={"timeout_seconds": 10},
        )
        first = await Daemon.start(config)
        try:
            await first.wait_for("baseline_loaded", count=3)
            mark = len(store.sim.requests)
            store.sim.inject(Fault("slow", delay=lands_after, path_contains=f"/{victim}/jobs"))
            failed = store.fail(victim)
            while not any(r.path.endswith(f"/{victim}/jobs") for r in store.sim.requests[mark:]):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # (the slow request is being held)
            assert await first.stop(signal.SIGTERM) == 0
        finally:
            await first.stop(signal.SIGKILL)
        second = await Daemon.start(config)
        try:
            await polled(store.sim, victim, 3)
        finally:
            await second.stop()
    announced = [e["job_id"] for d in (first, second) for e in d.named("job_failed")]
    assert announced == [failed], (first.stderr, second.stderr)


async def test_killed_again_and_again_while_jobs_fail_every_failure_is_announced_once(
    tmp_path: Path,
) -> None:
    store = Store.build(seed=321, count=4)
    rng = random.Random(321)
    failed: list[str] = []
    daemons: list[Daemon] = []
    async with started(store.sim):
        config = write_config(
            tmp_path, store.sim, [{"id": pid} for pid in store.ids], poll={"interval_seconds": 0.2}
        )
        for _ in range(8):
            daemon = await Daemon.start(config)
            daemons.append(daemon)
            try:
                for _ in range(4):
                    pid = rng.choice(store.ids)
                    job = store.sim.add_job(pid, status="processing")
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    store.sim.set_job_status(pid, job, "failed", error=CODES_LIMIT)
                    failed.append(job)
                    await asyncio.sleep(rng.uniform(0.0, 0.4))
            finally:
                await daemon.stop(signal.SIGKILL)
        last = await Daemon.start(config)
        daemons.append(last)
        try:
            for pid in store.ids:
                await polled(store.sim, pid, 3)
        finally:
            await last.stop()
    announced = [e["job_id"] for d in daemons for e in d.named("job_failed")]
    assert sorted(announced) == sorted(failed)


async def test_a_promotion_disabled_and_enabled_again_does_not_announce_its_failure_again(
    sim: Simulator, tmp_path: Path
) -> None:
    # Discovery without disabled promotions drops it (its snapshot goes with it) and adds it
    # back with a fresh baseline, whose lookback would report its recent failure again.
    pid = sim.add_promotion("promotion", name="Toggled")
    running = sim.add_job(pid, status="processing")
    config = write_config(
        tmp_path,
        sim,
        [],
        discovery={"enabled": True, "interval_seconds": 0.5, "include_disabled": False},
    )
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded")
        sim.set_job_status(pid, running, "failed", error=CODES_LIMIT)
        await daemon.wait_for("job_failed")
        sim.set_promotion(pid, enabled=False)
        await daemon.wait_for("promotion_removed")
        sim.set_promotion(pid, enabled=True)
        await daemon.wait_for("promotion_added", lambda e: e["promotion_id"] == pid, count=2)
        await daemon.wait_for("baseline_loaded", count=2)
        samples = await daemon.polled(pid, 2)

    assert [e["job_id"] for e in daemon.named("job_failed")] == [running]
    assert failures(samples, pid) == 0  # (the re-watched promotion's counter starts again)


async def test_a_restarted_replica_stopped_while_it_holds_what_it_owed_announces_it(
    sim: Simulator, tmp_path: Path
) -> None:
    # With a lease, a replica restarted on its old state holds what it owed while it follows;
    # stopped before a record says another announced it (a rollout: its emptyDir goes with the
    # pod), it must announce it then, not take it to a state nobody will read.
    outcome, running = await killed_owing(sim, tmp_path, Recorder())

    again = Recorder()
    lease = {"mode": "lease", "namespace": "shop", "identity": "pod-a"}
    restarted = in_process_monitor(
        tmp_path, sim, [{"id": outcome.promotion_id}], events=again, coordination=lease
    )
    await restarted.lifecycle.load_state()  # (a follower: nothing read yet, it holds)
    await asyncio.sleep(0.05)
    assert failed_ids(again) == []
    async with asyncio.timeout(5):
        await restarted.lifecycle.stop(0.0)
    await restarted.client.close()
    restarted.store.close()
    assert [(e.job_id, e.redelivered) for e in again.events if isinstance(e, JobFailed)] == [
        (running, True)
    ]
    store = SnapshotStore(tmp_path / "state" / "monitor.db")
    assert (store.load(), store.owed()) == (None, [])  # (marked done on disk)
    store.close()
