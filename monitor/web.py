"""The HTTP face of the monitor: /metrics, /healthz, /readyz, the status page (/, /status.json)."""

from __future__ import annotations

import base64
import hmac
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import hdrs, web

from monitor.settings import ServerSettings
from monitor.sinks.exposition import Exposition
from monitor.status import QueryError, StatusQuery, StatusView, parse_query
from monitor.status_json import to_json
from monitor.status_page import CONTENT_SECURITY_POLICY, render_page


@dataclass
class Health:
    """Liveness and readiness as the app reports them; the handlers only read it."""

    progress: Callable[[], float]  # monotonic time the scheduler last ticked
    stale_after: float = 300.0
    started: bool = False
    stopping: bool = False

    def alive(self, now: float) -> bool:
        # Not started yet counts as alive: the startup probe covers that window.
        return not self.started or now - self.progress() <= self.stale_after


# The status page holds what the monitor knows now: never cached, never sniffed as another type.
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


@dataclass(frozen=True)
class WebSecurity:
    """Optional TLS, and basic auth for /metrics and the status page, where clusters want them."""

    ssl_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None


def load_web_security(server: ServerSettings) -> WebSecurity:
    """Read certificates and the scrape password once, at start."""
    context = None
    if server.tls_cert_file is not None and server.tls_key_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    auth = server.basic_auth
    if auth is None:
        return WebSecurity(context)
    if auth.password_file is not None:
        password = auth.password_file.read_text(encoding="utf-8").strip()
    else:
        assert auth.password is not None  # guaranteed by BasicAuthSettings
        password = auth.password.get_secret_value()
    return WebSecurity(context, auth.username, password)


def authorized(header: str | None, username: str, password: str) -> bool:
    """Check an Authorization header for basic auth, in constant time."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "basic":  # the scheme name is case-insensitive (RFC 9110)
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except ValueError:  # (bad base64, or not UTF-8)
        return False
    user, _, given = decoded.partition(":")
    # Both comparisons always run, so timing says nothing about which part was wrong.
    user_ok = hmac.compare_digest(user.encode(), username.encode())
    password_ok = hmac.compare_digest(given.encode(), password.encode())
    return user_ok and password_ok


def build_app(
    health: Health,
    security: WebSecurity | None = None,
    *,
    status: Callable[[StatusQuery], StatusView | None],
    exposition: Exposition,
) -> web.Application:
    security = security or WebSecurity()

    def refused(request: web.Request) -> web.Response | None:
        # Probes stay open (the kubelet sends no credentials); only the data is protected.
        if security.username is None or security.password is None:
            return None
        if authorized(request.headers.get("Authorization"), security.username, security.password):
            return None
        return web.Response(
            status=401,
            text="authentication required\n",
            headers={"WWW-Authenticate": 'Basic realm="promo-monitor"'},
        )

    async def metrics(request: web.Request) -> web.StreamResponse:
        if (refusal := refused(request)) is not None:
            return refusal
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        chunks, content_type = exposition.stream(accept, request.query.getall("name[]", []))
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()  # gzip or deflate, when the scraper asks for it
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def healthz(_: web.Request) -> web.Response:
        if health.alive(time.monotonic()):
            return web.Response(text="ok\n")
        return web.Response(status=503, text="scheduler made no progress\n")

    async def readyz(_: web.Request) -> web.Response:
        # Never tied to Elastic Path being reachable: a native sidecar's readiness gates its pod.
        if health.started and not health.stopping:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="stopping\n" if health.stopping else "starting\n")

    async def status_page(request: web.Request) -> web.Response:
        if (refusal := refused(request)) is not None:
            return refusal
        as_json = request.path == "/status.json"
        try:
            query = parse_query(request.query)
        except QueryError as exc:
            code, message = 400, str(exc)
        else:
            if (view := status(query)) is not None:
                if as_json:
                    return web.json_response(to_json(view), headers=_PAGE_HEADERS)
                page = render_page(view, query)
                return web.Response(text=page, content_type="text/html", headers=_PAGE_HEADERS)
            code, message = 404, "promotion: not watched by this monitor"
        if as_json:
            return web.json_response({"error": message}, status=code, headers=_PAGE_HEADERS)
        return web.Response(status=code, text=message + "\n", headers=_PAGE_HEADERS)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", status_page)
    app.router.add_get("/status.json", status_page)
    return app


class WebServer:
    """Serves the app on host:port; port 0 picks a free one, read back from `port`."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=self._ssl_context).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
