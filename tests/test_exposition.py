"""The /metrics exposition cache: after any change, its bytes say what a fresh prometheus_client
render of the registry says, in both formats."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from monitor.models import Job, PromotionKind, PromotionSnapshot
from monitor.names import PromotionNames
from monitor.sinks.metrics import MonitorMetrics
from monitor.web import Health, build_app
from tests.support import promtool_check_metrics, require_tool, serving

NOW = 1_700_000_000.0
STUCK_AFTER = 300.0
PIDS = ("p-a", "p-b", "p-c")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def generate_openmetrics(registry: CollectorRegistry) -> bytes:
    render: Callable[[CollectorRegistry], bytes] = openmetrics.generate_latest  # (untyped)
    return render(registry)


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


def assert_same_as_a_fresh_render(world: World) -> None:
    cached, content_type = world.metrics.exposition.render("")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert sections(cached.decode()) == sections(generate_latest(world.registry).decode())
    cached, content_type = world.metrics.exposition.render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    fresh = generate_openmetrics(world.registry).decode()
    assert cached.decode().endswith("\n# EOF\n")
    assert sections(cached.decode()) == sections(fresh)
    # OpenMetrics keeps a counter's samples together: each _total right before its _created.
    lines = cached.decode().splitlines()
    for n, line in enumerate(lines):
        if "_total{" in line:
            assert lines[n + 1].startswith(line.split("{")[0].removesuffix("_total") + "_created{")
            assert lines[n + 1].split("}")[0].split("{")[1] == line.split("}")[0].split("{")[1]


def jobs(*specs: tuple[str, str, str | None, float]) -> dict[str, Job]:
    return {
        job_id: Job(job_id, "code_generate", status, error, since - 60, since)
        for job_id, status, error, since in specs
    }


_error = st.sampled_from(["codes limit exceeded", 'a "quoted" \\ error\nsecond line', "ünïcødé"])
_job = st.tuples(
    st.sampled_from(["j1", "j2", "j3", "j4"]),
    st.sampled_from(["pending", "processing", "failed", "completed", "cancelling"]),
    st.none() | _error,
    st.floats(NOW - 1000, NOW),
)


def _put(world: World, pid: str, specs: list[tuple[str, str, str | None, float]]) -> None:
    world.snapshots[pid] = PromotionSnapshot(pid, jobs(*specs))


def _drop(world: World, pid: str) -> None:
    world.snapshots.pop(pid, None)
    world.metrics.forget(pid)
    world.names.forget(pid)


Step = Callable[[World], None]
_pid = st.sampled_from(PIDS)
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
        st.sampled_from(["Spring sale", 'Quote " sale', "Summer"]),
    ),
    st.builds(lambda s: lambda w: setattr(w, "now", w.now + s), st.sampled_from([10.0, 400.0])),
    st.builds(lambda: lambda w: w.metrics.duration.labels("code_export", "failed").observe(3)),
    st.builds(lambda: lambda w: setattr(w, "visible", not w.visible)),
)


@settings(database=None, max_examples=200, deadline=None)
@given(st.lists(_steps, max_size=25))
def test_cached_bytes_say_what_a_fresh_render_says_after_every_kind_of_change(
    steps: list[Step],
) -> None:
    world = World()
    for step in steps:
        step(world)
        assert_same_as_a_fresh_render(world)


def test_the_stuck_count_changes_with_the_clock_though_the_snapshot_does_not() -> None:
    world = World()
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(("j1", "pending", None, NOW)))
    before, _ = world.metrics.exposition.render("")
    assert b"epcc_promotion_jobs_stuck{" not in before

    world.now = NOW + STUCK_AFTER + 1
    after, _ = world.metrics.exposition.render("")

    assert b'epcc_promotion_jobs_stuck{job_type="code_generate",promotion_id="p-a"' in after
    assert_same_as_a_fresh_render(world)


def test_the_failed_info_follows_the_20_most_recent_failures() -> None:
    world = World()
    specs = [(f"j{n:02}", "failed", f"error {n}", NOW - 100 + n) for n in range(25)]
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(*specs))
    first, _ = world.metrics.exposition.render("")
    assert b'job_id="j05"' in first
    assert b'job_id="j04"' not in first

    specs.append(("j99", "failed", "newest", NOW))
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(*specs))
    second, _ = world.metrics.exposition.render("")

    assert b'job_id="j99"' in second
    assert b'job_id="j05"' not in second
    assert_same_as_a_fresh_render(world)


def test_a_replica_standing_by_shows_no_promotion_series() -> None:
    world = World(visible=False)
    world.metrics.watch("p-a")
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(("j1", "failed", "x", NOW)))

    body, _ = world.metrics.exposition.render("")

    assert b"p-a" not in body
    assert b"epcc_monitor_leader" in body
    assert_same_as_a_fresh_render(world)


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

    body, _ = world.metrics.exposition.render("")

    assert promtool_check_metrics(promtool, body.decode()) == (0, "")


async def test_metrics_are_served_gzipped_and_as_openmetrics_when_asked() -> None:
    world = World()
    world.metrics.watch("p-a")
    world.snapshots["p-a"] = PromotionSnapshot("p-a", jobs(("j1", "failed", "x", NOW)))
    app = build_app(
        world.registry,
        Health(progress=lambda: 0.0),
        status=lambda _: None,
        exposition=world.metrics.exposition,
    )
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
    assert sections(body) == sections(generate_openmetrics(world.registry).decode())
    assert sections(text) == sections(generate_latest(world.registry).decode())
