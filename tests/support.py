"""Shared test helpers: run the real daemon as a subprocess, write configs, read /metrics.

Plain functions and classes a test imports; the fixtures built from them are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import Monitor
from monitor.events import Event, EventSink
from monitor.settings import parse_settings
from monitor.simulator import Simulator

Sample = tuple[str, frozenset[tuple[str, str]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_PATH = "/oauth/access_token"
JOBS_ROUTE = "/v2/promotions/{pid}/jobs"
# 2024-12-04T00:03:46Z: where a fake clock starts unless a test says otherwise.
START = 1_733_270_626.0


class Recorder:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class FakeClock:
    """Seconds that move only when a test moves them (`clock.now += 5`)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ApiEndpoint(Protocol):
    """Where a daemon finds its Elastic Path: the simulator or a hand-written store."""

    @property
    def base_url(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> str | None: ...


def long_ago() -> float:
    """Two hours ago: a job that failed then is history at a baseline, beyond its lookback."""
    return time.time() - 2 * 3600


def write_config(
    directory: Path,
    store: ApiEndpoint,
    promotions: Iterable[Mapping[str, Any]],
    **sections: Mapping[str, Any],
) -> Path:
    """A config for the daemon against `store`: fast polls, port 0, state in `directory`.

    Each section given is merged key by key over the defaults; a store without a secret
    leaves `api.client_secret` out (for the tests of the other ways to give one).
    """
    path = directory / "config.yaml"
    document = config_document(directory, store, promotions, **sections)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def in_process_monitor(
    directory: Path,
    store: ApiEndpoint,
    promotions: Iterable[Mapping[str, Any]],
    *,
    events: EventSink | None = None,
    **sections: Mapping[str, Any],
) -> Monitor:
    """The monitor `run` would build from write_config's document, in this process (no HTTP
    server), with its own registry and, given `events`, that sink."""
    settings = parse_settings(config_document(directory, store, promotions, **sections))
    return Monitor.build(settings, registry=CollectorRegistry(), serve_http=False, events=events)


def config_document(
    directory: Path,
    store: ApiEndpoint,
    promotions: Iterable[Mapping[str, Any]],
    **sections: Mapping[str, Any],
) -> dict[str, Any]:
    """write_config's document."""
    api: dict[str, Any] = {
        "base_url": store.base_url,
        "client_id": store.client_id,
        "timeout_seconds": 2,
        "max_requests_per_second": 200,
    }
    if store.client_secret is not None:
        api["client_secret"] = store.client_secret
    document: dict[str, Any] = {
        "api": api,
        "poll": {"interval_seconds": 0.5, "stuck_after_seconds": 3600},
        "promotions": [dict(p) for p in promotions],
        "server": {"host": "127.0.0.1", "port": 0},
        "state": {"path": str(directory / "state" / "monitor.db")},
        "log": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return document


def token_answer(token: str, expires_in: int = 3600) -> dict[str, Any]:
    """A client-credentials token answer in the flat shape the SDKs and the CLI document."""
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


def store_app(
    listing: Handler, *, token: Handler | None = None, route: str = JOBS_ROUTE
) -> web.Application:
    """A hand-written Elastic Path: a token endpoint, and one listing `route` answered by `listing`.

    The token endpoint issues "t0k3n" unless a test brings its own `token` handler.
    """

    async def issue(_: web.Request) -> web.Response:
        return web.json_response(token_answer("t0k3n"))

    app = web.Application()
    app.router.add_post(TOKEN_PATH, token or issue)
    app.router.add_get(route, listing)
    return app


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, inherit: bool = True
) -> subprocess.CompletedProcess[str]:
    """`python -m monitor ARGS` to completion, with `env` over this process's environment (or
    `env` alone, without `inherit`)."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**(os.environ if inherit else {}), **(env or {})},
    )


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait until `check()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def parse_metrics(text: str) -> dict[Sample, float]:
    """Every sample in an exposition, keyed by name and label set."""
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Mapping[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Mapping[Sample, float], name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def series_where(
    samples: Mapping[Sample, float], name: str, **where: str
) -> list[tuple[dict[str, str], float]]:
    """The series of `name` whose labels include `where`, each with all its labels."""
    found = ((dict(labels), v) for labels, v in series(samples, name).items())
    return [(labels, v) for labels, v in found if where.items() <= labels.items()]


async def spawn_daemon(
    config: Path,
    *,
    env: Mapping[str, str] | None = None,
    command: str = "run",
    limit: int = 2**16,
) -> asyncio.subprocess.Process:
    """`python -m monitor COMMAND --config CONFIG` with stdout/stderr piped (`limit`: line size)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        command,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        limit=limit,
    )


