"""Prometheus metrics: counters for events, and gauges rendered from the snapshot at scrape time.

Gauges come from a custom collector rather than Gauge objects, so a job that leaves the
snapshot leaves /metrics with it, and nothing has to remember to delete its series.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.diff import is_stuck
from monitor.models import FAILED, JOB_TYPES, Change, ChangeKind, Job, PromotionSnapshot

FAILED_INFO_PER_PROMOTION: Final = 20
MAX_ERROR_KINDS: Final = 50
OTHER: Final = "other"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# Hex runs with a digit and a letter: request ids, hashes. Plain numbers are left to _NUMBER, so
# 5000 and 250000 normalize alike; words without digits ("deadline") are never masked.
_HEX = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,}\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WHITESPACE = re.compile(r"\s+")

# Job durations run from seconds (small exports) to hours (queued behind other jobs).
DURATION_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
POLL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def normalize_error(text: str) -> str:
    """Mask ids and numbers so one kind of error is one label value, whatever it mentions."""
    masked = _UUID.sub("<id>", text)
    masked = _HEX.sub("<id>", masked)
    masked = _NUMBER.sub("<n>", masked)
    masked = _WHITESPACE.sub(" ", masked).strip()
    return masked[:120] or "unknown"


class ErrorKinds:
    """Bounded set of normalized error label values; past the cap, new kinds become `other`."""

    def __init__(self, cap: int = MAX_ERROR_KINDS) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def label(self, error: str | None) -> str:
        kind = normalize_error(error or "")
        if kind in self._seen:
            return kind
        if len(self._seen) >= self._cap:
            return OTHER
        self._seen.add(kind)
        return kind


@dataclass(frozen=True, slots=True)
class _Summary:
    """What the gauges need from one promotion snapshot, computed once per snapshot object."""

    counts: dict[tuple[str, str], int]
    active: tuple[Job, ...]
    failed: tuple[Job, ...]


def _summarize(snapshot: PromotionSnapshot) -> _Summary:
    jobs = snapshot.jobs.values()
    counts = Tally((job.job_type, job.status) for job in jobs)
    failed = sorted(
        (job for job in jobs if job.status == FAILED),
        key=lambda job: job.status_since or 0.0,
        reverse=True,
    )
    return _Summary(
        dict(counts),
        tuple(job for job in jobs if job.is_active),
        tuple(failed[:FAILED_INFO_PER_PROMOTION]),
    )


class SnapshotCollector(Collector):
    """Renders job gauges from the live snapshots at scrape time."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[PromotionSnapshot]],
        clock: Callable[[], float],
        stuck_after: float,
    ) -> None:
        self._snapshots = snapshots
        self._clock = clock
        self._stuck_after = stuck_after
        # Keyed by promotion; reused while the snapshot object is the same (snapshots are
        # immutable and replaced on change), so a scrape does not re-count 100k jobs.
        self._cache: dict[str, tuple[PromotionSnapshot, _Summary]] = {}

    def _summary(self, snapshot: PromotionSnapshot) -> _Summary:
        cached = self._cache.get(snapshot.promotion_id)
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        summary = _summarize(snapshot)
        self._cache[snapshot.promotion_id] = (snapshot, summary)
        return summary

    def collect(self) -> Iterator[Metric]:
        labels = ["promotion_id", "job_type", "status"]
        jobs = GaugeMetricFamily(
            "epcc_promotion_jobs", "Jobs of each promotion now in each status.", labels=labels
        )
        stuck = GaugeMetricFamily(
            "epcc_promotion_jobs_stuck",
            "Jobs in pending/processing/cancelling for longer than poll.stuck_after_seconds.",
            labels=labels,
        )
        failed = GaugeMetricFamily(
            "epcc_promotion_job_failed_info",
            "1 for each failed job (the most recent per promotion), with its error text.",
            labels=["promotion_id", "job_id", "job_type", "error"],
        )
        now = self._clock()
        live: set[str] = set()
        for snapshot in self._snapshots():
            pid = snapshot.promotion_id
            live.add(pid)
            summary = self._summary(snapshot)
            for (job_type, status), count in summary.counts.items():
                jobs.add_metric([pid, job_type, status], count)
            stuck_counts = Tally(
                (job.job_type, job.status)
                for job in summary.active
                if is_stuck(job, now, self._stuck_after)
            )
            for (job_type, status), count in stuck_counts.items():
                stuck.add_metric([pid, job_type, status], count)
            for job in summary.failed:
                failed.add_metric([pid, job.id, job.job_type, job.error or ""], 1)
        for gone in self._cache.keys() - live:
            del self._cache[gone]
        yield jobs
        yield stuck
        yield failed


