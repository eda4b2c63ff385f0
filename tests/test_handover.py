"""The handover record (monitor.handover): what a leader writes, what a successor takes, and a
property over interleavings of polls, crashes, handovers and failures: each failure once.

The pure parts run in process: diff, the record's text, the ledger, the gap rule. The Lease is a
variable here; tests/test_election.py and tests/test_coordination.py put it on a fake API server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from monitor.diff import diff
from monitor.handover import Handover, encode, gap_failures
from monitor.models import Change, ChangeKind, Job, PromotionSnapshot
from monitor.state import SnapshotStore
from tests.support import FakeClock

LOOKBACK = 900.0


def handover(store: SnapshotStore, clock: FakeClock) -> Handover:
    return Handover(
        store,
        lease="promo-monitor",
        clock=clock,
        lookback=LOOKBACK,
        patience=1.0,
    )


def job(job_id: str, status: str, at: float | None = None) -> Job:
    return Job(job_id, "code_generate", status, "boom" if status == "failed" else None, at, at)


def test_the_record_holds_recent_failures_and_active_jobs_and_nothing_older(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = SnapshotStore(tmp_path / "state.db")
    jobs = {"j1": job("j1", "processing"), "j2": job("j2", "completed"), "j3": job("j3", "pending")}
    store.put(PromotionSnapshot("p1", jobs))
    store.remember({("p1", "old"): clock.now - LOOKBACK - 61, ("p2", "new"): clock.now - 5})
    record = json.loads(handover(store, clock).text())
    assert record == {
        "v": 1,
        "at": int(clock.now),
        "failed": {"p2": {"new": 5}},  # reported 5 s before the record was written
        "active": {"p1": {"j1": "processing", "j3": "pending"}},
    }


def test_a_successor_takes_the_failures_onto_its_ledger_and_the_active_jobs_for_baselines(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    text = json.dumps(
        {
            "v": 1,
            "at": clock.now,
            "failed": {"p1": {"j1": 10}},
            "active": {"p1": {"j2": "processing"}, "p2": {"j3": "pending"}},
        }
    )
    store = SnapshotStore(tmp_path / "state.db")
    store.put(PromotionSnapshot("p2", {"j3": job("j3", "pending")}))  # (kept state: its own)
    successor = handover(store, clock)
    assert successor.take(text) is None
    assert store.reported("p1", "j1")
    assert json.loads(successor.text())["active"] == {
        "p1": {"j2": "processing"},  # carried on until p1's baseline here
        "p2": {"j3": "pending"},
    }
    baseline = diff(
        None,
        [job("j1", "failed"), job("j2", "failed"), job("j4", "failed")],
        promotion_id="p1",
        now=clock.now,
        stuck_after=60,
        lookback=LOOKBACK,
    )
    changes = successor.judge(tuple(baseline.changes), baseline.snapshot)
    # j2 failed in the gap (the record saw it processing); j1 and j4 have no times: history.
    assert [(c.job.id, c.during_baseline) for c in changes if c.is_failure and c.job] == [
        ("j2", True)
    ]
    again = successor.judge(tuple(baseline.changes), baseline.snapshot)
    assert [c for c in again if c.is_failure] == []  # once per baseline, then forgotten


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "Invalid JSON"),
        ('{"v": 2, "at": 1, "failed": {}, "active": {}}', "v"),
        ('{"v": 1, "at": 1, "failed": {"p1": ["j1"]}, "active": {}}', "failed.p1"),
        ('{"v": 1, "at": 1, "failed": {}, "active": {}, "owner": "someone else"}', "owner"),
        ('{"v": 1, "failed": {}, "active": {}}', "at"),
    ],
)
def test_an_unreadable_or_foreign_record_is_ignored_with_a_warning(
    tmp_path: Path, text: str, reason: str
) -> None:
    store = SnapshotStore(tmp_path / "state.db")
    warned = handover(store, FakeClock()).take(text)
    assert warned is not None
    assert warned.NAME == "handover_ignored"
    assert warned.LEVEL == "warning"
    assert reason in str(warned.fields()["reason"])
    assert not store.dirty  # nothing taken


def test_gap_failures_are_the_failed_jobs_once_active_not_reported_by_the_baseline() -> None:
    snapshot = PromotionSnapshot(
        "p1",
        {
            "a": job("a", "failed"),  # was active, failed: in the gap
            "b": job("b", "completed"),  # was active, completed: no news
            "c": job("c", "failed", 100.0),  # failed, reported by the baseline's lookback
            "d": job("d", "failed"),  # failed, but nobody saw it active: history
        },
    )
    lookback = Change(ChangeKind.DISCOVERED, "p1", snapshot.jobs["c"], during_baseline=True)
    was = {"a": "processing", "b": "pending", "c": "processing"}
    found = gap_failures([lookback], snapshot, was)
    assert [(c.kind, c.job.id if c.job else None, c.during_baseline) for c in found] == [
        (ChangeKind.DISCOVERED, "a", True)
    ]


def test_past_the_cap_the_oldest_failures_go_first_then_active_jobs() -> None:
    failed = {("p", f"f{n}"): float(n) for n in range(100)}
    active = {("p", f"a{n}"): "processing" for n in range(10)}
    whole, dropped = encode(100, failed, active, cap=10**6)
    assert dropped == 0
    text, dropped = encode(100, failed, active, cap=len(whole) // 2)
    kept = json.loads(text)
    assert len(text) <= len(whole) // 2
    assert len(kept["active"]["p"]) == 10
    ages = sorted(kept["failed"]["p"].values())
    assert ages == list(range(1, len(ages) + 1))  # the newest (reported at 99, 98, ...)
    assert dropped == 100 - len(ages)
    only_some, dropped = encode(100, {}, active, cap=70)
    assert 0 < len(json.loads(only_some)["active"].get("p", {})) < 10
    assert len(only_some) <= 70


class ReleaseBeforeRecord(BaseModel):
    """The record as the release before this one reads it (its model, as it shipped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Literal[1]
    at: int
    failed: dict[str, dict[str, float]] = {}
    active: dict[str, dict[str, str]] = {}


def test_marks_of_announcement_are_a_record_the_release_before_reads_whole() -> None:
    # In a rolling upgrade an old replica may lead after a new one: a record it cannot read would
    # cost it the failures (repeated) and the active jobs (a gap failure taken for history).
    failed = {("p", "f1"): 90.0, ("p", "f2"): 95.0}
    text, _ = encode(100, failed, {("q", "a1"): "processing"}, announced={("p", "f1")})

    old = ReleaseBeforeRecord.model_validate_json(text)
    assert old.failed == {"p": {"f1": 10, "f2": 5}}
    assert old.active["q"] == {"a1": "processing"}
    # And past the cap, marks go before any failure: a failure is never left out for a mark.
    whole = len(encode(100, failed, {}, announced=set(failed))[0])
    short, dropped = encode(100, failed, {}, cap=whole - 1, announced=set(failed))
    assert dropped == 1
    assert json.loads(short)["failed"] == {"p": {"f1": 10, "f2": 5}}


# The property: a world of one promotion, three replicas and a Lease, driven step by step.

JOBS = [f"job-{n}" for n in range(3)]


@dataclass
class Replica:
    store: SnapshotStore
    handover: Handover
    led_last: int = -1  # the term it last led in


@dataclass
class World:
    clock: FakeClock = field(default_factory=FakeClock)
    jobs: dict[str, Job] = field(default_factory=dict)  # the store's jobs now
    timestamps: bool = True
    replicas: list[Replica] = field(default_factory=list)
    leader: int | None = None
    term: int = 0
    holder: int | None = None  # whose name the Lease is in
    record: str | None = None  # the Lease's annotation
    # Jobs some record on the Lease said were active: a failure of one must be reported.
    seen_active: set[str] = field(default_factory=set)
    announced: list[str] = field(default_factory=list)

    def replica(self) -> Replica:
        store = SnapshotStore(Path("unused.db"))  # (in memory: never loaded nor saved)
        return Replica(store, handover(store, self.clock))

    def write(self, replica: Replica) -> None:
        self.record = replica.handover.text()
        self.seen_active.update(*json.loads(self.record)["active"].values())

    def change(self, job_id: str, status: str) -> None:
        self.jobs[job_id] = job(job_id, status, self.clock.now if self.timestamps else None)

    def poll(self) -> None:
        """One poll and its report, as monitor.report does it: the ledger decides what is new,
        the record holding a new failure is written before the failure is announced."""
        if self.leader is None:
            return
        me = self.replicas[self.leader]
        found = diff(
            me.store.get("p"),
            list(self.jobs.values()),
            promotion_id="p",
            now=self.clock.now,
            stuck_after=10**9,
            lookback=LOOKBACK,
        )
        me.store.put(found.snapshot)
        changes = me.handover.judge(tuple(found.changes), found.snapshot)
        new = [
            c.job.id
            for c in changes
            if c.is_failure and c.job and not me.store.reported("p", c.job.id)
        ]
        me.store.owe("p", [c for c in changes if c.job and c.job.id in new], self.clock.now)
        if new:
            self.write(me)
        self.announced += new

    def renew(self) -> None:
        if self.leader is not None:
            self.write(self.replicas[self.leader])

    def release(self) -> None:
        self.renew()
        self.leader = self.holder = None

    def crash(self, fresh: bool) -> None:
        if self.leader is not None and fresh:
            self.replicas[self.leader] = self.replica()  # a new pod in its place
        self.leader = None

    def elect(self, index: int) -> None:
        if self.leader is not None:
            return
        me = self.replicas[index]
        kept_state = self.holder == index and me.led_last == self.term
        if not kept_state:
            for snap in list(me.store):  # as WatchedSet.start_afresh
                me.store.drop(snap.promotion_id)
            self.term += 1
        me.handover.take(self.record)
        self.leader = self.holder = index
        me.led_last = self.term


step = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(JOBS)),
    st.tuples(st.just("fail"), st.sampled_from(JOBS)),
    st.tuples(st.just("poll")),
    st.tuples(st.just("renew")),
    # the leader goes (released, crashed, or crashed and replaced by a fresh pod), another leads
    st.tuples(
        st.just("handover"), st.sampled_from(["release", "crash", "fresh"]), st.integers(0, 2)
    ),
    st.tuples(st.just("tick"), st.sampled_from([1.0, 30.0, 600.0])),
)


