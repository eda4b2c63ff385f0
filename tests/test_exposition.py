"""The /metrics exposition cache: after any change, its bytes say what a render from scratch says,
in both formats, and both formats read back as the same samples through prometheus_client's
parsers."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from monitor.models import Job, PromotionKind, PromotionSnapshot
from monitor.names import PromotionNames
from monitor.sinks.metrics import MonitorMetrics
from monitor.web import Health, build_app
from tests.support import parse_metrics, promtool_check_metrics, require_tool, serving

NOW = 1_700_000_000.0
STUCK_AFTER = 300.0
PIDS = ("p-a", "p-b", "p-c")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ERRORS = ("codes limit exceeded", 'a "quoted" \\ error\nsecond line', "ünïcødé")
NAMES = ("Spring sale", 'Quote " sale', "Summer")


@dataclass
class World:
    """Everything the metrics read, which a test changes step by step."""

    now: float = NOW
    visible: bool = True
    snapshots: dict[str, PromotionSnapshot] = field(default_factory=dict)
    names: PromotionNames = field(default_factory=PromotionNames)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: MonitorMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = MonitorMetrics(
            self.registry,
            version="1.2.3",
            snapshots=lambda: list(self.snapshots.values()),
            clock=lambda: self.now,
            stuck_after=STUCK_AFTER,
            names=self.names,
            visible=lambda: self.visible,
        )

    def text(self, accept: str = "") -> str:
        body, content_type = self.metrics.exposition.render(accept)
        assert content_type.startswith(accept.partition(";")[0] or "text/plain; version=0.0.4")
        return body.decode()


def sections(text: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Families in order, each as its header lines and its sample lines sorted: the format
    fixes neither the order of samples within a family nor anything else."""
    result: list[tuple[list[str], list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# HELP"):
            result.append(([line], []))
        elif line.startswith("#"):
            result[-1][0].append(line)
        else:
            result[-1][1].append(line)
    return [(tuple(head), tuple(sorted(samples))) for head, samples in result]


def assert_both_formats_say_the_same(world: World) -> None:
    """Both formats parse (OpenMetrics strictly) to the same samples, no `_created` among them,
    and every label value reads back as one the world was given ("": a failure without text)."""
    text, om = world.text(), world.text(OPENMETRICS)
    assert om.endswith("\n# EOF\n")
    samples = parse_metrics(text)
    parsed = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(om)  # type: ignore[no-untyped-call]
        for sample in family.samples
    }
    assert parsed == samples
    assert not [name for name, _ in samples if name.endswith("_created")]
    given_values = {*PIDS, *ERRORS, *NAMES, "j1", "j2", "j3", "j4", "1.2.3", "timeout", "+Inf"}
    given_values |= {"code_generate", "code_export", "promotion", "failed", "pending"}
    given_values |= {"processing", "completed", "cancelling", "jobs", "200", ""}
    for _, labels in samples:
        for key, text_value in labels:
            assert text_value in given_values or key == "le", (key, text_value)


def assert_same_as_a_render_from_scratch(world: World, steps: list[Step]) -> None:
    """`world` rendered after every step, as a world that took the same steps renders at once."""
    fresh = World()
    for step in steps:
        step(fresh)
    for accept in ("", OPENMETRICS):
        assert sections(world.text(accept)) == sections(fresh.text(accept))


def jobs(*specs: tuple[str, str, str | None, float]) -> dict[str, Job]:
    return {
        job_id: Job(job_id, "code_generate", status, error, since - 60, since)
        for job_id, status, error, since in specs
    }


_error = st.sampled_from(ERRORS)
_job = st.tuples(
    st.sampled_from(["j1", "j2", "j3", "j4"]),
    st.sampled_from(["pending", "processing", "failed", "completed", "cancelling"]),
    st.none() | _error,
    st.sampled_from([NOW - 1000, NOW - 250, NOW]),  # stuck at once, after one or two clock steps
)


def _put(world: World, pid: str, specs: list[tuple[str, str, str | None, float]]) -> None:
    world.snapshots[pid] = PromotionSnapshot(pid, jobs(*specs))


def _drop(world: World, pid: str) -> None:
    world.snapshots.pop(pid, None)
    world.metrics.forget(pid)
    world.names.forget(pid)


Step = Callable[[World], None]
_pid = st.sampled_from(PIDS)
# (drawn as often as all other steps together: the stuck counts change only with the clock)
_clock: st.SearchStrategy[Step] = st.builds(
    lambda s: lambda w: setattr(w, "now", w.now + s), st.sampled_from([10.0, 200.0])
)
_steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(lambda pid, specs: lambda w: _put(w, pid, specs), _pid, st.lists(_job, max_size=4)),
    st.builds(lambda pid: lambda w: _drop(w, pid), _pid),
    st.builds(lambda pid: lambda w: w.metrics.watch(pid), _pid),
    st.builds(lambda pid: lambda w: w.metrics.poll_succeeded(pid, w.now), _pid),
    st.builds(lambda pid, r: lambda w: w.metrics.poll_failed(pid, r), _pid, st.just("timeout")),
    st.builds(
        lambda pid, error: lambda w: w.metrics.errors.labels(pid, "code_export", error).inc(),
        _pid,
        _error,
    ),
    st.builds(lambda pid: lambda w: w.metrics.failures.labels(pid, "code_generate").inc(), _pid),
    st.builds(lambda pid: lambda w: w.metrics.jobs_skipped.labels(pid).inc(2), _pid),
    st.builds(lambda pid: lambda w: w.metrics.last_shortfall.labels(pid).set(w.now), _pid),
    st.builds(
        lambda pid, name: lambda w: w.names.set(pid, PromotionKind.PROMOTION, name),
        _pid,
        st.sampled_from(NAMES),
    ),
    st.builds(lambda: lambda w: w.metrics.duration.labels("code_export", "failed").observe(3)),
    st.builds(lambda: lambda w: w.metrics.api_requests.labels("jobs", "200").inc()),
    st.builds(lambda: lambda w: setattr(w, "visible", not w.visible)),
)