class _Gated(Collector):
    """Serves another registry's metrics only while `visible()` is true."""

    def __init__(self, inner: CollectorRegistry, visible: Callable[[], bool]) -> None:
        self._inner = inner
        self._visible = visible

    def collect(self) -> Iterator[Metric]:
        if self._visible():
            yield from self._inner.collect()


class MonitorMetrics:
    """Every metric the monitor exposes, on an injected registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str,
        snapshots: Callable[[], Iterable[PromotionSnapshot]],
        clock: Callable[[], float],
        stuck_after: float,
        visible: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = registry
        self.error_kinds = ErrorKinds()
        # Promotion and job series live in a registry of their own, served only while `visible`:
        # a replica standing by (coordination) must not show stale or zero series beside the
        # leader's, or alerts that take the max over replicas would see them.
        promotions = CollectorRegistry(auto_describe=True)
        registry.register(_Gated(promotions, visible))
        job = ["promotion_id", "job_type"]
        self.failures = Counter(
            "epcc_promotion_job_failures_total",
            "Jobs seen turning failed (or first seen already failed) since the monitor started.",
            job,
            registry=promotions,
        )
        self.errors = Counter(
            "epcc_promotion_job_errors_total",
            "Failures by normalized error text (ids and numbers masked; at most 50 kinds).",
            [*job, "error"],
            registry=promotions,
        )
        self.transitions = Counter(
            "epcc_promotion_job_transitions_total",
            "Job status changes seen; from_status is 'new' for jobs seen for the first time.",
            [*job, "from_status", "to_status"],
            registry=promotions,
        )
        self.duration = Histogram(
            "epcc_promotion_job_duration_seconds",
            "created_at to updated_at of jobs seen reaching a terminal status.",
            ["job_type", "status"],
            buckets=DURATION_BUCKETS,
            registry=promotions,
        )
        self.up = Gauge(
            "epcc_monitor_up",
            "1 if the last poll of the promotion succeeded, 0 if it failed.",
            ["promotion_id"],
            registry=promotions,
        )
        self.last_success = Gauge(
            "epcc_monitor_last_success_timestamp_seconds",
            "Unix time of the last successful poll of the promotion.",
            ["promotion_id"],
            registry=promotions,
        )
        self.poll_duration = Histogram(
            "epcc_monitor_poll_duration_seconds",
            "Time to poll one promotion (all pages, retries included).",
            buckets=POLL_BUCKETS,
            registry=registry,
        )
        self.poll_errors = Counter(
            "epcc_monitor_poll_errors_total",
            "Failed polls by promotion and reason.",
            ["promotion_id", "reason"],
            registry=promotions,
        )
        self.api_requests = Counter(
            "epcc_monitor_api_requests_total",
            "HTTP requests to Elastic Path by endpoint and status code ('error' if no answer).",
            ["endpoint", "code"],
            registry=registry,
        )
        self.retries = Counter(
            "epcc_monitor_api_retries_total",
            "Requests retried after a transient fault, by endpoint and reason.",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.budget_wait = Counter(
            "epcc_monitor_budget_wait_seconds_total",
            "Seconds requests waited for the request budget.",
            registry=registry,
        )
        self.jobs_skipped = Counter(
            "epcc_monitor_jobs_skipped_total",
            "Job objects in API answers that could not be identified (no id, not an object).",
            ["promotion_id"],
            registry=promotions,
        )
        self.schedule_lag = Gauge(
            "epcc_monitor_schedule_lag_seconds",
            "How far behind its due time the most overdue promotion is (budget too small if > 0 "
            "for long).",
            registry=registry,
        )
        self.active_promotions = Gauge(
            "epcc_monitor_active_promotions",
            "Promotions with a job pending/processing/cancelling, polled at the active interval.",
            registry=registry,
        )
        self.promotions = Gauge(
            "epcc_monitor_promotions",
            "Promotions this replica watches, by kind.",
            ["kind"],
            registry=registry,
        )
        self.shard_count = Gauge(
            "epcc_monitor_shards",
            "How many replicas share the promotions (sharding.shard_count); alerts compare it "
            "with the replicas that report.",
            registry=registry,
        )
        self.discovery_errors = Counter(
            "epcc_monitor_discovery_errors_total",
            "Discovery runs that failed (the last known list is kept), by reason.",
            ["reason"],
            registry=registry,
        )
        Info(
            "epcc_monitor_build", "Version of promo-monitor that is running.", registry=registry
        ).info({"version": version})
        self.leader = Gauge(
            "epcc_monitor_leader",
            "1 if this replica polls (it holds the coordination lease, or coordination is off), "
            "0 while it stands by.",
            registry=registry,
        )
        promotions.register(SnapshotCollector(snapshots, clock, stuck_after))

    def watch(self, promotion_id: str) -> None:
        """Pre-set counters to 0, so the first failure is an increase that alerts can see."""
        for job_type in JOB_TYPES:
            self.failures.labels(promotion_id, job_type)

    def forget(self, promotion_id: str) -> None:
        """Drop every series of a promotion that is no longer watched."""
        for metric in (self.failures, self.errors, self.transitions, self.poll_errors):
            for labels in _label_sets(metric, promotion_id):
                metric.remove(*labels)
        for gauge in (self.up, self.last_success):
            if (promotion_id,) in _keys(gauge):
                gauge.remove(promotion_id)
        if (promotion_id,) in _keys(self.jobs_skipped):
            self.jobs_skipped.remove(promotion_id)

    def record(self, changes: Iterable[Change]) -> None:
        for change in changes:
            job = change.job
            if job is None or change.kind not in (ChangeKind.DISCOVERED, ChangeKind.STATUS_CHANGED):
                continue
            pid = change.promotion_id
            previous = change.previous.status if change.previous else "new"
            self.transitions.labels(pid, job.job_type, previous, job.status).inc()
            if change.is_failure:
                self.failures.labels(pid, job.job_type).inc()
                kind = self.error_kinds.label(job.error)
                self.errors.labels(pid, job.job_type, kind).inc()
            if change.reached_terminal and job.duration is not None:
                self.duration.labels(job.job_type, job.status).observe(job.duration)

    def poll_succeeded(self, promotion_id: str, now: float) -> None:
        self.up.labels(promotion_id).set(1)
        self.last_success.labels(promotion_id).set(now)

    def poll_failed(self, promotion_id: str, reason: str) -> None:
        self.up.labels(promotion_id).set(0)
        self.poll_errors.labels(promotion_id, reason).inc()


def _keys(metric: Counter | Gauge) -> list[tuple[str, ...]]:
    # prometheus_client keeps children by label tuple; there is no public iterator for them.
    return [tuple(key) for key in metric._metrics]


def _label_sets(metric: Counter | Gauge, promotion_id: str) -> list[tuple[str, ...]]:
    return [labels for labels in _keys(metric) if labels and labels[0] == promotion_id]
