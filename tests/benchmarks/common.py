"""What every benchmark shares: the machine, a simulator process, daemon configs, results."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import aiohttp
import yaml

from monitor.simulator import Simulator
from tests.support import spawn_daemon

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and load, so a result says where it was measured."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def code_version() -> dict[str, Any]:
    """The commit, whether monitor/ differs from it, and a digest of monitor/'s sources.

    Others may edit monitor/ while a run goes on; comparing the digest at the start and the
    end of a run tells whether every benchmark measured the same code.
    """
    digest = hashlib.sha256()
    for path in sorted((ROOT / "monitor").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    commit, dirty = "unknown", None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "monitor"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        dirty = bool(status.strip())
    return {"commit": commit, "monitor_modified": dirty, "monitor_sha256": digest.hexdigest()[:16]}


@dataclass
class Check:
    """One measured number against its target."""

    metric: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: reported, no target

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "-"}[self.passed]


@dataclass
class Result:
    """A benchmark's outcome: checks for the table, everything else for the JSON."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    plot: str | None = None

    def check(
        self, metric: str, value: float, unit: str, target: str = "", passed: bool | None = None
    ) -> None:
        self.checks.append(Check(metric, value, unit, target, passed))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "passed": all(c.passed is not False for c in self.checks),
            "seconds": round(self.seconds, 1),
            "checks": [asdict(c) | {"verdict": c.verdict} for c in self.checks],
            "plot": self.plot,
            "data": self.data,
        }


def fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); p99 of 40 samples is the largest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass(frozen=True)
class Store:
    """A simulator serving in its own process."""

    base_url: str
    client_id: str
    client_secret: str
    promotions: list[tuple[str, str]]  # (id, kind)
    pid: int