@settings(database=None, max_examples=200, deadline=None)
@given(st.lists(_clock | _steps, max_size=25))
def test_cached_bytes_say_what_a_render_from_scratch_says_after_every_kind_of_change(
    steps: list[Step],
) -> None:
    world = World()
    for n, step in enumerate(steps):
        step(world)
        assert_same_as_a_render_from_scratch(world, steps[: n + 1])
        assert_both_formats_say_the_same(world)


def test_the_stuck_count_changes_with_the_clock_though_the_snapshot_does_not() -> None:
    world = World()
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(("j1", "pending", None, NOW)))
    assert "epcc_promotion_jobs_stuck{" not in world.text()

    world.now = NOW + STUCK_AFTER + 1

    stuck = (
        'epcc_promotion_jobs_stuck{job_type="code_generate",promotion_id="p-a",status="pending"}'
    )
    assert f"{stuck} 1.0\n" in world.text()
    assert_both_formats_say_the_same(world)


def test_the_failed_info_follows_the_20_most_recent_failures() -> None:
    world = World()
    specs = [(f"j{n:02}", "failed", f"error {n}", NOW - 100 + n) for n in range(25)]
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(*specs))
    first = world.text()
    assert 'job_id="j05"' in first
    assert 'job_id="j04"' not in first

    specs.append(("j99", "failed", "newest", NOW))
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(*specs))
    second = world.text()

    assert 'job_id="j99"' in second
    assert 'job_id="j05"' not in second
    assert second.count("epcc_promotion_job_failed_info{") == 20


def test_a_replica_standing_by_shows_no_promotion_series() -> None:
    world = World(visible=False)
    world.metrics.watch("p-a")
    world.metrics.duration.labels("code_generate", "failed").observe(3)
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(("j1", "failed", "x", NOW)))

    for text in (world.text(), world.text(OPENMETRICS)):
        assert "p-a" not in text
        assert "epcc_promotion" not in text
        assert "epcc_monitor_leader" in text


def test_no_series_is_a_created_timestamp() -> None:
    world = World()
    world.metrics.watch("p-a")
    world.metrics.failures.labels("p-a", "code_generate").inc()
    world.metrics.duration.labels("code_generate", "failed").observe(3)
    world.metrics.api_requests.labels("jobs", "200").inc()
    world.metrics.discovery_errors.labels("timeout").inc()

    for text in (world.text(), world.text(OPENMETRICS)):
        assert "epcc_promotion_job_failures_total{" in text
        assert "epcc_monitor_api_requests_total{" in text
        assert "epcc_promotion_job_duration_seconds_count{" in text
        assert "_created" not in text


def test_promtool_accepts_the_cached_exposition() -> None:
    promtool = require_tool("promtool")
    world = World()
    world.snapshots["p-a"] = PromotionSnapshot(
        "p-a", jobs(("j1", "failed", 'quote " and \\ backslash', NOW), ("j2", "pending", None, 0))
    )
    world.metrics.watch("p-a")
    world.metrics.failures.labels("p-a", "code_generate").inc()
    world.metrics.errors.labels("p-a", "code_generate", "x").inc()
    world.metrics.transitions.labels("p-a", "code_generate", "new", "failed").inc()
    world.metrics.poll_succeeded("p-a", NOW)
    world.metrics.duration.labels("code_generate", "failed").observe(3)
    world.names.set("p-a", PromotionKind.RULE_PROMOTION, "Spring sale")

    assert promtool_check_metrics(promtool, world.text()) == (0, "")


async def test_metrics_are_served_gzipped_as_openmetrics_and_by_name_when_asked() -> None:
    world = World()
    world.metrics.watch("p-a")
    world.metrics.duration.labels("code_generate", "failed").observe(3)
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(("j1", "failed", "x", NOW)))
    app = build_app(
        Health(progress=lambda: 0.0),
        status=lambda _: None,
        exposition=world.metrics.exposition,
    )
    names = [
        "epcc_promotion_job_failures_total",
        "epcc_promotion_jobs",
        "epcc_promotion_job_duration_seconds_count",
        "epcc_monitor_build_info",
    ]
    async with serving(app) as base, aiohttp.ClientSession(auto_decompress=False) as session:
        headers = {"Accept-Encoding": "gzip", "Accept": OPENMETRICS}
        async with session.get(f"{base}/metrics", headers=headers) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            body = gzip.decompress(await response.read()).decode()
        async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as plain:
            assert "Content-Encoding" not in plain.headers
            assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = (await plain.read()).decode()
        query = [("name[]", name) for name in names]
        identity = {"Accept-Encoding": "identity"}
        async with session.get(f"{base}/metrics", params=query, headers=identity) as some:
            chosen = parse_metrics((await some.read()).decode())
    assert sections(body) == sections(world.text(OPENMETRICS))
    assert sections(text) == sections(world.text())
    assert {name for name, _ in chosen} == set(names)
    assert {labels for name, labels in chosen if name == "epcc_promotion_job_failures_total"} == {
        frozenset({("promotion_id", "p-a"), ("job_type", job_type)})
        for job_type in ("code_generate", "code_export")
    }
