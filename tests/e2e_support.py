"""The alerting chain of tests/test_e2e.py: the daemon, real Prometheus and Alertmanager, a webhook.

Everything listens on 127.0.0.1. Prometheus loads the shipped deploy/prometheus/alerts.yaml with
only its `for:` and `keep_firing_for:` durations shortened (a minute becomes a second);
Alertmanager runs the shipped deploy/alertmanager/alertmanager.yaml with the receivers' URLs
pointed at the test's webhook and the group timers shortened. Routing, grouping and inhibition
are the shipped ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import yaml
from aiohttp import web

from monitor.simulator import Simulator
from tests.deploy_support import ALERTMANAGER, ALERTS, run
from tests.support import Daemon, Sample, parse_metrics, serving, write_config

# The settings the measured times depend on; printed with them.
POLL_INTERVAL = 0.5
SCRAPE_INTERVAL = 1.0
EVALUATION_INTERVAL = 1.0
RESEND_DELAY = 1.0
GROUP_WAIT = 1.0
GROUP_INTERVAL = 1.0
# A minute of the shipped rules' `for:`/`keep_firing_for:` lasts a second here (at least one).
TIME_SCALE = 60.0
MIN_DURATION = 1.0
# The rules find the monitor's `up` series by job=~".*promo-monitor.*".
JOB_NAME = "promo-monitor"
RULE_GROUP = "promo-monitor"

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86_400.0,
    "w": 604_800.0,
    "y": 31_536_000.0,
}


def settings_summary() -> str:
    return (
        f"poll {POLL_INTERVAL:g}s, scrape {SCRAPE_INTERVAL:g}s, "
        f"evaluation {EVALUATION_INTERVAL:g}s, "
        f"resend-delay {RESEND_DELAY:g}s, group_wait {GROUP_WAIT:g}s, "
        f"group_interval {GROUP_INTERVAL:g}s"
    )


def parse_duration(text: str) -> float:
    """A Prometheus duration (`5m`, `1h30m`, `500ms`) in seconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    millis = max(round(seconds * 1000), 1)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def shortened_rules(source: Path = ALERTS) -> dict[str, Any]:
    """The shipped rule file with `for:` and `keep_firing_for:` scaled down, nothing else."""
    document: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    for group in document["groups"]:
        # A group's own `interval:` would override the test's evaluation interval.
        group.pop("interval", None)
        for rule in group["rules"]:
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    seconds = parse_duration(str(rule[key])) / TIME_SCALE
                    rule[key] = format_duration(max(seconds, MIN_DURATION))
    return document


def rule_durations(document: Mapping[str, Any], key: str = "for") -> dict[str, float]:
    """alertname -> its `for:` (or another duration key) in seconds, 0 when it has none."""
    return {
        rule["alert"]: parse_duration(str(rule.get(key, "0s")))
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def alertmanager_config(webhook_url: str, source: Path = ALERTMANAGER) -> dict[str, Any]:
    """The shipped Alertmanager config, delivering to `webhook_url` + each receiver's URL path."""
    document: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    timers = {
        "group_wait": format_duration(GROUP_WAIT),
        "group_interval": format_duration(GROUP_INTERVAL),
    }

    def shorten(route: dict[str, Any], top: bool) -> None:
        for key, value in timers.items():
            if top or key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child, top=False)

    shorten(document["route"], top=True)
    for receiver in document["receivers"]:
        others = [key for key in receiver if key.endswith("_configs") and key != "webhook_configs"]
        if others:
            raise ValueError(
                f"receiver {receiver['name']}: only webhooks can be tested, not {others}"
            )
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url + (urlsplit(hook["url"]).path or "/")
    return document


def prometheus_config(rules: Path, targets: Path, alertmanager_port: int) -> dict[str, Any]:
    """Monitor targets come from a file, so a test can replace a pod as Kubernetes would: the
    old target leaves service discovery and a new one, on another address, appears."""
    return {
        "global": {
            "scrape_interval": format_duration(SCRAPE_INTERVAL),
            # a hung monitor must fail its scrape before the next one is due
            "scrape_timeout": format_duration(SCRAPE_INTERVAL),
            "evaluation_interval": format_duration(EVALUATION_INTERVAL),
        },
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [
                {
                    "api_version": "v2",
                    "static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}],
                }
            ]
        },
        "scrape_configs": [
            {
                "job_name": JOB_NAME,
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all bound at once, so they are distinct)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_json_atomic(path: Path, document: Any) -> None:
    # Prometheus watches the file: it must never read a half-written one.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document), encoding="utf-8")
    partial.replace(path)


def write_yaml(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(document), sort_keys=False), encoding="utf-8")
    return path