@contextlib.asynccontextmanager
async def simulator_process(
    promotions: int,
    jobs: int,
    *,
    mutate: int = 0,
    timeout: float = 120.0,
    module: str = "tests.benchmarks.simserver",
) -> AsyncIterator[Store]:
    """A store module (`tests.benchmarks.simserver` by default) as a subprocess; killed on exit."""
    command = [
        sys.executable,
        "-m",
        module,
        "--promotions",
        str(promotions),
        "--jobs",
        str(jobs),
    ]
    if mutate:
        command += ["--mutate", str(mutate)]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=64 * 1024 * 1024,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("simulator process exited before it served")
        hello = json.loads(line)
        yield Store(
            hello["base_url"],
            hello["client_id"],
            hello["client_secret"],
            [(pid, kind) for pid, kind in hello["promotions"]],
            process.pid,
        )
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def daemon_config(
    directory: Path,
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    promotions: Iterable[tuple[str, str]],
    rate: float,
    interval: float,
    active_interval: float,
    concurrency: int = 8,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """A daemon config document: loopback only, port 0, state in `directory`."""
    return {
        "api": {
            "base_url": base_url,
            "client_id": client_id,
            "client_secret": client_secret,
            "timeout_seconds": timeout,
            "max_requests_per_second": rate,
        },
        "poll": {
            "interval_seconds": interval,
            "active_interval_seconds": active_interval,
            "max_concurrent_polls": concurrency,
        },
        "promotions": [{"id": pid, "kind": kind} for pid, kind in promotions],
        "server": {"host": HOST, "port": 0},
        "state": {"path": str(directory / "state" / "monitor.db")},
        "log": {"level": "info", "format": "json"},
    }


def write_yaml(path: Path, document: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(document)), encoding="utf-8")
    return path


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class DaemonProcess:
    """`python -m monitor run` as a subprocess; counts its log events as they arrive.

    Lighter than tests.support.Daemon on purpose: a daemon watching thousands of promotions
    logs thousands of lines, and rescanning them all on every line would cost this process
    (and so the machine the daemon shares) more than the daemon itself.
    """

    KEEP = frozenset({"monitor_started", "job_failed", "poll_failed"})

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.counts: dict[str, int] = {}
        self.kept: list[tuple[float, dict[str, Any]]] = []  # (arrival time.time(), event)
        self.port = 0
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Path, *, timeout: float = 60.0) -> DaemonProcess:
        daemon = cls(await spawn_daemon(config, limit=16 * 1024 * 1024))
        try:
            await daemon.wait_count("monitor_started", 1, timeout=timeout)
        except BaseException:
            await daemon.stop(timeout=5)
            raise
        started = next(e for _, e in daemon.kept if e.get("event") == "monitor_started")
        daemon.port = int(started["metrics_port"])
        return daemon

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            arrived = time.time()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            name = str(event.get("event"))
            self.counts[name] = self.counts.get(name, 0) + 1
            if name in self.KEEP:
                self.kept.append((arrived, event))
            self._changed.set()
        self._changed.set()

    def events(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, e) for at, e in self.kept if e.get("event") == name]

    async def wait_count(self, name: str, count: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.counts.get(name, 0) < count:
            if self._reader.done():
                stderr = b""
                if self.process.stderr is not None:
                    stderr = await self.process.stderr.read()
                raise RuntimeError(
                    f"daemon exited waiting for {count} {name}: {stderr.decode()[-2000:]}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.counts.get(name, 0)}/{count} {name} within {timeout:g}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def stop(self, timeout: float = 20.0) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self._reader
        return code


@contextlib.asynccontextmanager
async def running_daemon(config: Path, *, timeout: float = 60.0) -> AsyncIterator[DaemonProcess]:
    daemon = await DaemonProcess.start(config, timeout=timeout)
    try:
        yield daemon
    finally:
        await daemon.stop()


class Credentials(TypedDict):
    """What `daemon_config` needs to reach a store, as keyword arguments."""

    base_url: str
    client_id: str
    client_secret: str


def credentials(store: Store | Simulator) -> Credentials:
    return {
        "base_url": store.base_url,
        "client_id": store.client_id,
        "client_secret": store.client_secret,
    }


@dataclass(frozen=True)
class Pace:
    """The daemon's request budget and poll intervals."""

    rate: float
    interval: float
    active_interval: float


@contextlib.asynccontextmanager
async def daemon_watching(
    sim: Simulator,
    promotions: Sequence[tuple[str, str]],
    pace: Pace,
    *,
    prefix: str,
    baseline_timeout: float = 120.0,
) -> AsyncIterator[DaemonProcess]:
    """An in-process simulator on loopback and a daemon past its baseline of every promotion.

    Both are stopped on exit; the daemon's config and state live in a temporary directory.
    """
    await sim.start(HOST, 0)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            document = daemon_config(
                Path(tmp),
                **credentials(sim),
                promotions=promotions,
                rate=pace.rate,
                interval=pace.interval,
                active_interval=pace.active_interval,
            )
            config = write_yaml(Path(tmp) / "config.yaml", document)
            async with running_daemon(config) as daemon:
                count = len(promotions)
                await daemon.wait_count("baseline_loaded", count, timeout=baseline_timeout)
                yield daemon
    finally:
        await sim.stop()


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, int, int]:
    """GET /metrics: (wall seconds, body read included; bytes; series)."""
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
    elapsed = time.perf_counter() - started
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return elapsed, len(body), series


def state_disk_bytes(path: Path) -> int:
    """What the state takes on disk: the database and its write-ahead log."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def settled(path: Path, quiet: float = 1.0, timeout: float = 120.0) -> None:
    """Wait until the state database exists and neither it nor its write-ahead log has changed
    for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last: tuple[float, ...] | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
        now = tuple(x for p in files for x in (p.stat().st_mtime, p.stat().st_size)) or None
        if now is not None and now == last:
            if time.monotonic() - stable_since >= quiet:
                return
        else:
            last, stable_since = now, time.monotonic()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{path} kept changing")
