"""The HTTP face of the monitor: /metrics, /healthz, /readyz and a landing page."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler


@dataclass
class Health:
    """Liveness and readiness as the app reports them; the handlers only read it."""

    progress: Callable[[], float]  # monotonic time the poll loop last made progress
    stale_after: float = 300.0
    version: str = ""
    started: bool = False
    stopping: bool = False

    def alive(self, now: float) -> bool:
        # Not started yet counts as alive: the startup probe covers that window.
        return not self.started or now - self.progress() <= self.stale_after


def landing_page(version: str) -> str:
    """A small page for humans who open the port in a browser."""
    return (
        "<!doctype html><html><head><title>promo-monitor</title></head><body>"
        f"<h1>promo-monitor {html.escape(version)}</h1>"
        "<p>Watches Elastic Path promotion code jobs.</p><ul>"
        '<li><a href="metrics">/metrics</a> Prometheus metrics</li>'
        '<li><a href="healthz">/healthz</a> liveness</li>'
        '<li><a href="readyz">/readyz</a> readiness</li>'
        "</ul></body></html>"
    )


def build_app(registry: CollectorRegistry, health: Health) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if health.alive(time.monotonic()):
            return web.Response(text="ok\n")
        return web.Response(status=503, text="poll loop made no progress\n")

    async def readyz(_: web.Request) -> web.Response:
        # Never tied to Elastic Path being reachable: a native sidecar's readiness gates its pod.
        if health.started and not health.stopping:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="stopping\n" if health.stopping else "starting\n")

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=landing_page(health.version), content_type="text/html")

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    return app


class WebServer:
    """Serves the app on host:port; port 0 picks a free one, read back from `port`."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
