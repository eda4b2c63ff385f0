"""One poller per workload: replicas elect a leader through a Kubernetes Lease.

The election follows client-go's leaderelection (the same Lease fields, optimistic concurrency
through resourceVersion, expiry judged by when *this* replica saw the record change, never by
the record's timestamps, so clock skew between nodes does not matter). One rule is stricter:
the fence. A leader may poll only while less than `renew_deadline` has passed since the start
of its last *successful* renewal; counting from the first failed attempt instead (as library
electors do) would let it poll on after its lease could already be another replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from monitor.events import LeaderElected, LeaderLost, LeaseUnavailable, LeaseUnreachable

if TYPE_CHECKING:
    from monitor.handover import Handover  # what a leader writes on the Lease besides its lease
    from monitor.kube import KubernetesLeases  # (only loaded with coordination.mode: lease)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a coordination.k8s.io/v1 Lease says about its holder."""

    holder: str  # "" once released
    lease_duration: int  # seconds, as spec.leaseDurationSeconds
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None = None  # None for a record not yet written
    handover: str | None = None  # the annotation monitor.handover keeps on it


class LeaseConflictError(Exception):
    """Another replica wrote the Lease first (409): our view of it was stale."""


class LeaseUnavailableError(Exception):
    """The Kubernetes API did not answer, or refused the request."""


@dataclass(frozen=True, slots=True)
class Timing:
    lease_duration: int
    renew_deadline: float
    retry_period: float


def micro_time(epoch: float) -> str:
    """A Lease's MicroTime: RFC 3339 with exactly six fractional digits, in UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Fence:
    """Whether this replica may poll now: it holds the lease and renewed it recently enough, on
    its own clock (a leader cut off from the API server falls silent at the deadline)."""

    def __init__(self, renew_deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._renew_deadline = renew_deadline
        self._clock = clock
        self._renewed_at: float | None = None

    def renewed(self, started_at: float) -> None:
        """A renewal that was started at `started_at` (monotonic) succeeded."""
        self._renewed_at = started_at

    def close(self) -> None:
        self._renewed_at = None

    @property
    def deadline(self) -> float | None:
        return None if self._renewed_at is None else self._renewed_at + self._renew_deadline

    def allows(self) -> bool:
        deadline = self.deadline
        return deadline is not None and self._clock() < deadline


class ElectionReports(Protocol):
    """What the elector tells the replica it campaigns for, which acts on it and reports it
    (monitor.scheduler.Lifecycle): the elector itself logs nothing."""

    def elected(self, news: LeaderElected, handover: str | None) -> None:
        """Before the fence opens, with the Lease's handover record. `news.kept_state` is False
        when another replica held the lease since this one last did (its snapshot may be stale:
        start from a fresh baseline)."""

    def lost(self, news: LeaderLost) -> None:
        """Once the fence has closed."""

    def unavailable(self, news: LeaseUnavailable) -> None:
        """The Lease could not be read or written (a LeaseUnreachable while leading)."""


class LeaderElector:
    """Acquires and renews one Lease every retry period; reports gaining and losing it."""

    def __init__(
        self,
        api: KubernetesLeases,
        identity: str,
        timing: Timing,
        fence: Fence,
        reports: ElectionReports,
        *,
        record: Handover,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self.identity = identity
        self._timing = timing
        self.fence = fence
        self._reports = reports
        self._record = record
        self._clock = clock
        self._wall = wall
        self.leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this replica holds the lease (and may poll) afterwards."""
        held = await self._attempt()
        await self._record.settled(held)
        if not held:
            self.notice_fence()
        return held

    async def _attempt(self) -> bool:
        started = self._clock()
        try:
            current = await self._api.get()
        except LeaseUnavailableError as exc:
            self._lease_unavailable(str(exc))
            return False
        now_text = micro_time(self._wall())
        duration = self._timing.lease_duration
        if current is None:
            mine = LeaseRecord(self.identity, duration, now_text, now_text, 0)
            return await self._write(self._api.create, mine, started, kept_state=True)
        if not self.leading:
            self._record.seen(current.handover)  # (what it says was announced)
        if current != self._observed:
            self._observed = current
            self._observed_at = started
        held_by_other = bool(current.holder) and current.holder != self.identity
        if held_by_other and started < self._observed_at + current.lease_duration:
            return False
        ours = current.holder == self.identity
        # A successor keeps the record it found until it has read it (elected).
        mine = replace(
            current,
            holder=self.identity,
            lease_duration=duration,
            acquire_time=current.acquire_time if ours else now_text,
            renew_time=now_text,
            transitions=current.transitions if ours else current.transitions + 1,
            handover=self._record.text() if ours else current.handover,
        )
        # Only a lease still in our name means nobody polled since we last did.
        return await self._write(self._api.replace, mine, started, kept_state=ours)

    async def _write(
        self,
        call: Callable[[LeaseRecord], Awaitable[LeaseRecord]],
        record: LeaseRecord,
        started: float,
        *,
        kept_state: bool,
    ) -> bool:
        try:
            written = await call(record)
        except LeaseConflictError:
            return False
        except LeaseUnavailableError as exc:
            self._lease_unavailable(str(exc))
            return False
        self._observed = written
        self._observed_at = started
        if not self.leading:
            self.leading = True
            # Before the fence opens: the replica sets itself up before its first poll.
            self._reports.elected(
                LeaderElected(
                    identity=self.identity,
                    lease=self._api.name,
                    transitions=written.transitions,
                    kept_state=kept_state,
                ),
                written.handover,
            )
        self.fence.renewed(started)
        self._arm_watchdog()
        return True

    def _lease_unavailable(self, detail: str) -> None:
        # A leader failing to renew is news (its fence is closing); a follower's is routine.
        news = LeaseUnreachable if self.leading else LeaseUnavailable
        self._reports.unavailable(news(lease=self._api.name, detail=detail))

    def _arm_watchdog(self) -> None:
        # Notices the closed fence on time even while a renewal request hangs.
        deadline = self.fence.deadline
        if deadline is None:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
        delay = max(0.0, deadline - self._clock()) + 0.001
        self._watchdog = asyncio.get_running_loop().call_later(delay, self.notice_fence)

    def notice_fence(self) -> None:
        """Step down once the fence has closed (no successful renewal within the deadline)."""
        if self.leading and not self.fence.allows():
            self._step_down("renew_deadline_passed")

    def _step_down(self, reason: str) -> None:
        self.leading = False
        self.fence.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._reports.lost(LeaderLost(identity=self.identity, lease=self._api.name, reason=reason))

    async def run(self) -> None:
        """Campaign and renew until cancelled."""
        while True:
            try:
                await self.try_acquire_or_renew()
            except Exception as exc:
                # Whatever went wrong, the fence still closes on time; the next attempt may work.
                self._lease_unavailable(repr(exc)[:300])
                self.notice_fence()
            # (a new failure to hand over cuts the wait short: its write is the next renewal)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timing.retry_period):
                    await self._record.asked()

    async def release(self) -> None:
        """Give the lease up (on SIGTERM), so another replica takes over within a retry period."""
        if not self.leading:
            return
        self._step_down("released")
        observed = self._observed
        if observed is None or observed.holder != self.identity:
            return
        now_text = micro_time(self._wall())
        # As client-go does: no holder and a 1 s duration, so nobody waits for our lease to expire.
        released = replace(
            observed,
            holder="",
            lease_duration=1,
            acquire_time=now_text,
            renew_time=now_text,
            handover=self._record.text(),
        )
        with contextlib.suppress(LeaseConflictError, LeaseUnavailableError):
            self._observed = await self._api.replace(released)