def parse_time(text: str) -> float:
    """An RFC 3339 time from Prometheus, Alertmanager or the daemon's logs, as a Unix time."""
    # Go prints nanoseconds; fromisoformat takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Poll `check` until it returns something other than None; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = await check()
        except (aiohttp.ClientError, TimeoutError) as exc:
            result, last_error = None, exc
        if result is not None:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s{detail}")
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Delivery:
    """One POST from Alertmanager."""

    path: str
    at: float  # time.monotonic() on receipt
    payload: dict[str, Any]


@dataclass(frozen=True)
class Received:
    """One alert of one delivery."""

    delivery: Delivery
    alert: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.alert["labels"].get("alertname", ""))

    @property
    def status(self) -> str:
        return str(self.alert["status"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.alert["labels"])

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.alert.get("annotations", {}))

    def __str__(self) -> str:
        labels = {k: v for k, v in self.labels.items() if k != "alertname"}
        return (
            f"{self.delivery.at:.1f} {self.delivery.path} {self.name} {self.status} {labels} "
            f"startsAt={self.alert.get('startsAt')} endsAt={self.alert.get('endsAt')}"
        )


class Webhook:
    """Records every notification Alertmanager POSTs, with the time it arrived."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.url = ""
        self._served = contextlib.AsyncExitStack()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        self.url = await self._served.enter_async_context(serving(app))
        return self.url

    async def stop(self) -> None:
        await self._served.aclose()

    async def _receive(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.deliveries.append(Delivery(request.path, time.monotonic(), payload))
        return web.Response(text="ok")

    def alerts(
        self,
        name: str | None = None,
        status: str | None = None,
        *,
        since: float = 0.0,
        **labels: str,
    ) -> list[Received]:
        """Every received alert matching, in the order received (`since`: a monotonic time)."""
        return [
            received
            for delivery in self.deliveries
            if delivery.at >= since
            for received in (Received(delivery, alert) for alert in delivery.payload["alerts"])
            if (name is None or received.name == name)
            and (status is None or received.status == status)
            and all(received.labels.get(k) == v for k, v in labels.items())
        ]

    async def wait_for(
        self,
        name: str,
        status: str = "firing",
        *,
        timeout: float,
        since: float = 0.0,
        **labels: str,
    ) -> Received:
        async def first() -> Received | None:
            found = self.alerts(name, status, since=since, **labels)
            return found[0] if found else None

        return await eventually(
            first,
            timeout=timeout,
            what=f"webhook: no {status} {name} {labels or ''}",
            interval=0.05,
        )

    def summary(self) -> str:
        lines = [str(received) for received in self.alerts()]
        return "\n".join(lines) if lines else "(nothing received)"


class Server:
    """A server binary run as a subprocess, its output kept in a log file."""

    def __init__(self, name: str, args: Iterable[str | Path], log: Path, url: str) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.log = log
        self.url = url
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        await self.spawn()
        await self.wait_ready(session, timeout)

    async def spawn(self) -> None:
        with self.log.open("wb") as output:
            self.process = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        async def ready() -> bool | None:
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode})")
            async with session.get(f"{self.url}/-/ready") as response:
                return True if response.status == 200 else None

        await eventually(ready, timeout=timeout, what=f"{self.name} ready")

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class PrometheusApi:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        return list(data["result"])

    async def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        data = await self.get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=f"{step:g}",
        )
        return list(data["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        return list((await self.get("/api/v1/alerts"))["alerts"])

    async def rules(self) -> list[dict[str, Any]]:
        groups = (await self.get("/api/v1/rules"))["groups"]
        return [rule for group in groups if group["name"] == RULE_GROUP for rule in group["rules"]]

    async def target(self) -> dict[str, Any] | None:
        active = (await self.get("/api/v1/targets", state="active"))["activeTargets"]
        mine = [t for t in active if t["labels"].get("job") == JOB_NAME]
        return mine[0] if mine else None

    async def own_metrics(self) -> dict[Sample, float]:
        async with self.session.get(f"{self.url}/metrics") as response:
            return parse_metrics(await response.text())

    async def evaluations(self) -> float:
        """How often the rule group has been evaluated so far."""
        return sum(
            v
            for (name, labels), v in (await self.own_metrics()).items()
            if name == "prometheus_rule_group_iterations_total"
            and dict(labels).get("rule_group", "").endswith(f";{RULE_GROUP}")
        )


@dataclass(frozen=True)
class Tools:
    prometheus: str
    alertmanager: str
    promtool: str
    amtool: str


@dataclass
class Stack:
    """The running chain. Tests drive `sim` and the daemon and judge what `webhook` receives."""

    tmp: Path
    sim: Simulator
    tools: Tools
    config: Path = field(init=False)
    daemon_port: int = 0
    rules: dict[str, Any] = field(default_factory=dict)
    for_seconds: dict[str, float] = field(default_factory=dict)
    webhook: Webhook = field(default_factory=Webhook)
    session: aiohttp.ClientSession | None = None
    prometheus: Server | None = None
    alertmanager: Server | None = None
    prometheus_started: float = 0.0  # Unix time
    daemons: list[Daemon] = field(default_factory=list)
    targets: Path = field(init=False)
    promotions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def daemon(self) -> Daemon:
        return self.daemons[-1]

    @property
    def api(self) -> PrometheusApi:
        assert self.session is not None
        assert self.prometheus is not None
        return PrometheusApi(self.session, self.prometheus.url)

    def scrape(self, *ports: int) -> None:
        """The monitor targets Prometheus discovers (picked up within a second)."""
        write_json_atomic(self.targets, [{"targets": [f"127.0.0.1:{port}" for port in ports]}])

    async def replace_pod(self) -> Daemon:
        """A new pod: another address, an empty state directory (an emptyDir starts empty).

        Call it with the old daemon gone; the old target has already left discovery.
        """
        self.daemon_port = free_ports(1)[0]
        pod = self.tmp / f"pod-{len(self.daemons) + 1}"
        pod.mkdir()
        self.write_daemon_config(pod)
        daemon = await self.start_daemon(len(self.promotions))
        self.scrape(self.daemon_port)
        return daemon

    def write_daemon_config(self, directory: Path) -> None:
        self.config = write_config(
            directory,
            self.sim,
            self.promotions,
            poll={"interval_seconds": POLL_INTERVAL},
            server={"port": self.daemon_port},
        )

    async def start_daemon(self, promotions: int) -> Daemon:
        """Start `promo-monitor run` (again) on its port; waits until every promotion was polled."""
        daemon = await Daemon.start(self.config)
        self.daemons.append(daemon)
        await daemon.wait_for_metric(
            lambda samples: (
                sum(1 for (name, _), v in samples.items() if name == "epcc_monitor_up" and v == 1)
                >= promotions
            ),
            timeout=20,
        )
        return daemon

    async def wait_scraped(self, timeout: float = 20.0) -> dict[str, Any]:
        """Until Prometheus's latest scrape of the monitor succeeded."""

        async def up() -> dict[str, Any] | None:
            target = await self.api.target()
            return target if target is not None and target["health"] == "up" else None

        return await eventually(up, timeout=timeout, what="Prometheus scrapes the monitor")

    async def wait_evaluations(self, count: int, timeout: float = 30.0) -> None:
        """Until the rule group has been evaluated `count` more times."""
        target = await self.api.evaluations() + count

        async def done() -> bool | None:
            return True if await self.api.evaluations() >= target else None

        await eventually(done, timeout=timeout, what=f"{count} rule evaluations")

    async def prometheus_alert(self, name: str, **labels: str) -> dict[str, Any] | None:
        """The alert as Prometheus holds it now (pending or firing), or None."""
        for alert in await self.api.alerts():
            found = alert["labels"]
            if found.get("alertname") == name and all(found.get(k) == v for k, v in labels.items()):
                return alert
        return None

    async def alertmanager_alerts(self, name: str) -> list[dict[str, Any]]:
        assert self.session is not None
        assert self.alertmanager is not None
        async with self.session.get(
            f"{self.alertmanager.url}/api/v2/alerts", params={"filter": f'alertname="{name}"'}
        ) as response:
            response.raise_for_status()
            alerts: list[dict[str, Any]] = await response.json()
        return alerts

    async def explain(self) -> str:
        """Everything useful when a scenario fails: deliveries, alerts, the servers' logs."""
        parts = [f"--- webhook deliveries\n{self.webhook.summary()}"]
        if self.prometheus is not None and self.session is not None:
            try:
                alerts = await asyncio.wait_for(self.api.alerts(), 5)
                shown = "\n".join(
                    f"{a['labels']} {a['state']} activeAt={a.get('activeAt')}" for a in alerts
                )
                parts.append(f"--- Prometheus alerts\n{shown or '(none)'}")
            except Exception as exc:  # diagnostics must not hide the failure
                parts.append(f"--- Prometheus alerts: {exc!r}")
        for daemon in self.daemons:
            stderr = daemon.stderr.strip()
            parts.append(
                f"--- promo-monitor (pid {daemon.process.pid}, exit {daemon.process.returncode})\n"
                + "\n".join(daemon.raw[-25:])
                + (f"\nstderr:\n{stderr}" if stderr else "")
            )
        parts.extend(
            f"--- {server.name} ({server.log})\n{server.tail()}"
            for server in (self.prometheus, self.alertmanager)
            if server is not None
        )
        return "\n".join(parts)

    @contextlib.asynccontextmanager
    async def diagnostics(self) -> AsyncIterator[None]:
        """Adds what every part of the chain said to a failure raised inside."""
        try:
            yield
        except Exception as exc:
            exc.add_note(await self.explain())
            raise

    async def close(self) -> None:
        """Stop whatever was started, each part even if stopping another failed."""
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self.prometheus is not None:
            steps.append(("prometheus", self.prometheus.stop))
        steps.extend(("promo-monitor", functools.partial(_stop_daemon, d)) for d in self.daemons)
        if self.alertmanager is not None:
            steps.append(("alertmanager", self.alertmanager.stop))
        steps.append(("webhook", self.webhook.stop))
        if self.session is not None:
            steps.append(("http session", self.session.close))
        problems: list[str] = []
        for name, step in steps:
            try:
                await step()
            except Exception as exc:
                problems.append(f"stopping {name}: {exc!r}")
        for server in (self.prometheus, self.alertmanager):
            if server is not None and server.process is not None:
                code = server.process.returncode
                # stopped by us: a clean exit on SIGTERM (or killed by it)
                if code not in (0, -signal.SIGTERM):
                    problems.append(f"{server.name} exited with {code}:\n{server.tail()}")
        if problems:
            raise AssertionError("\n".join(problems))


