"""The composition root: `Monitor.build()` gives every part its collaborators and callbacks
through its constructor (nothing is patched on afterwards); `serve()` runs them as uvicorn's
server reads: `Monitor.startup()` → wait for a signal → `Monitor.shutdown()`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import stamina
from prometheus_client import CollectorRegistry

from monitor import __version__
from monitor.client import ElasticPathClient
from monitor.client.budget import RequestBudget
from monitor.client.clock import StoreClock
from monitor.coordination import Fence, LeaderElector, Timing
from monitor.discovery import Discovery
from monitor.events import EventSink
from monitor.handover import Handover
from monitor.models import utc_now
from monitor.names import NameLookups, PromotionNames
from monitor.planner import PollPlan
from monitor.poller import Poller, PollOutcome
from monitor.rates import JobRates
from monitor.recent_activity import RecentActivity
from monitor.report import HINTS, Reporter
from monitor.scheduler import Lifecycle, PollScheduler
from monitor.settings import Settings
from monitor.sinks.client_reports import RequestReports
from monitor.sinks.logs import LogSink
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore
from monitor.status import MonitorFacts, StatusBoard
from monitor.watched_set import WatchedSet
from monitor.web import Health, WebServer, build_app, load_web_security

if TYPE_CHECKING:
    # kubernetes_asyncio costs ~35 MB of RSS to import: only a lease-coordinated monitor pays it.
    from monitor.kube import KubernetesLeases

# SIGTERM gives in-flight polls this long before they are cancelled, so that with the final
# state write the process is gone within 5 s (Kubernetes would wait 30 s before SIGKILL).
SHUTDOWN_GRACE_SECONDS = 3.0
# How long SIGTERM waits for the API server to take the lease back (the fence closes at once).
RELEASE_SECONDS = 2.0


async def serve(monitor: Monitor, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the process exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # (inside: a startup that fails, e.g. the port taken, still closes what it opened)
        await monitor.startup()
        await stop.wait()  # the main loop is APScheduler's: dispatch, discovery, state flush
    finally:
        await monitor.shutdown()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


@dataclass
class Monitor:
    """Everything one monitor process runs, wired together."""

    settings: Settings
    store: SnapshotStore
    metrics: MonitorMetrics
    client: ElasticPathClient
    names: PromotionNames
    poller: Poller
    scheduler: PollScheduler
    lifecycle: Lifecycle
    health: Health
    rates: JobRates
    web: WebServer | None = None
    # Only with coordination.mode: lease (monitor.coordination).
    leases: KubernetesLeases | None = None
    elector: LeaderElector | None = None
    _campaign: asyncio.Task[None] | None = None  # the elector running (startup to shutdown)

    async def startup(self) -> None:
        if self.leases is not None:
            await self.leases.open()
        await self.lifecycle.load_state()
        port = self.settings.server.port
        if self.web is not None:
            port = await self.web.start(self.settings.server.host, self.settings.server.port)
        self.lifecycle.start(port)
        if self.elector is not None:
            self._campaign = asyncio.create_task(self.elector.run(), name="leader election")
        self.health.started = True

    async def shutdown(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        self.health.stopping = True
        if self.elector is not None and self.leases is not None:
            if self._campaign is not None:
                self._campaign.cancel()
                await asyncio.gather(self._campaign, return_exceptions=True)
            # Hand over first, so a rollout costs seconds, not a lease duration; polls in flight
            # are abandoned (the fence closed), so they get no grace.
            with contextlib.suppress(TimeoutError):
                # Bounded: an unreachable API server must not hold the shutdown past its 5 s.
                await asyncio.wait_for(self.elector.release(), RELEASE_SECONDS)
            await self.leases.close()
            grace = 0.0
        await self.lifecycle.stop(grace)
        await self.client.close()
        if self.web is not None:
            await self.web.stop()

    async def run_once(self) -> list[PollOutcome]:
        """One poll of every promotion, for `promo-monitor once`."""
        try:
            return await self.lifecycle.run_once()
        finally:
            await self.client.close()

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = utc_now,
        serve_http: bool = True,
        coordinated: bool = True,
        events: EventSink | None = None,
    ) -> Monitor:
        # stamina would otherwise log its own events and count retries on prometheus_client's
        # global registry; the client reports retries through RequestReports instead.
        stamina.instrumentation.set_on_retry_hooks([])
        registry = registry or CollectorRegistry(auto_describe=True)
        events = events if events is not None else LogSink()
        store = SnapshotStore(settings.state.path)
        coordination = settings.coordination
        # With a lease, only the replica holding it polls; everything that polls or reports asks.
        elects = coordinated and coordination.mode == "lease"
        fence = Fence(coordination.renew_deadline_seconds) if elects else None
        may_poll = fence.allows if fence is not None else lambda: True
        names = PromotionNames()
        # The store's clock, from the Date of its answers: its job timestamps are judged by it.
        store_clock = StoreClock(clock)
        metrics = MonitorMetrics(
            registry,
            version=__version__,
            snapshots=lambda: iter(store),
            clock=clock,
            stuck_after=settings.poll.stuck_after_seconds,
            names=names,
            visible=may_poll,
            store_now=store_clock.now,
        )
        metrics.shard_count.set(settings.sharding.shard_count)
        activity = RecentActivity(clock, hints=HINTS.get)
        client = ElasticPathClient(
            settings.api,
            budget=RequestBudget(settings.request_rate),
            events=RequestReports(metrics, activity, events),
            user_agent=f"promo-monitor/{__version__}",
            store_clock=store_clock,
        )
        retention = settings.state.retention_days * 86_400
        rates = JobRates(window=retention)
        plan = PollPlan(
            interval=settings.poll.interval_seconds,
            active_interval=settings.poll.active_interval,
            anchor=time.monotonic(),
            min_interval=settings.poll.min_interval,
            max_interval=settings.poll.max_interval,
            budget=settings.request_rate / RequestBudget.SAFETY,
            rate=lambda pid: rates.rate(pid, clock()),
        )
        watching = WatchedSet(plan, store, metrics, names=names, activity=activity, rates=rates)
        poller = Poller(
            client,
            store.get,
            clock=clock,
            stuck_after=settings.poll.stuck_after_seconds,
            retention=retention,
            lookback=settings.poll.baseline_lookback_seconds,
        )
        handover = None
        if fence is not None:
            handover = Handover(
                store,
                lease=coordination.lease_name,
                clock=clock,
                lookback=settings.poll.baseline_lookback_seconds,
                patience=coordination.renew_deadline_seconds,
            )
        reporter = Reporter(
            store,
            metrics,
            events,
            plan=plan,
            names=names,
            activity=activity,
            clock=clock,
            may_report=may_poll,
            handover=handover,
            rates=rates,
        )
        scheduler = PollScheduler(
            poller,
            reporter,
            plan,
            store,
            metrics,
            concurrency=settings.poll.max_concurrent_polls,
            clock=clock,
            retention=retention,
            may_poll=may_poll,
        )
        lifecycle = Lifecycle(
            scheduler,
            settings,
            watching=watching,
            discovery=Discovery(client, settings),
            lookups=NameLookups(client, names),
            store=store,
            metrics=metrics,
            events=events,
            handover=handover,
            rates=rates,
        )
        # Liveness fails only when the loop has made no progress for several intervals.
        health = Health(
            progress=lambda: scheduler.heartbeat,
            stale_after=max(5 * settings.poll.interval_seconds, 300.0),
        )
        web = None
        if serve_http:

            def facts() -> MonitorFacts:
                """What the status page says of the monitor itself, read at each request."""
                return MonitorFacts(
                    version=__version__,
                    started_at=activity.started_at,
                    ready=health.started and not health.stopping,
                    requests_budget=client.budget.max_rate,
                    requests_rate_in_force=client.budget.rate,
                    requests_per_second=activity.requests_per_second(clock()),
                    shard_index=settings.sharding.index,
                    shard_count=settings.sharding.shard_count,
                    detection_delay=activity.detection_delay(clock()),
                )

            board = StatusBoard(
                snapshots=lambda: iter(store),
                watched=lambda: {t.promotion_id: t.kind.value for t in scheduler.plan.targets},
                activity=activity,
                facts=facts,
                clock=clock,
                stuck_after=settings.poll.stuck_after_seconds,
                names=names.get,
                planned=lambda pid: (
                    plan.poll_interval(pid) if pid in plan else None,
                    rates.rate(pid, clock()) * 86_400,
                ),
                store_now=store_clock.now,
            )
            security = load_web_security(settings.server)
            app = build_app(health, security, status=board.view, exposition=metrics.exposition)
            web = WebServer(app, security.ssl_context)
        leases, elector = None, None
        if fence is not None and handover is not None:
            from monitor.kube import KubernetesLeases  # noqa: PLC0415 - see the TYPE_CHECKING import

            assert coordination.namespace is not None  # resolved or refused by the settings
            assert coordination.identity is not None
            leases = KubernetesLeases(
                namespace=coordination.namespace,
                name=coordination.lease_name,
                # A renewal must not outlive the time the fence gives it.
                timeout=coordination.renew_deadline_seconds - coordination.retry_period_seconds,
            )
            timing = Timing(
                coordination.lease_duration_seconds,
                coordination.renew_deadline_seconds,
                coordination.retry_period_seconds,
            )
            elector = LeaderElector(
                leases, coordination.identity, timing, fence, lifecycle, record=handover
            )
        else:
            metrics.leader.set(1)
        return cls(
            settings,
            store,
            metrics,
            client,
            names,
            poller,
            scheduler,
            lifecycle,
            health,
            rates,
            web,
            leases,
            elector,
        )
