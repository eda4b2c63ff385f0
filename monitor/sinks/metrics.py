"""Prometheus metrics: counters for events, and gauges rendered from the snapshot at scrape time."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from monitor.diff import is_stuck
from monitor.job_summary import Summaries
from monitor.models import (
    CANCELLED,
    COMPLETED,
    JOB_TYPES,
    Change,
    ChangeKind,
    PromotionKind,
    PromotionSnapshot,
)
from monitor.sinks.error_kinds import ErrorKinds
from monitor.sinks.exposition import (
    Exposition,
    Family,
    PromotionCounter,
    PromotionGauge,
    PromotionSeries,
    Samples,
)

# (promotion id, kind, name) of every promotion whose name is known (monitor.names.PromotionNames).
Names = Iterable[tuple[str, PromotionKind, str]]

JOB_LABELS = ("promotion_id", "job_type", "status")


class SnapshotFamilies:
    """The job gauges, rendered from the live snapshots: a promotion's again only when its
    snapshot object changes, the stuck counts (few active jobs) at every scrape. A job that leaves
    the snapshot leaves /metrics with it, so nothing has to remember to delete its series."""

    def __init__(
        self,
        snapshots: Callable[[], Iterable[PromotionSnapshot]],
        clock: Callable[[], float],
        stuck_after: float,
    ) -> None:
        self._snapshots = snapshots
        self._clock = clock
        self._stuck_after = stuck_after
        self._summaries = Summaries()
        self._jobs = Family(
            "epcc_promotion_jobs", "Jobs of each promotion now in each status.", "gauge", JOB_LABELS
        )
        self._stuck = Family(
            "epcc_promotion_jobs_stuck",
            "Jobs in pending/processing/cancelling for longer than poll.stuck_after_seconds.",
            "gauge",
            JOB_LABELS,
        )
        self._failed = Family(
            "epcc_promotion_job_failed_info",
            "1 for each failed job (the most recent per promotion), with its error text.",
            "gauge",
            ("promotion_id", "job_id", "job_type", "error"),
        )
        self._rendered: dict[str, PromotionSnapshot] = {}  # by promotion

    def refresh(self) -> Iterable[Family]:
        now = self._clock()
        live: set[str] = set()
        for snapshot in self._snapshots():
            pid = snapshot.promotion_id
            live.add(pid)
            summary = self._summaries.of(snapshot)
            if self._rendered.get(pid) is not snapshot:
                self._jobs.put(pid, [((pid, *key), n) for key, n in summary.counts.items()])
                failed = summary.failed
                self._failed.put(pid, [((pid, j.id, j.job_type, j.error or ""), 1) for j in failed])
            stuck = Tally(
                (job.job_type, job.status)
                for job in summary.active
                if is_stuck(job, now, self._stuck_after)
            )
            self._stuck.put(pid, [((pid, *key), n) for key, n in stuck.items()])
            self._rendered[pid] = snapshot
        for gone in self._rendered.keys() - live:
            del self._rendered[gone]
            for family in (self._jobs, self._stuck, self._failed):
                family.put(gone, ())
        self._summaries.keep_only(live)
        return (self._jobs, self._stuck, self._failed)


class NameFamily:
    """`epcc_promotion_info`, rendered from the names at each scrape."""

    def __init__(self, names: Names) -> None:
        self._names = names
        self._family = Family(
            "epcc_promotion_info",
            "The promotion's name in Elastic Path (value 1), to join on promotion_id.",
            "gauge",
            ("promotion_id", "kind", "name"),
        )

    def refresh(self) -> Iterable[Family]:
        self._family.chunks.clear()
        for pid, kind, name in self._names:
            self._family.put(pid, [((pid, kind.value, name), 1)])
        return (self._family,)


class MonitorMetrics:
    """Every metric the monitor exposes: the process's own on the injected registry, and the
    promotion series, which only `exposition` renders (it serves both at /metrics)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str,
        snapshots: Callable[[], Iterable[PromotionSnapshot]],
        clock: Callable[[], float],
        stuck_after: float,
        names: Names = (),
        visible: Callable[[], bool] = lambda: True,
        store_now: Callable[[], float] | None = None,
    ) -> None:
        self.error_kinds = ErrorKinds()
        self._clock = clock
        # The store's time (monitor.client.clock): its job timestamps are judged by it.
        self._store_now = store_now or clock
        # The process's own series, without `_created` (on this registry only: the flag
        # prometheus_client offers is global). The promotion series are not on a registry: the
        # exposition renders them, and only while `visible` (a replica standing by must not show
        # stale or zero series beside the leader's, or alerts that take the max would see them).
        process = CollectorRegistry(auto_describe=True)
        registry.register(Samples(process))
        self.failures = PromotionCounter(
            "epcc_promotion_job_failures_total",
            "Jobs seen turning failed (or first seen already failed) since the monitor started.",
            ["job_type"],
        )
        self.errors = PromotionCounter(
            "epcc_promotion_job_errors_total",
            "Failures by normalized error text (ids and numbers masked; at most 50 kinds).",
            ["job_type", "error"],
        )
        # The alert's age branch reads this: a counter that starts above 0 on a new pod (a failure
        # found by its baseline lookback) has no increase() to see, a timestamp always does.
        self.last_failure = PromotionGauge(
            "epcc_promotion_job_last_failure_timestamp_seconds",
            "Unix time at which this monitor last reported a failure of the promotion and job "
            "type.",
            ["job_type"],
        )
        self.codes_generated = PromotionCounter(
            "epcc_promotion_codes_generated",
            "Codes generated by jobs seen completing (result.generated).",
        )
        self.codes_deleted = PromotionCounter(
            "epcc_promotion_codes_deleted",
            "Codes deleted by jobs seen being cancelled (result.deleted).",
        )
        self.shortfalls = PromotionCounter(
            "epcc_promotion_job_shortfalls",
            "code_generate jobs seen completing with fewer codes than number_of_codes.",
        )
        self.last_shortfall = PromotionGauge(
            "epcc_promotion_job_last_shortfall_timestamp_seconds",
            "Unix time at which this monitor last reported a shortfall of the promotion.",
        )
        self.transitions = PromotionCounter(
            "epcc_promotion_job_transitions_total",
            "Job status changes seen; from_status is 'new' for jobs seen for the first time.",
            ["job_type", "from_status", "to_status"],
        )
        self.duration = Histogram(
            "epcc_promotion_job_duration_seconds",
            "created_at to updated_at of jobs seen reaching a terminal status.",
            ["job_type", "status"],
            # Job durations run from seconds (small exports) to hours (queued behind other jobs).
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
            registry=None,
        )
        self.up = PromotionGauge(
            "epcc_monitor_up",
            "1 if the last poll of the promotion succeeded, 0 if it failed.",
        )
        self.last_success = PromotionGauge(
            "epcc_monitor_last_success_timestamp_seconds",
            "Unix time of the last successful poll of the promotion.",
        )
        self.poll_duration = Histogram(
            "epcc_monitor_poll_duration_seconds",
            "Time to poll one promotion (all pages, retries included).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=process,
        )
        self.detection_delay = Histogram(
            "epcc_monitor_detection_delay_seconds",
            "For each job first seen after its promotion's baseline: when it was first seen "
            "minus its created_at.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=process,
        )
        self.poll_errors = PromotionCounter(
            "epcc_monitor_poll_errors_total",
            "Failed polls by promotion and reason.",
            ["reason"],
        )
        self.polls_incomplete = PromotionCounter(
            "epcc_monitor_polls_incomplete_total",
            "Polls whose job listing could not be read whole (reason: offset_limit, "
            "offset_ignored, short); unseen jobs are kept as last known.",
            ["reason"],
        )
        self.api_requests = Counter(
            "epcc_monitor_api_requests_total",
            "HTTP requests to Elastic Path by endpoint and status code ('error' if no answer).",
            ["endpoint", "code"],
            registry=process,
        )
        self.retries = Counter(
            "epcc_monitor_api_retries_total",
            "Requests retried after a transient fault, by endpoint and reason.",
            ["endpoint", "reason"],
            registry=process,
        )
        self.store_clock_skew = Gauge(
            "epcc_monitor_store_clock_skew_seconds",
            "How far the store's clock is ahead of the pod's (negative: behind), from Date.",
            registry=process,
        )
        self.budget_wait = Counter(
            "epcc_monitor_budget_wait_seconds_total",
            "Seconds requests waited for the request budget.",
            registry=process,
        )
        self.jobs_skipped = PromotionCounter(
            "epcc_monitor_jobs_skipped_total",
            "Job objects in API answers that could not be identified (no id, not an object).",
        )
        self.schedule_lag = Gauge(
            "epcc_monitor_schedule_lag_seconds",
            "How far behind its due time the most overdue promotion is (budget too small if > 0 "
            "for long).",
            registry=process,
        )
        self.active_promotions = Gauge(
            "epcc_monitor_active_promotions",
            "Promotions with a job pending/processing/cancelling, polled at the active interval.",
            registry=process,
        )
        self.promotions = Gauge(
            "epcc_monitor_promotions",
            "Promotions this replica watches, by kind.",
            ["kind"],
            registry=process,
        )
        self.shard_count = Gauge(
            "epcc_monitor_shards",
            "How many replicas share the promotions (sharding.shard_count); alerts compare it "
            "with the replicas that report.",
            registry=process,
        )
        self.discovery_errors = Counter(
            "epcc_monitor_discovery_errors_total",
            "Discovery runs that failed (the last known list is kept), by reason.",
            ["reason"],
            registry=process,
        )
        Info(
            "epcc_monitor_build", "Version of promo-monitor that is running.", registry=process
        ).info({"version": version})
        self.leader = Gauge(
            "epcc_monitor_leader",
            "1 if this replica polls (it holds the coordination lease, or coordination is off), "
            "0 while it stands by.",
            registry=process,
        )
        self.handover_failures = Counter(
            "epcc_monitor_handover_failures_total",
            "Failures announced before the Lease's handover record held them (its write failed "
            "or was late): a new leader may report them again.",
            registry=process,
        )
        # The promotion series, and the duration histogram among them, in the order declared.
        declared = vars(self).values()
        parts = [v for v in declared if isinstance(v, PromotionSeries) or v is self.duration]
        self._series = [v for v in parts if isinstance(v, PromotionSeries)]
        families = (SnapshotFamilies(snapshots, self._store_now, stuck_after), NameFamily(names))
        self.exposition = Exposition(registry, visible, [*parts, *families])

    def watch(self, promotion_id: str) -> None:
        """Pre-set counters to 0, so the first failure (or shortfall, or codes generated) is an
        increase that alerts and increase() can see."""
        for job_type in JOB_TYPES:
            self.failures.labels(promotion_id, job_type)
        for counter in (self.shortfalls, self.codes_generated, self.codes_deleted):
            counter.labels(promotion_id)

    def forget(self, promotion_id: str) -> None:
        """Drop every series of a promotion that is no longer watched."""
        for series in self._series:
            series.forget(promotion_id)

    def record(self, changes: Iterable[Change]) -> None:
        for change in changes:
            job = change.job
            if job is None or change.kind not in (ChangeKind.DISCOVERED, ChangeKind.STATUS_CHANGED):
                continue
            if change.late:
                continue  # history the listing showed late: counted nowhere
            pid = change.promotion_id
            delay = change.detection_delay(self._store_now())
            if delay is not None:
                self.detection_delay.observe(delay)
            previous = change.previous.status if change.previous else "new"
            self.transitions.labels(pid, job.job_type, previous, job.status).inc()
            if change.is_failure:
                self.failures.labels(pid, job.job_type).inc()
                self.last_failure.labels(pid, job.job_type).set(self._clock())
                kind = self.error_kinds.label(job.error)
                self.errors.labels(pid, job.job_type, kind).inc()
            if not change.reached_terminal:
                continue
            if job.duration is not None:
                self.duration.labels(job.job_type, job.status).observe(job.duration)
            if job.status == COMPLETED and job.codes_generated:
                self.codes_generated.labels(pid).inc(job.codes_generated)
            elif job.status == CANCELLED and job.codes_deleted:
                self.codes_deleted.labels(pid).inc(job.codes_deleted)
            if change.is_shortfall:
                self.shortfalls.labels(pid).inc()
                self.last_shortfall.labels(pid).set(self._clock())

    def poll_succeeded(self, promotion_id: str, now: float) -> None:
        self.up.labels(promotion_id).set(1)
        self.last_success.labels(promotion_id).set(now)

    def poll_failed(self, promotion_id: str, reason: str) -> None:
        self.up.labels(promotion_id).set(0)
        self.poll_errors.labels(promotion_id, reason).inc()
