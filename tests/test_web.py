"""The HTTP face: probes, the status page and /metrics, served by aiohttp on a free port."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from monitor.models import Job, PromotionSnapshot
from monitor.recent_activity import RecentActivity
from monitor.sinks.exposition import Exposition
from monitor.status import MonitorFacts, StatusBoard
from monitor.web import Health, WebSecurity, WebServer, build_app
from tests.support import parse_metrics, value

STALE_AFTER = 300.0

Client = TestClient[web.Request, web.Application]


def recent() -> float:
    return time.monotonic()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("demo_events", "Events seen.", ["kind"], registry=registry)
    counter.labels("failed").inc(3)
    return registry


@pytest.fixture
def health() -> Health:
    return Health(progress=recent, stale_after=STALE_AFTER)


PROMOTION = "6a1d1c3e-5b2f-4c4e-9d1a-2b3c4d5e6f70"


def board(version: str = "1.2.3") -> StatusBoard:
    """A status board over one promotion with one failed job."""
    failed = Job("job-1", "code_generate", "failed", "codes limit exceeded", 1.7e9, 1.7e9 + 60)
    snapshot = PromotionSnapshot(PROMOTION, {failed.id: failed})
    return StatusBoard(
        snapshots=lambda: [snapshot],
        watched=lambda: {PROMOTION: "promotion"},
        activity=RecentActivity(time.time),
        facts=lambda: MonitorFacts(version, time.time(), True, 10.0, 10.0, 0.0),
        clock=time.time,
        stuck_after=3600.0,
    )


def app_of(
    registry: CollectorRegistry,
    health: Health,
    security: WebSecurity | None = None,
    version: str = "1.2.3",
) -> web.Application:
    exposition = Exposition(registry, visible=lambda: True, parts=[])
    return build_app(health, security, status=board(version).view, exposition=exposition)


@pytest.fixture
async def client(registry: CollectorRegistry, health: Health) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app_of(registry, health), host="127.0.0.1")) as client:
        yield client


async def get(client: Client, path: str, **headers: str) -> tuple[int, str]:
    async with client.get(path, headers=headers) as response:
        return response.status, await response.text()


def progress_ago(seconds: float) -> Callable[[], float]:
    return lambda: time.monotonic() - seconds


async def test_healthz_is_ok_while_the_loop_makes_progress(
    client: Client,
    health: Health,
) -> None:
    health.started = True
    assert await get(client, "/healthz") == (200, "ok\n")
    # Well inside stale_after: still alive.
    health.progress = progress_ago(STALE_AFTER / 2)
    assert (await get(client, "/healthz"))[0] == 200


async def test_healthz_fails_when_progress_is_older_than_stale_after(
    client: Client,
    health: Health,
) -> None:
    health.started = True
    health.progress = progress_ago(STALE_AFTER + 60)
    status, text = await get(client, "/healthz")
    assert status == 503
    assert "progress" in text
    # Progress again: alive again.
    health.progress = recent
    assert (await get(client, "/healthz"))[0] == 200


async def test_healthz_is_ok_before_start_however_old_the_progress(
    client: Client,
    health: Health,
) -> None:
    health.progress = progress_ago(10 * STALE_AFTER)
    assert not health.started
    assert await get(client, "/healthz") == (200, "ok\n")


async def test_readyz_follows_the_lifecycle(
    client: Client,
    health: Health,
) -> None:
    assert await get(client, "/readyz") == (503, "starting\n")
    health.started = True
    assert await get(client, "/readyz") == (200, "ready\n")
    health.stopping = True
    assert await get(client, "/readyz") == (503, "stopping\n")


async def test_status_page_is_html_with_relative_links_and_no_script(
    registry: CollectorRegistry,
) -> None:
    health = Health(progress=recent)
    app = app_of(registry, health, version="1.0<script>&")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        async with client.get("/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            headers = response.headers
            page = await response.text()
        # Relative links, so the page works behind a path-prefixing proxy.
        assert 'href="metrics"' in page
        assert 'href="status.json"' in page
        assert f'href="?promotion={PROMOTION}"' in page
        assert "codes limit exceeded" in page
        assert "1.0&lt;script&gt;&amp;" in page
        assert "<script" not in page
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert headers["Cache-Control"] == "no-store"
        async with client.get("metrics") as followed:
            assert followed.status == 200


async def test_status_json_is_the_same_content(client: Client) -> None:
    async with client.get("/status.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document = await response.json()
    assert document["monitor"]["version"] == "1.2.3"
    assert [p["id"] for p in document["promotions"]] == [PROMOTION]
    assert [f["error"] for f in document["failures"]] == ["codes limit exceeded"]
    async with client.get("/status.json", params={"promotion": PROMOTION}) as response:
        one = await response.json()
    assert [j["id"] for j in one["jobs"]] == ["job-1"]


@pytest.mark.parametrize("path", ["/", "/status.json"])
async def test_status_answers_bad_queries_and_unknown_promotions_clearly(
    client: Client, path: str
) -> None:
    async with client.get(path, params={"refresh": "1"}) as response:
        assert response.status == 400
        assert "refresh: must be a whole number from 5 to 3600" in await response.text()
    other = "00000000-0000-4000-8000-000000000000"
    async with client.get(path, params={"promotion": other}) as response:
        assert response.status == 404
        assert "not watched" in await response.text()


async def test_metrics_serves_the_registry_as_prometheus_text(
    client: Client,
) -> None:
    async with client.get("/metrics") as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        text = await response.text()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(parse_metrics(text), "demo_events_total", kind="failed") == 3


async def test_metrics_serves_openmetrics_when_asked(
    client: Client,
) -> None:
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with client.get("/metrics", headers={"Accept": accept}) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        text = await response.text()
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        # prometheus_client's OpenMetrics parser carries no annotations.
        for family in openmetrics_families(text)  # type: ignore[no-untyped-call]
        for sample in family.samples
    }
    assert samples[("demo_events_total", (("kind", "failed"),))] == 3


async def test_metrics_is_compressed_for_clients_that_accept_gzip(
    client: Client,
) -> None:
    async with client.get("/metrics", headers={"Accept-Encoding": "gzip"}) as response:
        assert response.headers.get("Content-Encoding") == "gzip"
        # aiohttp's client decompresses transparently: the content is intact.
        assert "demo_events_total" in await response.text()


async def test_metrics_reflects_the_registry_at_scrape_time(
    client: Client,
    registry: CollectorRegistry,
) -> None:
    late = Counter("late_events", "Registered after the app was built.", registry=registry)
    late.inc(2)
    _, text = await get(client, "/metrics")
    assert value(parse_metrics(text), "late_events_total") == 2


async def test_web_server_on_port_0_reports_the_port_it_got(
    registry: CollectorRegistry, health: Health
) -> None:
    server = WebServer(app_of(registry, health))
    port = await server.start("127.0.0.1", 0)
    try:
        assert port > 0
        assert server.port == port
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            assert "demo_events_total" in await response.text()
    finally:
        await server.stop()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/healthz")


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


async def test_basic_auth_guards_metrics_but_not_the_probes(registry: CollectorRegistry) -> None:
    health = Health(progress=recent, started=True)
    # A password with a colon: only the first colon separates user from password.
    security = WebSecurity(username="prometheus", password="s3cr:et")
    app = app_of(registry, health, security)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        async with client.get("/metrics") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
            assert "demo_events" not in await response.text()
        for wrong in ("prometheus:wrong", "someone:s3cr:et", "prometheus:", "prometheus"):
            status, text = await get(client, "/metrics", Authorization=basic(wrong))
            assert status == 401, wrong
            assert "demo_events" not in text
        assert (await get(client, "/metrics", Authorization="Bearer s3cr:et"))[0] == 401
        assert (await get(client, "/metrics", Authorization="Basic not-base64!"))[0] == 401

        status, text = await get(client, "/metrics", Authorization=basic("prometheus:s3cr:et"))
        assert status == 200
        assert value(parse_metrics(text), "demo_events_total", kind="failed") == 3
        # The kubelet sends no credentials: the probes stay open.
        assert await get(client, "/healthz") == (200, "ok\n")
        assert await get(client, "/readyz") == (200, "ready\n")
        # The status page shows the same data as /metrics, so it is guarded the same way.
        for path in ("/", "/status.json", "/?promotion=" + PROMOTION):
            status, text = await get(client, path)
            assert status == 401, path
            assert "codes limit" not in text
            status, text = await get(client, path, Authorization=basic("prometheus:wrong"))
            assert status == 401, path
            status, text = await get(client, path, Authorization=basic("prometheus:s3cr:et"))
            assert status == 200, path
            assert "codes limit exceeded" in text
