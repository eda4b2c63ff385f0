"""What the HTTP client reports, rendered: request and retry counters, the request rate the
status page shows, the store's clock skew, and the events a person reads (tokens, retries)."""

from __future__ import annotations

from monitor.client import ApiError
from monitor.events import EventSink, RequestRetried, StoreClockSkewed, TokenRefreshed
from monitor.recent_activity import RecentActivity
from monitor.sinks.metrics import MonitorMetrics

# Past a minute, the skew changes what a person reads (ages, "stuck"): worth a warning.
SKEW_WARNING_SECONDS = 60.0


class RequestReports:
    """The client's ClientEvents, wired to metrics, activity and events."""

    def __init__(
        self, metrics: MonitorMetrics, activity: RecentActivity, events: EventSink
    ) -> None:
        self._metrics = metrics
        self._activity = activity
        self._events = events
        self._skew_warned = False

    def request_done(self, endpoint: str, code: str) -> None:
        self._metrics.api_requests.labels(endpoint, code).inc()
        self._activity.request_done()

    def token_refreshed(self, expires_in: float) -> None:
        self._events.emit(TokenRefreshed(expires_in=expires_in))

    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None:
        self._metrics.retries.labels(endpoint, error.reason).inc()
        self._events.emit(
            RequestRetried(
                endpoint=endpoint,
                reason=error.reason,
                attempt=attempt,
                http_status=error.http_status,
                retry_after=error.retry_after,
            )
        )

    def budget_waited(self, seconds: float) -> None:
        self._metrics.budget_wait.inc(seconds)

    def store_clock_skew(self, seconds: float) -> None:
        self._metrics.store_clock_skew.set(seconds)
        if abs(seconds) > SKEW_WARNING_SECONDS and not self._skew_warned:
            self._events.emit(StoreClockSkewed(skew_seconds=round(seconds, 1)))
            self._skew_warned = True
        elif abs(seconds) < SKEW_WARNING_SECONDS / 2:
            self._skew_warned = False  # (re-armed well under the line: not once a jitter)
