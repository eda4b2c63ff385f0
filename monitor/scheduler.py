"""APScheduler wiring: the poll cycle, and a flush that retries state writes that failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.client import JobsTarget
from monitor.poller import Poller, PollOutcome
from monitor.state import SnapshotStore

FLUSH_SECONDS = 30.0


class PollScheduler:
    """Runs a poll cycle every interval: every promotion once, concurrently and bounded."""

    def __init__(
        self,
        poller: Poller,
        targets: Sequence[JobsTarget],
        store: SnapshotStore,
        *,
        interval: float,
        concurrency: int,
        clock: Callable[[], float],
    ) -> None:
        self.poller = poller
        self.targets = list(targets)
        self._store = store
        self._interval = interval
        self._concurrency = concurrency
        self._clock = clock
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._inflight: set[asyncio.Task[object]] = set()
        self._log = structlog.get_logger()
        # Monotonic time of the last finished poll; /healthz reads it to tell a live loop.
        self.heartbeat = time.monotonic()
        self.cycles = 0

    def start(self) -> None:
        self._scheduler.add_job(
            self._tracked_cycle,
            IntervalTrigger(seconds=self._interval, timezone=UTC),
            id="poll_cycle",
            name="poll every promotion",
            # A cycle slower than the interval must not pile up a queue of cycles behind it.
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

    async def _tracked_cycle(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self.run_cycle()
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def run_cycle(self) -> list[PollOutcome]:
        """Poll every target once; the request budget paces them, the semaphore bounds them."""
        limit = asyncio.Semaphore(self._concurrency)

        async def one(target: JobsTarget) -> PollOutcome:
            async with limit:
                outcome = await self.poller.poll(target)
            self.heartbeat = time.monotonic()
            return outcome

        outcomes = await asyncio.gather(*(one(target) for target in self.targets))
        self.cycles += 1
        return list(outcomes)

    async def _flush(self) -> None:
        if not self._store.dirty:
            return
        try:
            await self._store.persist(self._clock())
            self._log.info("state_write_recovered", path=str(self._store.path))
        except OSError as exc:
            self._log.error(
                "state_write_failed", path=str(self._store.path), detail=exc.strerror or str(exc)
            )

    async def stop(self, grace: float) -> None:
        """Stop scheduling; give in-flight polls `grace` seconds, then cancel them."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        pending = {task for task in self._inflight if not task.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
