"""When each promotion is polled next: adaptive intervals, spread phases, active first.

Pure bookkeeping with times passed in, so the schedule is a table test, not a sleep.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

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


@dataclass(slots=True)
class _Entry:
    target: JobsTarget
    phase: float
    due: float
    active: bool = False
    in_flight: bool = False
    polled: bool = False  # never polled: we are blind there until its baseline


class PollPlan:
    """Due times for every watched promotion.

    A promotion is polled as soon as it is added (so baselines come quickly, paced only by the
    request budget), then on a grid at its own phase of the interval, so polls never bunch at
    the top of a cycle. Promotions with an active job use the shorter interval and, when the
    budget cannot keep up with everything, are served first.
    """

    def __init__(self, *, interval: float, active_interval: float, anchor: float) -> None:
        self.interval = interval
        self.active_interval = active_interval
        self.anchor = anchor
        self._entries: dict[str, _Entry] = {}

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
        self._entries[pid] = _Entry(target, phase_of(pid), due=now, active=active)

    def remove(self, promotion_id: str) -> None:
        self._entries.pop(promotion_id, None)

    def take_due(self, now: float, limit: int) -> list[JobsTarget]:
        """Up to `limit` due promotions: active or never polled first, then the longest overdue."""
        if limit <= 0:
            return []
        due = [e for e in self._entries.values() if not e.in_flight and e.due <= now]
        # Active promotions and never-polled ones (no baseline yet) before the idle rest; a
        # busy store must not starve the baselines.
        due.sort(key=lambda e: (e.polled and not e.active, e.due))
        chosen = due[:limit]
        for entry in chosen:
            entry.in_flight = True
        return [entry.target for entry in chosen]

    def finished(self, promotion_id: str, now: float, *, active: bool) -> None:
        """Record a finished poll and schedule the next one on the promotion's grid."""
        entry = self._entries.get(promotion_id)
        if entry is None:  # removed while its poll was in flight
            return
        entry.in_flight = False
        entry.polled = True
        entry.active = active
        interval = self.active_interval if active else self.interval
        # At least half an interval from now: right after a promotion's first poll its grid slot
        # may be seconds away, and polling it twice in a row would only spend budget. In the
        # steady state (polls on the grid) this is exactly the next slot.
        entry.due = next_due(now + interval / 2, self.anchor, interval, entry.phase)

    def abandoned(self, promotion_id: str) -> None:
        """A poll given up before it finished (the replica lost the lease): due again as it was."""
        entry = self._entries.get(promotion_id)
        if entry is not None:
            entry.in_flight = False

    def due_all(self, now: float) -> None:
        """Every promotion due now (a replica that just became the poller has been silent)."""
        for entry in self._entries.values():
            entry.due = min(entry.due, now)

    def lag(self, now: float) -> float:
        """How far behind schedule the most overdue waiting promotion is (0 when on time)."""
        waiting = [now - e.due for e in self._entries.values() if not e.in_flight]
        return max([0.0, *waiting])

    def active_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.active)
