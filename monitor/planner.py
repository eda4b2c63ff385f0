"""When each promotion is polled next: adaptive intervals, spread phases, active first.

Pure bookkeeping with times passed in, so the schedule is a table test, not a sleep.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Mapping
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


@dataclass(slots=True, eq=False)
class _Entry:
    target: JobsTarget
    phase: float
    due: float
    order: int  # when it was added: equal due times go out in the order promotions were added
    active: bool = False
    in_flight: bool = False
    polled: bool = False  # never polled: we are blind there until its baseline
    # The token of its one live queue item; 0 when it is in no queue (in flight, or removed).
    # A removed or rescheduled entry's old item stays in the heap and is skipped when it surfaces.
    token: int = 0


# (due, order, token, entry): due and order decide; token only tells live items from stale ones.
_Item = tuple[float, int, int, _Entry]


class PollPlan:
    """Due times for every watched promotion.

    A promotion is polled as soon as it is added (so baselines come quickly, paced only by the
    request budget), then on a grid at its own phase of the interval, so polls never bunch at
    the top of a cycle. Promotions with an active job use the shorter interval and, when the
    budget cannot keep up with everything, are served first.

    Two heaps (active or never polled; idle) make a poll O(log P): the dispatcher asks after
    every finished poll, so a scan of every promotion there costs O(P) per poll and O(P²) overall.
    """

    def __init__(self, *, interval: float, active_interval: float, anchor: float) -> None:
        self.interval = interval
        self.active_interval = active_interval
        self.anchor = anchor
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

    def add(self, target: JobsTarget, now: float, *, active: bool = False) -> None:
        pid = target.promotion_id
        existing = self._entries.get(pid)
        if existing is not None:
            existing.target = target  # e.g. a changed filter; keep its place in the schedule
            return
        self._added += 1
        entry = _Entry(target, phase_of(pid), due=now, order=self._added, active=active)
        self._entries[pid] = entry
        self._active += active
        self._queue(entry)

    def remove(self, promotion_id: str) -> None:
        entry = self._entries.pop(promotion_id, None)
        if entry is None:
            return
        entry.token = 0  # its queue item, if any, is now stale
        self._active -= entry.active
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
        for pid, target in targets.items():
            known = pid in self._entries
            self.add(target, now, active=not known and active(pid))
        return added, removed

    def take_due(self, now: float, limit: int) -> list[JobsTarget]:
        """Up to `limit` due promotions: active or never polled first, then the longest overdue."""
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

    def finished(self, promotion_id: str, now: float, *, active: bool) -> None:
        """Record a finished poll and schedule the next one on the promotion's grid."""
        entry = self._entries.get(promotion_id)
        if entry is None:  # removed while its poll was in flight
            return
        entry.in_flight = False
        entry.polled = True
        self._active += active - entry.active
        entry.active = active
        interval = self.active_interval if active else self.interval
        # At least half an interval from now: right after a promotion's first poll its grid slot
        # may be seconds away, and polling it twice in a row would only spend budget. In the
        # steady state (polls on the grid) this is exactly the next slot.
        entry.due = next_due(now + interval / 2, self.anchor, interval, entry.phase)
        # Usually it was in flight and in no queue; a late finish for a promotion removed and
        # added again meanwhile finds it queued, and moves it (the old item goes stale).
        self._queue(entry)
        self._compact()

    def abandoned(self, promotion_id: str) -> None:
        """A poll given up before it finished (the replica lost the lease): due again as it was.

        Its queue item was taken with the poll, so it goes back in; without that the promotion
        would sit in no queue and never be polled again.
        """
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

    def active_count(self) -> int:
        return self._active

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
