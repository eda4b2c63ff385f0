"""The handover record a leader keeps on the coordination Lease (an annotation, compact JSON), so
whoever leads next, from whatever state, neither repeats nor misses a failure: the failures
reported within the lookback, and the jobs last seen pending/processing/cancelling.

Written with every renewal and, for a new failure, at once and before it is announced (a write
that fails holds nothing back). Read by a new leader before its first poll. Past CAP bytes the
oldest failures go first (at least once for them): the API server refuses annotations over
256 KiB, and a refused renewal would cost the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from monitor.events import Event, HandoverIgnored, HandoverNotWritten, HandoverTruncated
from monitor.models import FAILED, Change, ChangeKind, PromotionSnapshot
from monitor.state import SnapshotStore

ANNOTATION = "promo-monitor/handover"
CAP = 128 * 1024
ANNOUNCED = "announced"  # (no job has this status)
# Failures are kept a minute past the lookback: the nodes' clocks may disagree a little.
MARGIN = 60.0
Key = tuple[str, str]  # (promotion, job)


class Record(BaseModel):
    """The annotation's content: when it was written (Unix seconds), failures {promotion: {job:
    seconds between the failure's report and `at`}}, active jobs {promotion: {job: status}}."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Literal[1]
    at: int
    failed: dict[str, dict[str, float]] = {}
    # Besides active jobs, failures known announced (not merely written before announced), as
    # ANNOUNCED: a release before this one reads the record whole, and takes them as reported.
    active: dict[str, dict[str, str]] = {}


def encode(
    at: float,
    failed: Mapping[Key, float],
    active: Mapping[Key, str],
    cap: int = CAP,
    announced: Set[Key] = frozenset(),
) -> tuple[str, int]:
    """The record as text of at most `cap` bytes, and how many entries did not fit: marks of
    announcement go first, then failures oldest first, then active jobs. Ages, not times: three
    digits instead of ten."""
    newest_first = sorted(failed.items(), key=lambda item: -item[1])
    ordered: list[tuple[str, Key, str | int]] = [("active", k, v) for k, v in active.items()]
    ordered += [("failed", key, max(0, int(at - when))) for key, when in newest_first]
    ordered += [("active", key, ANNOUNCED) for key, _ in newest_first if key in announced]

    def text(count: int) -> str:
        record: dict[str, dict[str, dict[str, str | int]]] = {"failed": {}, "active": {}}
        for section, (pid, job), value in ordered[:count]:
            record.setdefault(section, {}).setdefault(pid, {})[job] = value
        return json.dumps({"v": 1, "at": int(at), **record}, separators=(",", ":"))

    low, high = 0, len(ordered)
    if len(whole := text(high)) <= cap:
        return whole, 0
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(text(middle)) <= cap else (low, middle - 1)
    return text(low), len(ordered) - low


def failure_keys(changes: Iterable[Change]) -> set[Key]:
    return {(c.promotion_id, c.job.id) for c in changes if c.is_failure and c.job is not None}


def gap_failures(
    changes: Iterable[Change], snapshot: PromotionSnapshot, was_active: Mapping[str, str]
) -> tuple[Change, ...]:
    """At a baseline, the jobs a predecessor saw active that are failed now and not already
    reported by the baseline itself: they failed in the gap, however old their timestamps say."""
    failing = {c.job.id for c in changes if c.is_failure and c.job is not None}
    return tuple(
        Change(ChangeKind.DISCOVERED, snapshot.promotion_id, job, during_baseline=True)
        for job in snapshot.jobs.values()
        if job.id in was_active and job.status == FAILED and job.id not in failing
    )


@dataclass(frozen=True, slots=True)
class Carried:
    """What became of a poll's failures handed over: for the reporting step to count and emit."""

    unwritten: int = 0  # failures announced before the Lease held them
    news: tuple[Event, ...] = ()


