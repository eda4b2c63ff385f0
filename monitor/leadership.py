"""What a replica does when it becomes the poller, or stops being it (coordination: lease)."""

from __future__ import annotations

import time
from collections.abc import Callable

from monitor.planner import PollPlan
from monitor.scheduler import PollScheduler
from monitor.sinks.metrics import MonitorMetrics
from monitor.watching import Watching


class Leadership:
    """The elector's callbacks: set the replica up to poll, or mark it standing by."""

    def __init__(
        self,
        watching: Watching,
        plan: PollPlan,
        metrics: MonitorMetrics,
        scheduler: PollScheduler,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._watching = watching
        self._plan = plan
        self._metrics = metrics
        self._scheduler = scheduler
        self._monotonic = monotonic

    def elected(self, kept_state: bool) -> None:
        if not kept_state:
            # Another replica polled since this one last did: a snapshot from back then would
            # announce again what that replica already reported. A fresh baseline instead (its
            # lookback catches what failed during the handover).
            self._watching.start_afresh()
        for target in self._plan.targets:
            self._metrics.watch(target.promotion_id)
        # It has been silent for at least a renew deadline: catch up now, not at the next slot.
        self._plan.due_all(self._monotonic())
        self._metrics.leader.set(1)
        # Discovery and name lookups ran gated while it stood by: now, not an interval later.
        self._scheduler.run_soon("discovery")

    def lost(self) -> None:
        self._metrics.leader.set(0)