async def _stop_daemon(daemon: Daemon) -> None:
    if daemon.process.returncode is None:
        # a daemon held by SIGSTOP must run again to handle SIGTERM
        with contextlib.suppress(ProcessLookupError):
            daemon.process.send_signal(signal.SIGCONT)
    await daemon.stop()


@contextlib.asynccontextmanager
async def running_stack(
    tmp: Path, sim: Simulator, promotions: list[dict[str, Any]], tools: Tools
) -> AsyncIterator[Stack]:
    """Start the chain (the daemon before Prometheus, so its first scrape sees a baseline)."""
    stack = Stack(tmp, sim, tools)
    try:
        async with stack.diagnostics():
            await _start(stack, promotions)
        yield stack
    finally:
        await stack.close()


async def _start(stack: Stack, promotions: list[dict[str, Any]]) -> None:
    tmp, tools = stack.tmp, stack.tools
    stack.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    webhook_url = await stack.webhook.start()
    stack.daemon_port, prometheus_port, alertmanager_port = free_ports(3)

    stack.promotions = promotions
    stack.targets = tmp / "prometheus" / "targets.json"
    stack.scrape(stack.daemon_port)
    stack.rules = shortened_rules()
    stack.for_seconds = rule_durations(stack.rules)
    rules = write_yaml(tmp / "prometheus" / "alerts.yaml", stack.rules)
    prometheus_yml = write_yaml(
        tmp / "prometheus" / "prometheus.yml",
        prometheus_config(rules, stack.targets, alertmanager_port),
    )
    alertmanager_yml = write_yaml(
        tmp / "alertmanager" / "alertmanager.yml", alertmanager_config(webhook_url)
    )
    run(tools.promtool, "check", "config", prometheus_yml)  # and the rule file
    run(tools.amtool, "check-config", alertmanager_yml)

    stack.write_daemon_config(tmp)
    stack.alertmanager = Server(
        "alertmanager",
        [
            tools.alertmanager,
            f"--config.file={alertmanager_yml}",
            f"--storage.path={tmp / 'alertmanager' / 'data'}",
            f"--web.listen-address=127.0.0.1:{alertmanager_port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        tmp / "alertmanager.log",
        f"http://127.0.0.1:{alertmanager_port}",
    )
    await stack.alertmanager.spawn()
    await stack.start_daemon(len(promotions))
    await stack.alertmanager.wait_ready(stack.session)

    stack.prometheus = Server(
        "prometheus",
        [
            tools.prometheus,
            f"--config.file={prometheus_yml}",
            f"--storage.tsdb.path={tmp / 'prometheus' / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            f"--rules.alert.resend-delay={format_duration(RESEND_DELAY)}",
        ],
        tmp / "prometheus.log",
        f"http://127.0.0.1:{prometheus_port}",
    )
    stack.prometheus_started = time.time()
    await stack.prometheus.start(stack.session)

    expected = set(stack.for_seconds)

    async def rules_loaded() -> bool | None:
        loaded = {rule["name"] for rule in await stack.api.rules()}
        return True if loaded == expected else None

    await eventually(
        rules_loaded, timeout=20, what=f"Prometheus loads the rules {sorted(expected)}"
    )

    async def alertmanager_known() -> bool | None:
        data = await stack.api.get("/api/v1/alertmanagers")
        return True if data["activeAlertmanagers"] else None

    await eventually(alertmanager_known, timeout=20, what="Prometheus knows the Alertmanager")
    await stack.wait_scraped()
