"""What the monitor saw lately, in memory, for the status page: each promotion's last poll,
recent failures and shortfalls, poll errors, the request rate and the detection delay.

Bounded (rings, one record per watched promotion): a store that fails all day costs the memory
of a quiet one. A restart forgets it; failed jobs still in the snapshot are shown from there.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from monitor.models import Job, single_line

if TYPE_CHECKING:
    from monitor.poller import PollOutcome

RECENT_FAILURES: Final = 200
RECENT_POLL_ERRORS: Final = 50
RATE_WINDOW_SECONDS: Final = 60
DELAY_WINDOW_SECONDS: Final = 3600
MAX_DELAYS: Final = 10_000  # the last hour's, or the most recent ones of a busy hour
MAX_DETAIL_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class PollRecord:
    """The last poll of one promotion."""

    at: float
    ok: bool
    reason: str | None = None
    last_success: float | None = None
    failing_since: float | None = None  # the first failed poll since the last success
    incomplete: str | None = None  # why a poll that worked could not read the whole listing


@dataclass(frozen=True, slots=True)
class FailureReport:
    """A job that failed, or made fewer codes than asked (a shortfall)."""

    promotion_id: str
    job_id: str
    job_type: str
    error: str | None
    at: float | None  # when the job reached its status, as the API tells
    seen_at: float | None = None  # when the monitor saw it; None when known only from the snapshot
    kind: Literal["failed", "shortfall"] = "failed"
    job_name: str | None = None
    requested: int | None = None  # codes asked for, for shortfalls
    generated: int | None = None  # codes made, for shortfalls

    @property
    def when(self) -> float:
        return self.at if self.at is not None else (self.seen_at or 0.0)

    @staticmethod
    def of_job(promotion_id: str, job: Job, seen_at: float | None = None) -> FailureReport:
        """A failed job's report, or a shortfall's (with the codes asked for and made)."""
        short = job.shortfall
        return FailureReport(
            promotion_id,
            job.id,
            job.job_type,
            None if short else job.error,
            job.status_since,
            seen_at,
            "shortfall" if short else "failed",
            job.name,
            job.codes_requested if short else None,
            job.codes_generated if short else None,
        )


@dataclass(frozen=True, slots=True)
class PollError:
    """Failed polls of one promotion for one reason: the latest detail, how often, since when."""

    promotion_id: str
    reason: str
    detail: str | None
    hint: str | None
    first_at: float
    last_at: float
    count: int


class RecentActivity:
    """Bounded memory of recent polls, failures and requests; fed by the scheduler and client."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        hints: Callable[[str], str | None] = lambda _: None,
        failures: int = RECENT_FAILURES,
    ) -> None:
        self._clock = clock
        self._hints = hints
        self.started_at = clock()
        self._polls: dict[str, PollRecord] = {}
        self._failures: deque[FailureReport] = deque(maxlen=failures)
        self._errors: OrderedDict[tuple[str, str], PollError] = OrderedDict()
        # (whole second, requests started in it), oldest first, at most one window long
        self._requests: deque[list[int]] = deque()
        self._delays: deque[tuple[float, float]] = deque(maxlen=MAX_DELAYS)  # (seen, delay)

    def polled(self, outcome: PollOutcome) -> None:
        """Record one finished poll: its result, and the failures it reported."""
        now = self._clock()
        pid = outcome.promotion_id
        last = self._polls.get(pid)
        last_success = last.last_success if last is not None else None
        if outcome.ok:
            record = PollRecord(now, ok=True, last_success=now, incomplete=outcome.incomplete)
        else:
            failing_since = last.failing_since if last is not None and not last.ok else None
            record = PollRecord(now, False, outcome.reason, last_success, failing_since or now)
            self._poll_error(pid, outcome.reason or "unknown", outcome.detail, now)
        self._polls[pid] = record
        for change in outcome.changes:
            delay = change.detection_delay(now)
            if delay is not None:
                self._delays.append((now, delay))
            if change.job is not None and (change.is_failure or change.is_shortfall):
                self.report(FailureReport.of_job(pid, change.job, seen_at=now))

    def _poll_error(self, pid: str, reason: str, detail: str | None, now: float) -> None:
        key = (pid, reason)
        previous = self._errors.pop(key, None)
        self._errors[key] = PollError(
            pid,
            reason,
            single_line(detail, MAX_DETAIL_CHARS) if detail else None,
            self._hints(reason),
            previous.first_at if previous is not None else now,
            now,
            (previous.count if previous is not None else 0) + 1,
        )
        while len(self._errors) > RECENT_POLL_ERRORS:
            self._errors.popitem(last=False)

    def report(self, failure: FailureReport) -> None:
        """Remember a failure or shortfall; the oldest fall off past the ring's size."""
        self._failures.append(failure)

    def request_done(self) -> None:
        """Count one request to Elastic Path (for the request rate in use)."""
        second = int(self._clock())
        if self._requests and self._requests[-1][0] == second:
            self._requests[-1][1] += 1
        else:
            self._requests.append([second, 1])
        self._expire_requests(second)

    def _expire_requests(self, second: int) -> None:
        while self._requests and self._requests[0][0] <= second - RATE_WINDOW_SECONDS:
            self._requests.popleft()

    def requests_per_second(self, now: float) -> float:
        """Requests per second over the last minute (or since start, if that is shorter)."""
        self._expire_requests(int(now))
        window = min(float(RATE_WINDOW_SECONDS), max(1.0, now - self.started_at))
        return sum(count for _, count in self._requests) / window

    def detection_delay(self, now: float) -> tuple[float, float] | None:
        """p50 and p99 (nearest rank) of the delays seen over the last hour; None if none."""
        while self._delays and self._delays[0][0] < now - DELAY_WINDOW_SECONDS:
            self._delays.popleft()
        delays = sorted(delay for _, delay in self._delays)
        if not delays:
            return None
        rank = [max(0, math.ceil(q * len(delays)) - 1) for q in (0.5, 0.99)]
        return delays[rank[0]], delays[rank[1]]

    def forget(self, promotion_id: str) -> None:
        """Drop what was recorded of a promotion that is no longer watched."""
        self._polls.pop(promotion_id, None)
        kept = (f for f in self._failures if f.promotion_id != promotion_id)
        self._failures = deque(kept, maxlen=self._failures.maxlen)
        for key in [k for k in self._errors if k[0] == promotion_id]:
            del self._errors[key]

    def poll(self, promotion_id: str) -> PollRecord | None:
        return self._polls.get(promotion_id)

    @property
    def failures(self) -> tuple[FailureReport, ...]:
        return tuple(self._failures)

    @property
    def poll_errors(self) -> tuple[PollError, ...]:
        return tuple(self._errors.values())
