"""The composition root: builds every part from settings, runs until told to stop, tears down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry

from monitor import __version__
from monitor.activity import RecentActivity
from monitor.budget import RequestBudget
from monitor.client import ApiError, ElasticPathClient, JobsTarget
from monitor.coordination import Fence, LeaderElector, Timing
from monitor.discovery import Discovery
from monitor.kube import KubernetesLeases
from monitor.leadership import Leadership
from monitor.models import PromotionKind, PromotionSnapshot, utc_now
from monitor.names import PromotionNames, promotion_name
from monitor.planner import PollPlan
from monitor.poller import HINTS, Poller, PollOutcome
from monitor.scheduler import PollScheduler
from monitor.settings import ConfigError, Settings
from monitor.sinks.logs import LogSink
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore
from monitor.status import MonitorFacts, StatusBoard
from monitor.web import Health, WebServer, build_app, load_web_security

# SIGTERM gives in-flight polls this long before they are cancelled, so that with the final
# state write the process is gone within 5 s (Kubernetes would wait 30 s before SIGKILL).
SHUTDOWN_GRACE_SECONDS = 4.0
# How long SIGTERM waits for the API server to take the lease back (the fence closes at once).
RELEASE_SECONDS = 2.0


class ClientEventsToMetrics:
    """Feeds what the client reports into metrics and log events."""

    def __init__(self, metrics: MonitorMetrics, activity: RecentActivity) -> None:
        self._metrics = metrics
        self._activity = activity
        self._log = structlog.get_logger()

    def request_done(self, endpoint: str, code: str) -> None:
        self._metrics.api_requests.labels(endpoint, code).inc()
        self._activity.request_done()

    def token_refreshed(self, expires_in: float) -> None:
        self._log.info("token_refreshed", expires_in=expires_in)

    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None:
        self._metrics.retries.labels(endpoint, error.reason).inc()
        self._log.info(
            "request_retried",
            endpoint=endpoint,
            reason=error.reason,
            attempt=attempt,
            http_status=error.http_status,
            retry_after=error.retry_after,
        )

    def budget_waited(self, seconds: float) -> None:
        self._metrics.budget_wait.inc(seconds)


@dataclass
class Monitor:
    """Everything one monitor process runs, wired together."""

    settings: Settings
    registry: CollectorRegistry
    store: SnapshotStore
    metrics: MonitorMetrics
    client: ElasticPathClient
    poller: Poller
    discovery: Discovery
    scheduler: PollScheduler
    health: Health
    web: WebServer | None
    clock: Callable[[], float]
    activity: RecentActivity
    names: PromotionNames
    # Only with coordination.mode: lease (monitor.coordination).
    leases: KubernetesLeases | None = None
    elector: LeaderElector | None = None
    _election: asyncio.Task[None] | None = None
    # Promotions whose name the last discovery run listed (no lookup needed), and those whose
    # lookup failed (warned once, until it works again).
    _listed: set[str] = field(default_factory=set)
    _unnamed: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = utc_now,
        serve_http: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Monitor:
        registry = registry or CollectorRegistry(auto_describe=True)
        store = SnapshotStore(settings.state.path)
        coordination = settings.coordination
        # With a lease, only the replica holding it polls; everything that polls or reports asks.
        fence = Fence(coordination.renew_deadline_seconds) if coordination.mode == "lease" else None
        may_poll = fence.allows if fence is not None else lambda: True

        def snapshots() -> Iterator[PromotionSnapshot]:
            return iter(store)

        names = PromotionNames()
        metrics = MonitorMetrics(
            registry,
            version=__version__,
            snapshots=snapshots,
            clock=clock,
            stuck_after=settings.poll.stuck_after_seconds,
            names=names,
            visible=may_poll,
        )
        activity = RecentActivity(clock, hints=HINTS.get)
        client = ElasticPathClient(
            settings.api,
            budget=RequestBudget(settings.request_rate),
            events=ClientEventsToMetrics(metrics, activity),
            user_agent=f"promo-monitor/{__version__}",
        )
        poller = Poller(
            client,
            store,
            metrics,
            LogSink(names=names.get),
            clock=clock,
            stuck_after=settings.poll.stuck_after_seconds,
            retention=settings.state.retention_days * 86_400,
            lookback=settings.poll.baseline_lookback_seconds,
            may_report=may_poll,
        )
        try:
            discovery = Discovery(client, settings, env)
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
        plan = PollPlan(
            interval=settings.poll.interval_seconds,
            active_interval=settings.poll.active_interval,
            anchor=time.monotonic(),
        )
        scheduler = PollScheduler(
            poller,
            plan,
            store,
            metrics,
            concurrency=settings.poll.max_concurrent_polls,
            clock=clock,
            observe=activity.polled,
            may_poll=may_poll,
        )
        # Liveness fails only when the loop has made no progress for several intervals.
        health = Health(
            progress=lambda: scheduler.heartbeat,
            stale_after=max(5 * settings.poll.interval_seconds, 300.0),
            version=__version__,
        )
        web = None
        if serve_http:

            def facts() -> MonitorFacts:
                return MonitorFacts(
                    version=__version__,
                    started_at=activity.started_at,
                    ready=health.started and not health.stopping,
                    requests_budget=client.budget.max_rate,
                    requests_rate_in_force=client.budget.rate,
                    requests_per_second=activity.requests_per_second(clock()),
                    shard_index=discovery.shard_index,
                    shard_count=discovery.shard_count,
                )

            board = StatusBoard(
                snapshots=snapshots,
                watched=lambda: {t.promotion_id: t.kind.value for t in scheduler.targets},
                activity=activity,
                facts=facts,
                clock=clock,
                stuck_after=settings.poll.stuck_after_seconds,
                names=names.get,
            )
            security = load_web_security(settings.server)
            app = build_app(registry, health, security, status=board.view)
            web = WebServer(app, security.ssl_context)
        leases = elector = None
        if fence is not None:
            assert coordination.namespace is not None  # resolved or refused by the settings
            assert coordination.identity is not None
            leases = KubernetesLeases(
                namespace=coordination.namespace,
                name=coordination.lease_name,
                # A renewal must not outlive the time the fence gives it.
                timeout=coordination.renew_deadline_seconds - coordination.retry_period_seconds,
                env=os.environ if env is None else env,
            )
            leadership = Leadership(
                store, plan, metrics, scheduler, discovery=settings.discovery.enabled
            )
            elector = LeaderElector(
                leases,
                coordination.identity,
                Timing(
                    coordination.lease_duration_seconds,
                    coordination.renew_deadline_seconds,
                    coordination.retry_period_seconds,
                ),
                fence,
                on_elected=leadership.elected,
                on_lost=leadership.lost,
            )
        else:
            metrics.leader.set(1)
        monitor = cls(
            settings,
            registry,
            store,
            metrics,
            client,
            poller,
            discovery,
            scheduler,
            health,
            web,
            clock,
            activity,
            names,
            leases,
            elector,
        )
        metrics.shard_count.set(discovery.shard_count)
        # The scheduler calls this for a promotion removed while its poll was in flight.
        scheduler.on_unwatched = monitor.unwatch
        return monitor

    @property
    def targets(self) -> list[JobsTarget]:
        return self.scheduler.targets

    @property
    def _log(self) -> structlog.typing.FilteringBoundLogger:
        logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
        return logger

    def load_state(self) -> None:
        discarded = self.store.load()
        if discarded is not None:
            aside = discarded.path.with_name(discarded.path.name + ".discarded")
            with contextlib.suppress(OSError):
                os.replace(discarded.path, aside)
            self._log.warning(
                "state_discarded",
                path=str(discarded.path),
                reason=discarded.reason,
                kept_as=str(aside),
                detail="starting from a fresh baseline",
            )
        explicit = self.discovery.explicit()
        # With discovery on, saved state of discovered promotions is kept until the first
        # discovery says whether they are still watched; dropping it now would re-baseline
        # them and swallow whatever changed while the monitor was down.
        self.watch(explicit, authoritative=not self.settings.discovery.enabled)

    def watch(
        self,
        targets: Mapping[str, JobsTarget],
        *,
        authoritative: bool,
        discovered: frozenset[str] = frozenset(),
    ) -> tuple[int, int]:
        """Make the plan poll exactly `targets`; returns (added, removed)."""
        plan = self.scheduler.plan
        now = time.monotonic()
        added = 0
        for pid, target in targets.items():
            if pid in plan:
                plan.add(target, now)  # keeps its place in the schedule; takes a new filter
                continue
            added += 1
            snapshot = self.store.get(pid)
            active = snapshot is not None and any(j.is_active for j in snapshot.jobs.values())
            plan.add(target, now, active=active)
            self.metrics.watch(pid)
            if pid in discovered:
                self._log.info("promotion_added", promotion_id=pid, kind=target.kind.value)
        removed = [t.promotion_id for t in plan.targets if t.promotion_id not in targets]
        for pid in removed:
            plan.remove(pid)
            self.unwatch(pid)
            self._log.info("promotion_removed", promotion_id=pid)
        if authoritative:
            dropped = self.store.retain(set(targets))
            if dropped:
                self._log.info("state_pruned", promotions=len(dropped))
        kinds = Counter(t.kind for t in plan.targets)
        for kind in PromotionKind:
            self.metrics.promotions.labels(kind.value).set(kinds[kind])
        return added, len(removed)

    def unwatch(self, promotion_id: str) -> None:
        """Forget a promotion that is no longer watched: its series and its snapshot."""
        self.metrics.forget(promotion_id)
        self.store.drop(promotion_id)
        self.client.forget(promotion_id)
        self.activity.forget(promotion_id)
        self.names.forget(promotion_id)

    async def discover(self) -> None:
        """One discovery run; a failure keeps the last known list."""
        try:
            found = await self.discovery.discover(self.clock())
        except ApiError as exc:
            self.metrics.discovery_errors.labels(exc.reason).inc()
            self._log.warning("discovery_failed", reason=exc.reason, detail=str(exc))
            return
        targets = found.targets
        if not found.complete:
            # Pages overlapped or the store ignored the offset: what was listed is added, and
            # nothing is removed on the word of a partial list.
            targets = {t.promotion_id: t for t in self.targets} | dict(targets)
            self._log.warning(
                "discovery_incomplete",
                detail="the store's promotion list could not be read whole; nothing removed",
            )
        added, removed = self.watch(
            targets, authoritative=found.complete, discovered=found.discovered
        )
        self._listed = set(found.names)
        for pid, (kind, name) in found.names.items():
            self.names.set(pid, kind, name)
        self._log.info(
            "discovery_completed",
            promotions=len(found.targets),
            discovered=len(found.discovered),
            added=added,
            removed=removed,
        )
        self.scheduler.dispatch()
        await self.look_up_names()

    async def look_up_names(self) -> None:
        """Fetch the name of each watched promotion that no discovery list named.

        One request at a time, so polls waiting for the budget are never queued behind a burst
        of lookups; a failed lookup keeps the last known name.
        """
        for target in self.targets:
            pid = target.promotion_id
            if pid in self._listed:
                continue
            try:
                promotion = await self.client.get_promotion(target.kind, pid)
            except ApiError as exc:
                if pid not in self._unnamed:
                    self._unnamed.add(pid)
                    self._log.warning(
                        "name_lookup_failed", promotion_id=pid, reason=exc.reason, detail=str(exc)
                    )
                continue
            self._unnamed.discard(pid)
            name = promotion_name(promotion)
            if name is not None and target.promotion_id in self.scheduler.plan:
                self.names.set(pid, target.kind, name)

    async def start(self) -> None:
        if self.leases is not None:
            await self.leases.open()
        self.load_state()
        port = self.settings.server.port
        if self.web is not None:
            port = await self.web.start(self.settings.server.host, self.settings.server.port)
        self.scheduler.start()
        # Discovery names what it lists and looks up the rest; without it, names are looked up.
        refresh = self.discover if self.settings.discovery.enabled else self.look_up_names
        self.scheduler.every(
            self.settings.discovery.interval_seconds, refresh, name="discovery", now=True
        )
        if self.elector is not None:
            self._election = asyncio.create_task(self.elector.run(), name="leader election")
        self.health.started = True
        self._log.info(
            "monitor_started",
            version=__version__,
            promotions=len(self.targets),
            discovery=self.settings.discovery.enabled,
            shard=f"{self.discovery.shard_index}/{self.discovery.shard_count}",
            base_url=self.settings.api.base_url,
            metrics_port=port,
            interval_seconds=self.settings.poll.interval_seconds,
            active_interval_seconds=self.settings.poll.active_interval,
            requests_per_second=self.settings.request_rate,
            state_path=str(self.store.path),
            coordination=self.settings.coordination.mode,
        )

    async def run_once(self) -> list[PollOutcome]:
        """One poll of every promotion, for `promo-monitor once`."""
        self.load_state()
        try:
            if self.settings.discovery.enabled:
                await self.discover()
            else:
                await self.look_up_names()
            return await self.scheduler.run_cycle()
        finally:
            await self.client.close()

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        self.health.stopping = True
        if self.elector is not None and self.leases is not None:
            if self._election is not None:
                self._election.cancel()
                await asyncio.gather(self._election, return_exceptions=True)
            # Hand over first, so a rollout costs seconds, not a lease duration; polls in flight
            # are abandoned (the fence closed), so they get no grace.
            with contextlib.suppress(TimeoutError):
                # Bounded: an unreachable API server must not hold the shutdown past its 5 s.
                await asyncio.wait_for(self.elector.release(), RELEASE_SECONDS)
            await self.leases.close()
            grace = 0.0
        await self.scheduler.stop(grace)
        await self.client.close()
        saved = True
        try:
            await self.store.persist(self.clock())
        except OSError as exc:
            saved = False
            self._log.error(
                "state_write_failed", path=str(self.store.path), detail=exc.strerror or str(exc)
            )
        self._log.info("monitor_stopped", state_saved=saved)
        if self.web is not None:
            await self.web.stop()


async def serve(monitor: Monitor, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the process exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await monitor.start()
    try:
        await stop.wait()
    finally:
        await monitor.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