class Handover:
    """This replica's side of the record: what it writes, what it takes from the leader before,
    and a failure's wait for the write that holds it. It answers with news, never emits it."""

    def __init__(
        self,
        store: SnapshotStore,
        *,
        lease: str,
        clock: Callable[[], float],
        lookback: float,
        patience: float,
        cap: int = CAP,
    ) -> None:
        self._store = store
        self._lease = lease
        self._clock = clock
        self._lookback = lookback
        self._patience = patience  # how long a failure waits for its write (the renew deadline)
        self._cap = cap
        # A predecessor's active jobs, by promotion, until that promotion's baseline here.
        self._inherited: dict[str, dict[str, str]] = {}
        self._dropped = 0  # entries the last write left out
        self._told = False  # that it leaves some out
        # Failures asked to be carried, carried by the write under way, written, given up on.
        self._asked = self._carrying = self._written = self._failed = 0
        self._in_flight = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Condition()
        # Failures known announced (here, or as a record said), for announced_elsewhere.
        self._announced: set[Key] = set()
        self._waiting = self._over = False
        self._news = asyncio.Event()  # a record read, or the wait is over

    # what the elector writes

    def text(self) -> str:
        """The record as it is now, for a write of the Lease."""
        now = self._clock()
        horizon = now - self._lookback - MARGIN
        active = {
            (pid, job): status
            for pid, jobs in self._inherited.items()
            if self._store.get(pid) is None
            for job, status in jobs.items()
        }
        for snap in self._store:
            if snap.has_active:
                active.update(
                    ((snap.promotion_id, j.id), j.status) for j in snap.jobs.values() if j.is_active
                )
        reported = self._store.reported_since(horizon)
        self._announced.intersection_update(reported)
        text, self._dropped = encode(now, reported, active, self._cap, self._announced)
        self._told = self._told and self._dropped > 0
        self._carrying, self._in_flight = self._asked, True
        self._wake.clear()
        return text

    async def settled(self, written: bool) -> None:
        """A write attempt ended: whatever it carried is on the Lease, or every wait gives up."""
        async with self._settled:
            if written and self._in_flight:
                self._written = self._carrying
            else:
                self._failed = self._asked
                self._wake.clear()
            self._in_flight = False
            self._settled.notify_all()

    async def asked(self) -> None:
        """Until a failure asks for a write (the elector waits a retry period at most)."""
        await self._wake.wait()

    # what a new leader takes

    def take(self, text: str | None) -> HandoverIgnored | None:
        """Before the first poll: the failures of a predecessor's record go on the ledger, its
        active jobs are remembered for those promotions' baselines. A record that cannot be
        read is ignored, with a warning (at least once, then)."""
        self.end_wait()
        record = self._read(text)
        if not isinstance(record, Record):
            return record
        failed = record.failed.items()
        self._store.remember({(p, j): record.at - age for p, js in failed for j, age in js.items()})
        for pid, jobs in record.active.items():
            if self._store.get(pid) is None:
                active = {job: status for job, status in jobs.items() if status != ANNOUNCED}
                self._inherited.setdefault(pid, {}).update(active)
        return None

    def end_wait(self) -> None:  # (it leads, or stops: announced_elsewhere answers now)
        self._over = True
        self._news.set()

    def seen(self, text: str | None) -> None:
        """A record read while following: what it says was announced (announced_elsewhere)."""
        if self._waiting and isinstance(self._read(text), Record):
            self._news.set()

    def _read(self, text: str | None) -> Record | HandoverIgnored | None:
        if text is None:
            return None
        try:
            record = Record.model_validate_json(text)
        except ValidationError as exc:
            # Where and what, never the values (the record is anybody's to write).
            where = (
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
            )
            return HandoverIgnored(lease=self._lease, reason="; ".join(where)[:300])
        marks = (
            (p, j) for p, jobs in record.active.items() for j, s in jobs.items() if s == ANNOUNCED
        )
        self._announced.update(marks)
        return record

    def announced(self, changes: Iterable[Change]) -> None:
        """These changes were announced: their failures go on the record as such."""
        self._announced |= failure_keys(changes)

    async def announced_elsewhere(self, keys: set[Key]) -> set[Key]:
        """Of these failures a process before this one owed, those the records say another replica
        announced, once this replica leads or stops, or they say it of all, or the lookback passed
        (after it a leader's baseline reports one only if a record saw it active: a repeat)."""
        self._waiting = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._lookback):
                while not self._over and not keys <= self._announced:
                    self._news.clear()
                    await self._news.wait()
        self._waiting = False
        return keys & self._announced

    # what the reporting step asks

    def judge(
        self, changes: tuple[Change, ...], snapshot: PromotionSnapshot | None
    ) -> tuple[Change, ...]:
        """A poll's changes, with the gap's failures at a promotion's baseline (gap_failures)."""
        if snapshot is None or not any(c.kind is ChangeKind.BASELINE for c in changes):
            return changes
        was = self._inherited.pop(snapshot.promotion_id, {})
        return changes + gap_failures(changes, snapshot, was)

    async def carry(self, changes: Iterable[Change]) -> Carried:
        """Before announcing: the Lease's record holds these failures (written at once, or by
        the write under way). A write that fails or takes past the patience is news, and the
        failures are announced all the same."""
        failures = sum(1 for change in changes if change.is_failure)
        if not failures:
            return Carried()
        self._asked += 1
        mine = self._asked
        self._wake.set()
        async with self._settled:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._patience):
                    await self._settled.wait_for(lambda: max(self._written, self._failed) >= mine)
        news: list[Event] = []
        if self._dropped and not self._told:
            self._told = True
            news.append(HandoverTruncated(lease=self._lease, dropped=self._dropped, cap=self._cap))
        if self._written >= mine:
            return Carried(0, tuple(news))
        news.append(HandoverNotWritten(lease=self._lease, failures=failures))
        return Carried(failures, tuple(news))
