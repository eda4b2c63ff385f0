"""APScheduler wiring: dispatch due polls, retry failed state writes, run discovery.

APScheduler's interval job is the heartbeat; which promotion is polled when is the PollPlan's
decision, so adaptive intervals and priorities stay in one pure, tested place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.client import JobsTarget
from monitor.planner import PollPlan
from monitor.poller import Poller, PollOutcome
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore

FLUSH_SECONDS = 30.0


class PollScheduler:
    """Keeps up to `concurrency` polls in flight, taking due promotions from the plan."""

    def __init__(
        self,
        poller: Poller,
        plan: PollPlan,
        store: SnapshotStore,
        metrics: MonitorMetrics,
        *,
        concurrency: int,
        clock: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        observe: Callable[[PollOutcome], None] = lambda _: None,
        may_poll: Callable[[], bool] = lambda: True,
        on_unwatched: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.poller = poller
        # False while another replica holds the coordination lease (monitor.coordination).
        self._may_poll = may_poll
        self.plan = plan
        self._store = store
        self._metrics = metrics
        self._concurrency = concurrency
        self._clock = clock
        self._monotonic = monotonic
        self._observe = observe  # sees every finished poll of a watched promotion (status page)
        self.on_unwatched = on_unwatched
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._inflight: set[asyncio.Task[PollOutcome]] = set()
        self._stopping = False
        # Monotonic time of the last dispatch tick; /healthz reads it to tell a live loop. A tick,
        # not a finished poll: a monitor with nothing to poll (an empty shard) is alive too.
        self.heartbeat = monotonic()
        # Fine enough that an active promotion is polled close to its due time.
        self._tick = min(1.0, max(0.05, plan.active_interval / 10))

    @property
    def targets(self) -> list[JobsTarget]:
        return self.plan.targets

    def start(self) -> None:
        self.heartbeat = self._monotonic()
        self._scheduler.add_job(
            self._dispatch_job,
            IntervalTrigger(seconds=self._tick, timezone=UTC),
            id="dispatch",
            name="start due polls",
            # A slow dispatch must not queue more behind it: the next tick does the same work.
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.add_job(
            self._flush,
            IntervalTrigger(seconds=FLUSH_SECONDS, timezone=UTC),
            id="state_flush",
            name="retry failed state writes",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    def every(
        self, seconds: float, job: Callable[[], Awaitable[None]], *, name: str, now: bool
    ) -> None:
        """Run another periodic coroutine (discovery) on the same scheduler, while polling."""

        async def gated() -> None:
            if self._may_poll():
                await self._until_stopped(job)

        self._scheduler.add_job(
            gated,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC) if now else None,
        )

    def run_soon(self, name: str) -> None:
        """Run a periodic job (discovery) at the next opportunity instead of at its interval."""
        if self._scheduler.get_job(name) is not None:
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    async def _dispatch_job(self) -> None:
        async def dispatch() -> None:
            self.dispatch()

        await self._until_stopped(dispatch)

    async def _until_stopped(self, job: Callable[[], Awaitable[None]]) -> None:
        # Shutting APScheduler down cancels the jobs it has running, and it logs a cancelled
        # job as one that raised: a clean stop must not print a traceback.
        try:
            await job()
        except asyncio.CancelledError:
            if not self._stopping:
                raise

    def dispatch(self) -> None:
        """Start polls for due promotions while there are free slots."""
        if self._stopping:
            return
        now = self._monotonic()
        self.heartbeat = now
        if not self._may_poll():
            # Not (or no longer) the poller: whatever is in flight is abandoned, unreported.
            for task in self._inflight:
                task.cancel()
            return
        free = self._concurrency - len(self._inflight)
        for target in self.plan.take_due(now, free):
            task = asyncio.create_task(self._poll(target), name=f"poll {target.promotion_id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        self._metrics.schedule_lag.set(self.plan.lag(now))
        self._metrics.active_promotions.set(self.plan.active_count())

    async def _poll(self, target: JobsTarget) -> PollOutcome:
        try:
            outcome = await self.poller.poll(target)
        except asyncio.CancelledError:
            self.plan.abandoned(target.promotion_id)
            raise
        if target.promotion_id not in self.plan:
            # Removed while this poll was in flight: undo what the poll just recorded.
            self.on_unwatched(target.promotion_id)
            return outcome
        if outcome.abandoned:
            # No longer the poller: nothing was seen or recorded; due again once it leads.
            self.plan.abandoned(target.promotion_id)
            return outcome
        self._observe(outcome)
        snapshot = self._store.get(target.promotion_id)
        active = snapshot is not None and snapshot.has_active
        self.plan.finished(target.promotion_id, self._monotonic(), active=active)
        # Fill the freed slot now rather than at the next tick.
        asyncio.get_running_loop().call_soon(self.dispatch)
        return outcome

    async def run_cycle(self) -> list[PollOutcome]:
        """Poll every promotion once, bounded by the concurrency (for `promo-monitor once`)."""
        limit = asyncio.Semaphore(self._concurrency)

        async def one(target: JobsTarget) -> PollOutcome:
            async with limit:
                return await self.poller.poll(target)

        return list(await asyncio.gather(*(one(target) for target in self.plan.targets)))

    async def _flush(self) -> None:
        # Only after a failed write: between a poll's put and its own persist the store is
        # dirty as a matter of course, and that poll writes it itself.
        if self._store.write_failed:
            await self._store.save(self._clock())

    async def stop(self, grace: float) -> None:
        """Stop scheduling; give in-flight polls `grace` seconds, then cancel them."""
        self._stopping = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        pending: Sequence[asyncio.Task[PollOutcome]] = [t for t in self._inflight if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
