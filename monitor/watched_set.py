"""What this replica polls: a new list of targets applied to the plan, the snapshot, the series
and the names, in one place, whoever decided it (configuration, discovery)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from monitor.client import JobsTarget
from monitor.models import PromotionKind
from monitor.names import PromotionNames
from monitor.planner import PollPlan
from monitor.rates import JobRates
from monitor.recent_activity import RecentActivity
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying a new watched set changed."""

    added: tuple[JobsTarget, ...]
    removed: tuple[str, ...]
    pruned: int  # promotions whose saved state went with them


class WatchedSet:
    """Keeps every per-promotion piece of the monitor in step with the watched set."""

    def __init__(
        self,
        plan: PollPlan,
        store: SnapshotStore,
        metrics: MonitorMetrics,
        *,
        names: PromotionNames,
        activity: RecentActivity,
        rates: JobRates,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rates = rates
        self._plan = plan
        self._store = store
        self._metrics = metrics
        self._names = names
        self._activity = activity
        self._monotonic = monotonic

    def apply(self, targets: Mapping[str, JobsTarget], *, authoritative: bool) -> Applied:
        """Poll exactly `targets` from now on; `authoritative` (the list is the whole truth, not
        so at start before the first discovery): saved state of promotions not in it goes too."""
        added, removed = self._plan.reconcile(targets, self._monotonic(), active=self._store.active)
        for pid in added:
            self._metrics.watch(pid)
        for pid in removed:
            self.forget(pid)
        dropped = self._store.retain(set(targets)) if authoritative else []
        kinds = Counter(t.kind for t in self._plan.targets)
        for kind in PromotionKind:
            self._metrics.promotions.labels(kind.value).set(kinds[kind])
        return Applied(tuple(targets[pid] for pid in added), tuple(removed), len(dropped))

    def start_afresh(self) -> None:
        """Drop what was seen of every promotion (snapshot, series, activity), still watching
        them: the next polls are baselines. Names stay: they are the store's, not ours."""
        seen = {s.promotion_id for s in self._store} | {t.promotion_id for t in self._plan.targets}
        for pid in seen:
            self._metrics.forget(pid)
            self._store.drop(pid)
            self._activity.forget(pid)

    def forget(self, promotion_id: str) -> None:
        """Everything the monitor holds of a promotion no longer watched."""
        self._rates.forget(promotion_id)
        self._metrics.forget(promotion_id)
        self._store.drop(promotion_id)
        self._activity.forget(promotion_id)
        self._names.forget(promotion_id)
