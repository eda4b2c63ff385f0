"""The composition root: builds every part from settings, runs until told to stop, tears down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from monitor import __version__
from monitor.budget import RequestBudget
from monitor.client import ApiError, ElasticPathClient, JobsTarget
from monitor.models import PromotionSnapshot, utc_now
from monitor.poller import Poller, PollOutcome
from monitor.scheduler import PollScheduler
from monitor.settings import Settings
from monitor.sinks.logs import LogSink
from monitor.sinks.metrics import MonitorMetrics
from monitor.state import SnapshotStore
from monitor.web import Health, WebServer, build_app

# SIGTERM gives in-flight polls this long before they are cancelled; Kubernetes waits 30 s.
SHUTDOWN_GRACE_SECONDS = 5.0


class ClientEventsToMetrics:
    """Feeds what the client reports into metrics and log events."""

    def __init__(self, metrics: MonitorMetrics) -> None:
        self._metrics = metrics
        self._log = structlog.get_logger()

    def request_done(self, endpoint: str, code: str) -> None:
        self._metrics.api_requests.labels(endpoint, code).inc()

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
    scheduler: PollScheduler
    health: Health
    web: WebServer | None
    clock: Callable[[], float]

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = utc_now,
        serve_http: bool = True,
    ) -> Monitor:
        registry = registry or CollectorRegistry(auto_describe=True)
        store = SnapshotStore(settings.state.path)

        def snapshots() -> Iterator[PromotionSnapshot]:
            return iter(store)

        metrics = MonitorMetrics(
            registry,
            version=__version__,
            snapshots=snapshots,
            clock=clock,
            stuck_after=settings.poll.stuck_after_seconds,
        )
        client = ElasticPathClient(
            settings.api,
            budget=RequestBudget(settings.api.max_requests_per_second),
            events=ClientEventsToMetrics(metrics),
            user_agent=f"promo-monitor/{__version__}",
        )
        poller = Poller(
            client,
            store,
            metrics,
            LogSink(),
            clock=clock,
            stuck_after=settings.poll.stuck_after_seconds,
        )
        targets = [client.target(p.id, p.kind, p.filter) for p in settings.promotions]
        scheduler = PollScheduler(
            poller,
            targets,
            store,
            interval=settings.poll.interval_seconds,
            concurrency=settings.poll.max_concurrent_polls,
            clock=clock,
        )
        # Liveness fails only when the loop has made no progress for several cycles.
        health = Health(
            progress=lambda: scheduler.heartbeat,
            stale_after=max(5 * settings.poll.interval_seconds, 300.0),
            version=__version__,
        )
        web = WebServer(build_app(registry, health)) if serve_http else None
        return cls(
            settings, registry, store, metrics, client, poller, scheduler, health, web, clock
        )

    @property
    def targets(self) -> list[JobsTarget]:
        return self.scheduler.targets

    def load_state(self) -> None:
        log = structlog.get_logger()
        discarded = self.store.load()
        if discarded is not None:
            aside = discarded.path.with_name(discarded.path.name + ".discarded")
            with contextlib.suppress(OSError):
                os.replace(discarded.path, aside)
            log.warning(
                "state_discarded",
                path=str(discarded.path),
                reason=discarded.reason,
                kept_as=str(aside),
                detail="starting from a fresh baseline",
            )
        dropped = self.store.retain({t.promotion_id for t in self.targets})
        if dropped:
            log.info("state_pruned", promotions=len(dropped))
        for target in self.targets:
            self.metrics.watch(target.promotion_id)

    async def start(self) -> None:
        self.load_state()
        port = self.settings.server.port
        if self.web is not None:
            port = await self.web.start(self.settings.server.host, self.settings.server.port)
        self.scheduler.heartbeat = time.monotonic()
        self.scheduler.start()
        self.health.started = True
        structlog.get_logger().info(
            "monitor_started",
            version=__version__,
            promotions=len(self.targets),
            base_url=self.settings.api.base_url,
            metrics_port=port,
            interval_seconds=self.settings.poll.interval_seconds,
            state_path=str(self.store.path),
        )

    async def run_once(self) -> list[PollOutcome]:
        """One poll of every promotion, for `promo-monitor once`."""
        self.load_state()
        try:
            return await self.scheduler.run_cycle()
        finally:
            await self.client.close()

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        self.health.stopping = True
        await self.scheduler.stop(grace)
        await self.client.close()
        saved = True
        try:
            await self.store.persist(self.clock())
        except OSError as exc:
            saved = False
            structlog.get_logger().error(
                "state_write_failed", path=str(self.store.path), detail=exc.strerror or str(exc)
            )
        structlog.get_logger().info("monitor_stopped", state_saved=saved)
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