class Daemon:
    """`python -m monitor run` as a subprocess, its JSON log lines collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr = ""
        self.port = 0
        self._new_line = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, config: Path, *, env: Mapping[str, str] | None = None, command: str = "run"
    ) -> Daemon:
        daemon = cls(await spawn_daemon(config, env=env, command=command))
        try:
            started = await daemon.wait_for("monitor_started")
        except BaseException:
            # Never leave a daemon behind that failed to start or hung on the way.
            await daemon.stop(signal.SIGKILL)
            raise
        daemon.port = int(started["metrics_port"])
        return daemon

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            text = line.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                event = json.loads(text)
                if isinstance(event, dict):
                    self.events.append(event)
            async with self._new_line:
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    def named(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        timeout: float = 20.0,
        count: int = 1,
    ) -> dict[str, Any]:
        """Wait until `count` events named `name` match; returns the last of them."""
        deadline = time.monotonic() + timeout
        async with self._new_line:
            while True:
                matches = [e for e in self.named(name) if predicate(e)]
                if len(matches) >= count:
                    return matches[count - 1]
                if self._reader.done():
                    raise AssertionError(
                        f"daemon exited before {name!r}; stderr:\n{await self._stderr()}"
                        f"\nstdout tail:\n" + "\n".join(self.raw[-20:])
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {name!r} within {timeout}s; last lines:\n" + "\n".join(self.raw[-20:])
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_line.wait(), remaining)

    async def _stderr(self) -> str:
        if self.process.stderr is not None and not self.stderr:
            self.stderr = (await self.process.stderr.read()).decode(errors="replace")
        return self.stderr

    @property
    def output(self) -> str:
        """Every byte the daemon wrote, stdout and stderr (stderr once it has exited)."""
        return "\n".join(self.raw) + "\n" + self.stderr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            return response.status, await response.text()

    async def metrics(self) -> dict[Sample, float]:
        status, text = await self.get("/metrics")
        assert status == 200
        return parse_metrics(text)

    async def polled(self, promotion_id: str, count: int = 1) -> dict[Sample, float]:
        """Until `count` more polls of a promotion have succeeded; the metrics after the last."""

        def last_success(samples: dict[Sample, float]) -> float:
            name = "epcc_monitor_last_success_timestamp_seconds"
            return value(samples, name, promotion_id=promotion_id) or 0.0

        samples = await self.metrics()
        for _ in range(count):
            before = last_success(samples)

            def newer(now: dict[Sample, float], before: float = before) -> bool:
                return last_success(now) > before

            samples = await self.wait_for_metric(newer)
        return samples

    async def wait_for_metric(
        self,
        check: Callable[[dict[Sample, float]], bool],
        *,
        timeout: float = 20.0,
    ) -> dict[Sample, float]:
        deadline = time.monotonic() + timeout
        while True:
            samples = await self.metrics()
            if check(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError("metric condition not met in time")
            await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` and wait for the exit code; kills after `timeout`."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self._reader
        await self._stderr()
        return code


def require_tool(name: str) -> str:
    """Path of a Debian-packaged tool; skip loudly without root, fail if root lacks it.

    `make test` installs the tools when it runs as root (as CI does), so there a missing tool
    is a broken setup, not a reason to skip.
    """
    found = shutil.which(name)
    if found is None:
        if os.geteuid() == 0:
            pytest.fail(f"{name} is missing though we run as root: `make tools` should install it")
        pytest.skip(f"{name} not installed and not root: run `sudo make tools` to test this")
    return found


def promtool_check_metrics(promtool: str, exposition: str) -> tuple[int, str]:
    """`promtool check metrics` on an exposition: its exit code and everything it printed."""
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return result.returncode, result.stdout + result.stderr


@contextlib.asynccontextmanager
async def running_daemon(config: Path) -> AsyncIterator[Daemon]:
    """The daemon on `config` for the block; on the way out it must stop cleanly (exit 0)."""
    daemon = await Daemon.start(config)
    try:
        yield daemon
    finally:
        assert await daemon.stop() == 0


@contextlib.asynccontextmanager
async def started(sim: Simulator) -> AsyncIterator[Simulator]:
    """Serve `sim` on 127.0.0.1, port 0, for the length of the block."""
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve a hand-written aiohttp app on 127.0.0.1, port 0; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
