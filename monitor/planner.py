"""When each promotion is polled next: √-law intervals, spread phases, active first.

For jobs arriving at rate λ at a promotion whose poll reads c pages, the mean delay to see a job
for a given number of requests is least when it is polled at a rate ∝ √(λ/c) (Cho and
Garcia-Molina, TODS 2003). The plan spends what a uniform schedule at `interval` would (never
more than the budget) that way, each promotion between `min_interval` and `max_interval`.
Pure bookkeeping with times passed in, so the schedule is a table test, not a sleep.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (a value it holds, never looks into: the planner imports no HTTP stack)
    from monitor.client import JobsTarget


def phase_of(promotion_id: str) -> float:
    """A stable position in [0, 1) for a promotion: spreads polls evenly over an interval."""
    digest = hashlib.blake2b(promotion_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_due(after: float, anchor: float, interval: float, phase: float) -> float:
    """The first time strictly after `after` on the grid anchor + (phase + k) * interval."""
    offset = anchor + phase * interval
    k = math.floor((after - offset) / interval) + 1
    due = offset + k * interval
    # Float rounding can land exactly on `after`; the next slot is then one interval on.
    return due if due > after else due + interval


# Longest any idle promotion waits by default (poll.max_interval_seconds).
MAX_INTERVAL = 900.0
# The water level is solved again this often (and when the watched set changes): O(P log P)
# each time. In between a finished poll takes its promotion's interval from its own rate and
# cost at the last level, so a poll costs O(log P).
REPLAN_SECONDS = 300.0
# A promotion whose interval changes by more than this factor is moved to its new grid at once:
# sooner, not after its (long) current wait; later, not spending what the plan gave others.
MOVE_BEYOND = 1.25


def water_level(
    weights: Sequence[float], costs: Sequence[float], spend: float, lo: float, hi: float
) -> float:
    """The level k at which intervals `interval_at(k, w_i, lo, hi)` spend Σ c_i / T_i = `spend`
    requests/s (the √-law within the bounds, for w_i = √(λ_i / c_i)).

    0 when `spend` cannot poll everyone every `hi` (they take turns at the budget, as before).
    """
    total = math.fsum(costs)
    if spend <= total / hi:
        return 0.0
    if spend >= total / lo:
        return math.inf
    # Σ c_i f_i(k) is piecewise linear in k: f_i = 1/hi until k*w_i reaches it, then k*w_i
    # until 1/lo. Sweep k through those breakpoints to the segment that spends `spend`.
    events = sorted(
        [(1 / (hi * w), 0, i) for i, w in enumerate(weights)]
        + [(1 / (lo * w), 1, i) for i, w in enumerate(weights)]
    )
    at_floor, proportional, at_ceiling = total, 0.0, 0.0
    for k, leaves, i in events:
        if proportional > 0 and at_floor / hi + k * proportional + at_ceiling / lo >= spend:
            return (spend - at_floor / hi - at_ceiling / lo) / proportional
        if leaves:
            proportional -= costs[i] * weights[i]
            at_ceiling += costs[i]
        else:
            at_floor -= costs[i]
            proportional += costs[i] * weights[i]
    return math.inf  # (spend within rounding of everyone at `lo`)


def interval_at(level: float, weight: float, lo: float, hi: float) -> float:
    """A promotion's interval at water level `level`: 1 / (level * weight), within [lo, hi]."""
    product = level * weight
    return hi if product <= 0 else min(hi, max(lo, 1 / product))


@dataclass(slots=True, eq=False)
class _Entry:
    target: JobsTarget
    phase: float
    due: float
    order: int  # when it was added: equal due times go out in the order promotions were added
    active: bool = False
    in_flight: bool = False
    polled: bool = False  # never polled: we are blind there until its baseline
    interval: float = 0.0  # while idle, as last planned (0: not planned yet)
    cost: float = 1.0  # requests its last poll made (pages read)
    finished_at: float = -math.inf
    # Its grid: anchor + (phase + k) * spacing. A new interval continues from the slot it was
    # last due at; jumping to the new interval's grid from the plan's anchor would make that
    # gap anything from half an interval to one and a half.
    anchor: float = 0.0
    spacing: float = 0.0
    # The token of its one live queue item; 0 when it is in no queue (in flight, or removed).
    # A removed or rescheduled entry's old item stays in the heap and is skipped when it surfaces.
    token: int = 0


# (due, order, token, entry): due and order decide; token only tells live items from stale ones.
_Item = tuple[float, int, int, _Entry]


