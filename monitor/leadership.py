"""What a replica does when it becomes the poller, or stops being it (coordination: lease)."""

from __future__ import annotations

import time
from collections.abc import Callable

from monitor.planner import PollPlan
from monitor.scheduler import PollScheduler
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore


class Leadership:
    """The elector's callbacks: set the replica up to poll, or mark it standing by."""

    def __init__(
        self,
        store: SnapshotStore,
        plan: PollPlan,
        metrics: MonitorMetrics,
        scheduler: PollScheduler,
        *,
        discovery: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._plan = plan
        self._metrics = metrics
        self._scheduler = scheduler
        self._discovery = discovery
        self._monotonic = monotonic

    def elected(self, kept_state: bool) -> None:
        if not kept_state:
            # Another replica polled since this one last did: a snapshot from back then would
            # announce again what that replica already reported. A fresh baseline instead (its
            # lookback catches what failed during the handover).
            for pid in self._store.retain(set()):
                self._metrics.forget(pid)
        for target in self._plan.targets:
            self._metrics.watch(target.promotion_id)
        # It has been silent for at least a renew deadline: catch up now, not at the next slot.
        self._plan.due_all(self._monotonic())
        self._metrics.leader.set(1)
        if self._discovery:
            self._scheduler.run_soon("discovery")

    def lost(self) -> None:
        self._metrics.leader.set(0)