@settings(max_examples=500, deadline=None)
@given(steps=st.lists(step, max_size=40), timestamps=st.booleans())
def test_every_failure_is_reported_once_whatever_the_interleaving(
    steps: list[tuple[object, ...]], timestamps: bool
) -> None:
    world = World(timestamps=timestamps)
    world.replicas = [world.replica() for _ in range(3)]
    failed: dict[str, float] = {}  # when each job failed
    for each in steps:
        match each:
            case ("start", str(job_id)) if job_id not in world.jobs:
                world.change(job_id, "processing")
            case ("fail", str(job_id)) if job_id in world.jobs:
                if world.jobs[job_id].status == "processing":
                    world.change(job_id, "failed")
                    failed[job_id] = world.clock.now
            case ("tick", float(seconds)):
                world.clock.now += seconds
            case ("handover", str(how), int(index)):
                if how == "release":
                    world.release()
                else:
                    world.crash(fresh=how == "fresh")
                world.elect(index)
            case ("poll",):
                world.poll()
            case ("renew",):
                world.renew()
    # In the end somebody leads and polls.
    world.elect(0)
    world.poll()
    world.poll()
    world.poll()
    # Never twice; always when a record saw it active, or it failed within the lookback of
    # the last poll (a job nobody saw active and without timestamps is history at a baseline).
    assert len(world.announced) == len(set(world.announced))
    assert set(world.announced) <= failed.keys()
    recent = {j for j, at in failed.items() if timestamps and at >= world.clock.now - LOOKBACK}
    assert (world.seen_active & failed.keys()) | recent <= set(world.announced)
