"""The loop: APScheduler dispatches due polls (which promotion when is the PollPlan's decision)
and runs the upkeep (discovery, name lookups, retries of failed state writes). A poll's outcome
goes to monitor.report; the other events are emitted here, where the loop runs the parts that
answer with values (state, watching, names, the elector).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor import __version__
from monitor.client import ApiError, JobsTarget
from monitor.discovery import Discovery
from monitor.events import (
    DiscoveryCompleted,
    DiscoveryFailed,
    DiscoveryIncomplete,
    EventSink,
    LeaderElected,
    LeaderLost,
    LeaseUnavailable,
    MonitorStarted,
    MonitorStopped,
    NameLookupFailed,
    PromotionAdded,
    PromotionRemoved,
    StateDiscarded,
    StatePruned,
)
from monitor.handover import Handover
from monitor.names import NameLookups
from monitor.planner import PollPlan
from monitor.poller import Poller, PollOutcome
from monitor.rates import JobRates
from monitor.report import Reporter
from monitor.settings import Settings
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore
from monitor.watched_set import Applied, WatchedSet

FLUSH_SECONDS = 30.0


class PollScheduler:
    """Keeps up to `concurrency` polls in flight, taking due promotions from the plan."""

    def __init__(
        self,
        poller: Poller,
        reporter: Reporter,
        plan: PollPlan,
        store: SnapshotStore,
        metrics: MonitorMetrics,
        *,
        concurrency: int,
        clock: Callable[[], float],
        retention: float,
        monotonic: Callable[[], float] = time.monotonic,
        may_poll: Callable[[], bool] = lambda: True,
    ) -> None:
        self.poller = poller
        self.reporter = reporter
        # False while another replica holds the coordination lease (monitor.coordination).
        self._may_poll = may_poll
        self.plan = plan
        self._store = store
        self._metrics = metrics
        self._concurrency = concurrency
        self.clock = clock
        self._retention = retention
        self._monotonic = monotonic
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._inflight: set[asyncio.Task[PollOutcome]] = set()
        self._stopping = False
        # Monotonic time of the last dispatch tick; /healthz reads it to tell a live loop. A tick,
        # not a finished poll: a monitor with nothing to poll (an empty shard) is alive too.
        self.heartbeat = monotonic()
        # Fine enough that an active promotion is polled close to its due time.
        self._tick = min(1.0, max(0.05, plan.active_interval / 10))

    @property
    def running(self) -> bool:
        """Started and not stopped: the loop dispatches polls."""
        return self._scheduler.running and not self._stopping

    def start(self) -> None:
        self.heartbeat = self._monotonic()
        self._add(self._dispatch_job, self._tick, "dispatch", now=True)
        self._add(self._flush, FLUSH_SECONDS, "state_flush", now=False)  # (retries, prunes)
        self._scheduler.start()

    def every(self, seconds: float, job: Callable[[], Awaitable[None]], *, name: str) -> None:
        """Run another periodic coroutine (discovery) on the same scheduler, while polling."""

        async def gated() -> None:
            # Shutting APScheduler down cancels the jobs it has running, and it logs a cancelled
            # job as one that raised: a clean stop must not print a traceback.
            try:
                if self._may_poll():
                    await job()
            except asyncio.CancelledError:
                if not self._stopping:
                    raise

        self._add(gated, seconds, name, now=True)

    def _add(
        self, job: Callable[[], Awaitable[None]], seconds: float, name: str, now: bool
    ) -> None:
        # A slow run must not queue more behind it: the next does the same work.
        first = {"misfire_grace_time": None, "next_run_time": datetime.now(UTC)} if now else {}
        trigger = IntervalTrigger(seconds=seconds, timezone=UTC)
        self._scheduler.add_job(
            job, trigger, id=name, name=name, max_instances=1, coalesce=True, **first
        )

    def run_soon(self, name: str) -> None:
        """Run a periodic job (discovery) at the next opportunity instead of at its interval."""
        if self._scheduler.get_job(name) is not None:
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    async def _dispatch_job(self) -> None:
        # (APScheduler runs a coroutine function on the loop; dispatch never awaits, so a stop
        # cannot cancel it midway)
        self.dispatch()

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
            reported = await self.reporter.report(outcome)
        except asyncio.CancelledError:
            self.plan.abandoned(target.promotion_id)
            raise
        if not reported:
            # No longer the poller (or no longer watched): due again once it leads.
            self.plan.abandoned(target.promotion_id)
            return outcome
        self.plan.finished(
            target.promotion_id, self._monotonic(), active=outcome.active, requests=outcome.requests
        )
        # Fill the freed slot now rather than at the next tick.
        asyncio.get_running_loop().call_soon(self.dispatch)
        return outcome

    async def run_cycle(self) -> list[PollOutcome]:
        """Poll every promotion once, bounded by the concurrency (for `promo-monitor once`)."""
        limit = asyncio.Semaphore(self._concurrency)

        async def one(target: JobsTarget) -> PollOutcome:
            async with limit:
                outcome = await self.poller.poll(target)
                await self.reporter.report(outcome)
                return outcome

        return list(await asyncio.gather(*(one(target) for target in self.plan.targets)))

    async def _flush(self) -> None:
        # Reported failures are kept as long as the jobs they came from (the retention).
        self._store.prune_ledger(self.clock() - self._retention)
        # Only after a failed write: between a poll's put and its own persist the store is
        # dirty as a matter of course, and that poll writes it itself.
        if self._store.write_failed:
            await self.reporter.save()

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
            await asyncio.gather(*late, return_exceptions=True)


class Lifecycle:
    """What the loop runs besides polls, and the events they make: the saved state at start,
    start and stop, discovery and name lookups, and what the elector reports (ElectionReports)."""

    def __init__(
        self,
        scheduler: PollScheduler,
        settings: Settings,
        *,
        watching: WatchedSet,
        discovery: Discovery,
        lookups: NameLookups,
        store: SnapshotStore,
        metrics: MonitorMetrics,
        events: EventSink,
        handover: Handover | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rates: JobRates,
    ) -> None:
        self._rates = rates  # warmed by what discovery saw created or updated lately
        self._scheduler = scheduler
        self._handover = handover
        self._settings = settings
        self._watching = watching
        self._discovery = discovery
        self._lookups = lookups
        self._store = store
        self._metrics = metrics
        self._events = events
        self._monotonic = monotonic
        self._clock = scheduler.clock

    # start and stop

    async def load_state(self) -> None:
        """Read the saved state (a torn or foreign file is set aside), watch the configured
        promotions, and announce what a stopped process still owed."""
        discarded = self._store.load()
        if discarded is not None:
            aside = discarded.set_aside()
            self._events.emit(
                StateDiscarded(
                    path=str(discarded.path), reason=discarded.reason, kept_as=str(aside)
                )
            )
        # With discovery on, saved state of discovered promotions is kept until the first
        # discovery says whether they are still watched; dropping it now would re-baseline
        # them and swallow whatever changed while the monitor was down.
        self._apply(self._discovery.explicit(), authoritative=not self._settings.discovery.enabled)
        now = self._clock()
        for snapshot in self._store:  # the job rates rest on the jobs the state holds
            self._rates.held(snapshot, now)
        await self._scheduler.reporter.announce_owed()

    def start(self, port: int) -> None:
        """Start the loop; `port` is where /metrics ended up (for the monitor_started line)."""
        self._scheduler.start()
        self._scheduler.every(
            self._settings.discovery.interval_seconds, self.refresh, name="discovery"
        )
        settings = self._settings
        self._events.emit(
            MonitorStarted(
                version=__version__,
                promotions=len(self._scheduler.plan.targets),
                discovery=settings.discovery.enabled,
                shard=f"{self._discovery.shard_index}/{self._discovery.shard_count}",
                base_url=settings.api.base_url,
                metrics_port=port,
                interval_seconds=settings.poll.interval_seconds,
                active_interval_seconds=settings.poll.active_interval,
                requests_per_second=settings.request_rate,
                state_path=str(self._store.path),
                coordination=settings.coordination.mode,
            )
        )

    async def stop(self, grace: float) -> None:
        """Stop the loop (in-flight polls get `grace` seconds), then write the whole state."""
        await self._scheduler.stop(grace)
        saved = await self._scheduler.reporter.save(compact=True)
        self._events.emit(MonitorStopped(state_saved=saved))

    async def run_once(self) -> list[PollOutcome]:
        """One poll of every promotion, for `promo-monitor once`."""
        await self.load_state()
        await self.refresh()
        return await self._scheduler.run_cycle()

    # the periodic upkeep

    async def refresh(self) -> None:
        """Discovery names what it lists and looks up the rest; without it, names are looked up."""
        if self._settings.discovery.enabled:
            await self.discover()
        else:
            await self.look_up_names()

    async def discover(self) -> None:
        """One discovery run; a failure keeps the last known list."""
        try:
            found = await self._discovery.discover(self._clock(), self._store.active)
        except ApiError as exc:
            self._metrics.discovery_errors.labels(exc.reason).inc()
            self._events.emit(DiscoveryFailed(reason=exc.reason, detail=str(exc)))
            return
        targets = found.targets
        if not found.complete:
            # Pages overlapped or the store ignored the offset: what was listed is added, and
            # nothing is removed on the word of a partial list.
            targets = {t.promotion_id: t for t in self._scheduler.plan.targets} | dict(targets)
            self._events.emit(
                DiscoveryIncomplete(
                    detail="the store's promotion list could not be read whole; nothing removed"
                )
            )
        applied = self._apply(targets, authoritative=found.complete, discovered=found.discovered)
        for pid, updated_at in found.touched.items():
            self._rates.warm(pid, updated_at)
        self._lookups.listed(found.names, found.listed)
        self._events.emit(
            DiscoveryCompleted(
                promotions=len(targets),
                discovered=len(found.discovered),
                added=len(applied.added),
                removed=len(applied.removed),
            )
        )
        if self._scheduler.running:  # (`once` polls every promotion itself, once)
            self._scheduler.dispatch()
        await self.look_up_names()

    async def look_up_names(self) -> None:
        plan = self._scheduler.plan
        failed = await self._lookups.look_up(plan.targets, lambda pid: pid in plan)
        for pid, exc in failed:
            self._events.emit(
                NameLookupFailed(promotion_id=pid, reason=exc.reason, detail=str(exc))
            )

    def _apply(
        self,
        targets: Mapping[str, JobsTarget],
        *,
        authoritative: bool,
        discovered: frozenset[str] = frozenset(),
    ) -> Applied:
        applied = self._watching.apply(targets, authoritative=authoritative)
        for target in applied.added:
            # (Configured promotions are announced by monitor_started, not one by one.)
            if target.promotion_id in discovered:
                self._events.emit(
                    PromotionAdded(promotion_id=target.promotion_id, kind=target.kind.value)
                )
        for pid in applied.removed:
            self._events.emit(PromotionRemoved(promotion_id=pid))
        if applied.pruned:
            self._events.emit(StatePruned(promotions=applied.pruned))
        return applied

    # what the elector reports (coordination.mode: lease)

    def elected(self, news: LeaderElected, handover: str | None) -> None:
        if not news.kept_state:
            # Another replica polled since this one last did: a snapshot from back then would
            # announce again what that replica already reported. A fresh baseline instead (its
            # lookback and the handover record catch what failed during the handover).
            self._watching.start_afresh()
        if self._handover is not None and (ignored := self._handover.take(handover)):
            self._events.emit(ignored)
        plan = self._scheduler.plan
        for target in plan.targets:
            self._metrics.watch(target.promotion_id)
        # It has been silent for at least a renew deadline: catch up now, not at the next slot.
        plan.due_all(self._monotonic())
        self._metrics.leader.set(1)
        # Discovery and name lookups ran gated while it stood by: now, not an interval later.
        self._scheduler.run_soon("discovery")
        self._events.emit(news)

    def lost(self, news: LeaderLost) -> None:
        self._metrics.leader.set(0)
        self._events.emit(news)

    def unavailable(self, news: LeaseUnavailable) -> None:
        self._events.emit(news)