class PollPlan:
    """Due times for every watched promotion.

    A promotion is polled as soon as it is added (baselines come quickly), then on a grid at its
    own phase of its interval, so polls never bunch. Active promotions use the active interval
    and go first; idle ones get √-law intervals from `rate` (jobs/s, the prior included) and
    the pages their last poll read. Two heaps make a poll O(log P): the dispatcher asks after
    every finished poll, and a scan there would cost O(P²) overall.
    """

    def __init__(
        self,
        *,
        interval: float,
        active_interval: float,
        anchor: float,
        min_interval: float | None = None,
        max_interval: float | None = None,
        budget: float = math.inf,
        rate: Callable[[str], float] = lambda _: 1.0,
    ) -> None:
        self.interval = interval
        self.active_interval = active_interval
        self.anchor = anchor
        self.min_interval = active_interval if min_interval is None else min_interval
        self.max_interval = max(MAX_INTERVAL, interval) if max_interval is None else max_interval
        self.budget = budget  # requests/s the plan may spend (the replica's share)
        self._rate = rate
        self._planned_at = -math.inf
        self._replan = True  # the watched set changed since the intervals were planned
        # Promotions never polled: once none is left, every rate and cost is known (a start
        # with no state knows none), and the intervals are planned again.
        self._unpolled = 0
        # None until a plan with idle promotions: `interval` for every one until then.
        self._level: float | None = None
        self._entries: dict[str, _Entry] = {}
        self._urgent: list[_Item] = []  # active or never polled: these go first
        self._idle: list[_Item] = []
        self._active = 0
        self._added = 0
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, promotion_id: object) -> bool:
        return promotion_id in self._entries

    @property
    def targets(self) -> list[JobsTarget]:
        return [entry.target for entry in self._entries.values()]

    def poll_interval(self, promotion_id: str) -> float:
        """A watched promotion's interval as planned now."""
        return self._interval_of(self._entries[promotion_id])

    def active_count(self) -> int:
        return self._active

    def add(self, target: JobsTarget, now: float, *, active: bool = False) -> None:
        pid = target.promotion_id
        existing = self._entries.get(pid)
        if existing is not None:
            existing.target = target  # e.g. a changed filter; keep its place in the schedule
            return
        self._added += 1
        entry = _Entry(
            target, phase_of(pid), due=now, order=self._added, active=active, anchor=self.anchor
        )
        self._entries[pid] = entry
        self._active += active
        self._unpolled += 1
        self._replan = True
        self._queue(entry)

    def remove(self, promotion_id: str) -> None:
        entry = self._entries.pop(promotion_id, None)
        if entry is None:
            return
        entry.token = 0  # its queue item, if any, is now stale
        self._active -= entry.active
        self._unpolled -= not entry.polled
        self._replan = True
        self._compact()

    def reconcile(
        self,
        targets: Mapping[str, JobsTarget],
        now: float,
        *,
        active: Callable[[str], bool] = lambda _: False,
    ) -> tuple[list[str], list[str]]:
        """Watch exactly `targets`; returns the promotion ids (added, removed).

        A promotion already watched keeps its place in the schedule and takes the new target
        (e.g. a changed filter); `active` says which added ones are known to have an active job.
        """
        added = [pid for pid in targets if pid not in self._entries]
        removed = [pid for pid in self._entries if pid not in targets]
        for pid in removed:
            self.remove(pid)
        for pid, target in targets.items():  # (`active` only counts for an added one)
            self.add(target, now, active=pid not in self._entries and active(pid))
        return added, removed

    def take_due(self, now: float, limit: int) -> list[JobsTarget]:
        """Up to `limit` due promotions: active or never polled first, then the longest overdue."""
        if self._replan or now >= self._planned_at + REPLAN_SECONDS:
            self.plan(now)
        chosen: list[JobsTarget] = []
        # Active promotions and never-polled ones (no baseline yet) before the idle rest; a
        # busy store must not starve the baselines.
        for heap in (self._urgent, self._idle):
            while len(chosen) < limit:
                top = _live_top(heap)
                if top is None or top[0] > now:
                    break
                entry = heapq.heappop(heap)[3]
                entry.token = 0
                entry.in_flight = True
                chosen.append(entry.target)
        return chosen

    def finished(self, promotion_id: str, now: float, *, active: bool, requests: int = 1) -> None:
        """Record a finished poll (that made `requests`) and schedule the next on its grid."""
        entry = self._entries.get(promotion_id)
        if entry is None:  # removed while its poll was in flight
            return
        entry.in_flight = False
        if not entry.polled:
            entry.polled = True
            self._unpolled -= 1
            self._replan = self._replan or not self._unpolled
        entry.cost = max(1.0, float(requests))
        entry.finished_at = now
        self._active += active - entry.active
        entry.active = active
        if not active and self._level is not None:  # its rate and cost now, at the level
            entry.interval = self._interval_at(self._level, self._weight(entry))
        interval = self._interval_of(entry)
        if interval != entry.spacing:
            if entry.spacing:  # (the slot it was due at: entry.due, until now)
                entry.anchor = entry.due - entry.phase * interval
            entry.spacing = interval
        # At least a quarter of an interval from now: right after a promotion's first poll its
        # grid slot may be moments away, and polling it twice in a row would only spend budget.
        # On the grid this is the next slot, even for a poll that ran late (by up to three
        # quarters of an interval: half skipped a short interval's slots under a busy budget).
        # Never past the maximum: after a change of interval the first slot can be further.
        due = next_due(now + interval / 4, entry.anchor, interval, entry.phase)
        entry.due = min(due, now + self.max_interval)
        # Usually it was in flight and in no queue; a late finish for a promotion removed and
        # added again meanwhile finds it queued, and moves it (the old item goes stale).
        self._queue(entry)
        self._compact()

    def _interval_of(self, entry: _Entry) -> float:
        return self.active_interval if entry.active else entry.interval or self.interval

    def _weight(self, entry: _Entry) -> float:
        return math.sqrt(max(self._rate(entry.target.promotion_id), 1e-300) / entry.cost)

    def _interval_at(self, level: float, weight: float) -> float:
        interval = interval_at(level, weight, self.min_interval, self.max_interval)
        # (rounding must not move an equal-rate grid off today's slots)
        return self.interval if math.isclose(interval, self.interval) else interval

    def plan(self, now: float) -> None:
        """Plan every idle promotion's interval from its rate and cost; move the ones whose
        interval changed much to their own phase of the new one (without a burst)."""
        self._planned_at, self._replan = now, False
        idle = [entry for entry in self._entries.values() if not entry.active]
        if not idle:
            self._level = None
            return
        costs = [entry.cost for entry in idle]
        busy = math.fsum(entry.cost for entry in self._entries.values() if entry.active)
        spend = min(math.fsum(costs) / self.interval, self.budget - busy / self.active_interval)
        weights = [self._weight(entry) for entry in idle]
        self._level = water_level(weights, costs, spend, self.min_interval, self.max_interval)
        for entry, weight in zip(idle, weights, strict=True):
            interval = self._interval_at(self._level, weight)
            moved = entry.interval > 0 and not (
                1 / MOVE_BEYOND < interval / entry.interval < MOVE_BEYOND
            )
            entry.interval = interval
            if moved and entry.polled and not entry.in_flight:
                after = max(now, entry.finished_at + interval / 4)
                due = next_due(after, self.anchor, interval, entry.phase)
                entry.due = min(due, entry.finished_at + self.max_interval)
                entry.anchor, entry.spacing = self.anchor, interval
                self._queue(entry)
        self._compact()

    def abandoned(self, promotion_id: str) -> None:
        """A poll given up before it finished (the lease lost): due again as it was (its queue
        item went with the poll; without one it would never be polled again)."""
        entry = self._entries.get(promotion_id)
        if entry is not None and entry.in_flight:
            entry.in_flight = False
            self._queue(entry)

    def due_all(self, now: float) -> None:
        """Every promotion due now (a replica that just became the poller has been silent)."""
        for entry in self._entries.values():
            if entry.due > now:
                entry.due = now
                if not entry.in_flight:
                    self._queue(entry)  # the heaps order by the due time of each queued item
        self._compact()

    def lag(self, now: float) -> float:
        """How far behind schedule the most overdue waiting promotion is (0 when on time)."""
        tops = [top[0] for top in (_live_top(self._urgent), _live_top(self._idle)) if top]
        return max(0.0, now - min(tops)) if tops else 0.0

    def _queue(self, entry: _Entry) -> None:
        self._tokens += 1
        entry.token = self._tokens
        heap = self._idle if entry.polled and not entry.active else self._urgent
        heapq.heappush(heap, (entry.due, entry.order, entry.token, entry))

    def _compact(self) -> None:
        # Stale items (removed or moved promotions) are dropped when they surface; rebuild only
        # when they outnumber the live ones, which keeps the cost per operation O(log P).
        if len(self._urgent) + len(self._idle) <= 2 * len(self._entries) + 8:
            return
        for heap in (self._urgent, self._idle):
            heap[:] = [item for item in heap if item[2] == item[3].token]
            heapq.heapify(heap)


def _live_top(heap: list[_Item]) -> _Item | None:
    """The heap's first live item, dropping the stale ones above it."""
    while heap:
        top = heap[0]
        if top[2] == top[3].token:
            return top
        heapq.heappop(heap)
    return None
