"""`promo-monitor` as users type it: subprocesses against a simulator started by the test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.models import ChangeKind
from monitor.simulator import Fault, Simulator
from tests.support import Daemon, long_ago, parse_metrics, run_cli, series, write_config

# Event names that report a change (plus the failure event a failing change adds).
CHANGE_EVENTS = {kind.value for kind in ChangeKind} | {"job_failed"}


@dataclass
class Store:
    """Two promotions with known jobs; the counts below are what the tests expect back."""

    sim: Simulator
    sale: str  # a promotion: 3 completed, 2 failed exports, 1 processing
    builder: str  # a rule promotion: 1 pending export, 1 completed
    processing: str  # the processing job in `sale`
    failed: dict[str, str]  # failed job id -> error text, in `sale`

    def promotions(self) -> list[dict[str, str]]:
        return [
            {"id": self.sale, "kind": "promotion"},
            {"id": self.builder, "kind": "rule_promotion"},
        ]


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    sim = Simulator(seed=11)
    sale = sim.add_promotion("promotion", name="Sale")
    sim.add_jobs(sale, 3, status="completed")
    failed = {}
    for error in (
        "export failed: storage unavailable (request id 9f86d081884c7d65)",
        "export failed: upload of 5000 codes timed out after 60s",
    ):
        job_id = sim.add_job(
            sale, job_type="code_export", status="failed", error=error, created_at=long_ago()
        )
        failed[job_id] = error
    processing = sim.add_job(sale, status="processing")
    builder = sim.add_promotion("rule_promotion", name="Builder")
    sim.add_job(builder, job_type="code_export", status="pending")
    sim.add_job(builder, status="completed")
    short = sim.add_job(builder, status="processing", number_of_codes=800)
    # Completed with fewer codes than asked: a shortfall, shown in its own section.
    sim.set_job_status(builder, short, "completed", generated=500)
    await sim.start()
    yield Store(sim, sale, builder, processing, failed)
    await sim.stop()


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """Every stdout line as a JSON object; fails if any line is not one."""
        events = []
        for line in self.stdout.splitlines():
            event = json.loads(line)
            assert isinstance(event, dict), line
            events.append(event)
        return events

    def changes(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] in CHANGE_EVENTS]


async def cli(*args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None) -> Result:
    """Run `python -m monitor ARGS` without blocking the loop the simulator serves on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port that something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# once


async def test_once_prints_a_baseline_then_only_what_changed(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())

    first = await cli("once", "--config", str(config))
    assert first.code == 0, first.stderr
    assert "Traceback" not in first.stderr
    baselines = {e["promotion_id"]: e for e in first.changes()}
    assert [e["event"] for e in first.changes()] == ["baseline_loaded"] * 2
    assert baselines.keys() == {store.sale, store.builder}
    assert baselines[store.sale]["jobs"] == 6
    assert baselines[store.sale]["by_status"] == {"completed": 3, "failed": 2, "processing": 1}
    assert baselines[store.builder]["jobs"] == 3
    assert baselines[store.builder]["by_status"] == {"pending": 1, "completed": 2}
    assert (tmp_path / "state" / "monitor.db").is_file()

    error = "Promotion code generation failed: database timeout after 30s"
    store.sim.set_job_status(store.sale, store.processing, "failed", error=error)
    second = await cli("once", "--config", str(config))
    assert second.code == 0, second.stderr
    changes = second.changes()
    assert [e["event"] for e in changes] == ["job_status_changed", "job_failed"]
    moved, failed = changes
    assert {k: moved[k] for k in ("promotion_id", "job_id", "previous_status", "status")} == {
        "promotion_id": store.sale,
        "job_id": store.processing,
        "previous_status": "processing",
        "status": "failed",
    }
    assert {k: failed[k] for k in ("promotion_id", "job_id", "job_type", "error", "level")} == {
        "promotion_id": store.sale,
        "job_id": store.processing,
        "job_type": "code_generate",
        "error": error,
        "level": "error",
    }

    # Nothing changed since: a third run reports nothing.
    third = await cli("once", "--config", str(config))
    assert third.code == 0, third.stderr
    assert third.changes() == []


async def test_once_exits_1_when_a_promotion_cannot_be_polled(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    store.sim.remove_promotion(store.builder)
    result = await cli("once", "--config", str(config))
    assert result.code == 1
    assert "Traceback" not in result.stderr
    events = result.events()
    failed = [e for e in events if e["event"] == "poll_failed"]
    assert [(e["promotion_id"], e["reason"]) for e in failed] == [(store.builder, "not_found")]
    # The other promotion is polled all the same.
    assert [(e["event"], e["promotion_id"]) for e in result.changes()] == [
        ("baseline_loaded", store.sale)
    ]


def table_rows(stdout: str) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """The header, the rows by promotion, and the lines of the FAILED JOBS section."""
    lines = stdout.splitlines()
    # Columns are padded apart by two spaces or more; a cell like "failed: x" has only one.
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    marker = [i for i, line in enumerate(lines) if line.startswith("FAILED JOBS")]
    end = [i for i, line in enumerate(lines) if line.startswith("INCOMPLETE JOBS")]
    failed = lines[marker[0] + 1 : end[0] if end else None] if marker else []
    failed = [line for line in failed if line.strip()]
    return header, rows, failed


async def test_once_table_counts_jobs_and_lists_failures(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    result = await cli("once", "--config", str(config), "--format", "table")
    assert result.code == 0, result.stderr
    assert not [line for line in result.stdout.splitlines() if line.lstrip().startswith("{")]

    header, rows, failed = table_rows(result.stdout)
    assert header[:4] == ["PROMOTION", "KIND", "POLL", "JOBS"]
    assert rows.keys() == {store.sale, store.builder}
    sale, builder = rows[store.sale], rows[store.builder]
    assert (sale["KIND"], sale["POLL"], sale["JOBS"]) == ("promotion", "ok", "6")
    assert (sale["ACTIVE"], sale["COMPLETED"], sale["FAILED"]) == ("1", "3", "2")
    assert (builder["KIND"], builder["POLL"], builder["JOBS"]) == ("rule_promotion", "ok", "3")
    assert (builder["ACTIVE"], builder["COMPLETED"], builder["FAILED"]) == ("1", "2", "0")
    # Names as Elastic Path has them (looked up), codes generated of requested by completed jobs.
    assert (sale["NAME"], sale["CODES"]) == ("Sale", "3000/3000")
    assert (builder["NAME"], builder["CODES"]) == ("Builder", "1500/1800")
    marker = result.stdout.index("INCOMPLETE JOBS")
    (short,) = [line for line in result.stdout[marker:].splitlines()[1:] if line.strip()]
    assert store.builder in short
    assert "500 of 800" in short

    assert len(failed) == len(store.failed)
    for job_id, error in store.failed.items():
        (line,) = [line for line in failed if job_id in line]
        assert store.sale in line
        assert line.endswith(error)


async def test_once_table_stays_a_table_when_a_job_fails_between_runs(
    store: Store, tmp_path: Path
) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    assert (await cli("once", "--config", str(config))).code == 0
    error = "codes limit exceeded"
    store.sim.set_job_status(store.sale, store.processing, "failed", error=error)
    result = await cli("once", "--config", str(config), "--format", "table")
    assert result.code == 0, result.stderr
    assert not [line for line in result.stdout.splitlines() if line.lstrip().startswith("{")]
    header, rows, failed = table_rows(result.stdout)
    assert header[:4] == ["PROMOTION", "KIND", "POLL", "JOBS"]
    assert (rows[store.sale]["ACTIVE"], rows[store.sale]["FAILED"]) == ("0", "3")
    (line,) = [line for line in failed if store.processing in line]
    assert line.endswith(error)


async def test_once_table_shows_a_failed_poll_and_exits_1(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path, store.sim, store.promotions())
    store.sim.remove_promotion(store.builder)
    result = await cli("once", "--config", str(config), "--format", "table")
    assert result.code == 1
    assert "Traceback" not in result.stderr
    assert not [line for line in result.stdout.splitlines() if line.lstrip().startswith("{")]
    _, rows, _ = table_rows(result.stdout)
    assert rows[store.builder]["POLL"] == "failed: not_found"
    # Nothing was ever seen of it: no jobs rather than made-up numbers.
    assert rows[store.builder]["JOBS"] == "0"
    assert (rows[store.sale]["POLL"], rows[store.sale]["JOBS"]) == ("ok", "6")
    # The failed poll is still reported, on stderr where it cannot break the table.
    assert "poll_failed" in result.stderr


# demo


async def test_demo_serves_metrics_and_stops_after_its_duration() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        "demo",
        "--duration",
        "4",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output = asyncio.ensure_future(process.communicate())
    try:
        jobs: dict[frozenset[tuple[str, str]], float] = {}
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as session:
            while not jobs and time.monotonic() < deadline and not output.done():
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        jobs = series(parse_metrics(await response.text()), "epcc_promotion_jobs")
                await asyncio.sleep(0.2)
        assert jobs, "no epcc_promotion_jobs samples on /metrics while the demo ran"
        stdout, stderr = await asyncio.wait_for(output, 15)
    finally:
        if process.returncode is None:
            process.kill()
            await output
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert any("baseline_loaded" in line for line in lines)
    assert lines[0].startswith("demo: simulated Elastic Path at http://127.0.0.1:")
    # Console lines for humans, not JSON.
    for line in lines:
        with contextlib.suppress(ValueError):
            assert not isinstance(json.loads(line), dict), line


# usage and user errors


def test_version_prints_the_installed_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"promo-monitor {version('promo-monitor')}"


def test_missing_subcommand_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: promo-monitor")
    assert "Traceback" not in result.stderr


def test_unreadable_config_is_one_line_and_exit_2() -> None:
    result = run_cli("run", "--config", "/nonexistent")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("promo-monitor: config: cannot read /nonexistent")


async def test_run_with_the_metrics_port_taken_is_one_line(store: Store, tmp_path: Path) -> None:
    with taken_port() as port:
        config = write_config(tmp_path, store.sim, store.promotions(), server={"port": port})
        result = await cli("run", "--config", str(config))
    assert result.code != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("promo-monitor: ")
    assert str(port) in line


# shutdown


async def wait_for_hanging_request(sim: Simulator, path_part: str, timeout: float = 10) -> None:
    """Until the simulator holds a request to a path containing `path_part` unanswered."""
    deadline = time.monotonic() + timeout
    while not any(r.status == 0 and path_part in r.path for r in sim.requests):
        assert time.monotonic() < deadline, "no request is hanging"
        await asyncio.sleep(0.05)


async def test_sigterm_lets_an_in_flight_poll_finish_within_the_grace(
    store: Store, tmp_path: Path
) -> None:
    config = write_config(tmp_path, store.sim, store.promotions(), api={"timeout_seconds": 10})
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded", lambda e: e["promotion_id"] == store.sale)
        # The next answer takes 1 s, well inside the 5 s shutdown grace and the client's
        # timeout, and carries a failure.
        store.sim.set_job_status(store.sale, store.processing, "failed", error="disk full")
        store.sim.inject(Fault("slow", delay=1, times=None, path_contains=store.sale))
        await wait_for_hanging_request(store.sim, store.sale)
    finally:
        code = await daemon.stop(signal.SIGTERM, timeout=15)
    assert code == 0, daemon.stderr
    names = [e["event"] for e in daemon.events]
    assert "request_retried" not in names
    assert "job_failed" in names
    assert names.index("job_failed") < names.index("monitor_stopped")


# config errors and secrets: check-config and run refuse before reaching any store

SECRET = "s3cr3t-never-print-4f1d9c"  # a test credential, and the leak to look for
PROMOTIONS = [{"id": "ad386702-e780-42c6-b190-0527ad768917"}]


@dataclass(frozen=True)
class Offline:
    """An Elastic Path these commands never reach; without a secret unless given one."""

    base_url: str = "https://useast.api.elasticpath.com"
    client_id: str = "client-1"
    client_secret: str | None = None


@pytest.mark.parametrize("source", ["file", "environment", "secret_file"])
def test_check_config_prints_no_secret(tmp_path: Path, source: str) -> None:
    env = {"EPCC_CLIENT_SECRET": ""}
    if source == "file":
        config = write_config(tmp_path, Offline(client_secret=SECRET), PROMOTIONS)
    elif source == "environment":
        env["EPCC_CLIENT_SECRET"] = SECRET
        config = write_config(tmp_path, Offline(), PROMOTIONS)
    else:
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        api = {"client_secret_file": str(secret_file)}
        config = write_config(tmp_path, Offline(), PROMOTIONS, api=api)
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_an_invalid_config_does_not_echo_the_secret(tmp_path: Path) -> None:
    api = {"client_secret_file": str(tmp_path / "also"), "timeout_seconds": SECRET}
    config = write_config(tmp_path, Offline(client_secret=SECRET), PROMOTIONS, api=api)
    result = run_cli("check-config", "--config", str(config), env={"EPCC_CLIENT_SECRET": ""})
    assert result.returncode == 2
    assert "api.timeout_seconds" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# Promotion ids go into URL paths.
INJECTIONS = [
    "../../oauth/access_token",
    "ad386702-e780-42c6-b190-0527ad768917/../../oauth",
    "ad386702-e780-42c6-b190-0527ad768917%2F..%2F..%2Foauth",
    "%2e%2e%2f%2e%2e%2foauth",
    "ad386702-e780-42c6-b190-0527ad768917?filter=eq(status,failed)",
    "ad386702-e780-42c6-b190-0527ad768917#fragment",
    "ad386702-e780-42c6-b190-0527ad768917/jobs",
    "ad386702\u2010e780\u201042c6\u2010b190\u20100527ad768917",  # unicode hyphens
]


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_promotion_ids_that_try_to_leave_their_path_are_refused(
    tmp_path: Path, command: str
) -> None:
    promotions = [{"id": bad} for bad in INJECTIONS]
    config = write_config(tmp_path, Offline(client_secret=SECRET), promotions)
    result = run_cli(command, "--config", str(config), env={"EPCC_CLIENT_SECRET": ""})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"promo-monitor: promotions[{i}].id: must be a UUID such as "
        "ad386702-e780-42c6-b190-0527ad768917"
        for i in range(len(INJECTIONS))
    ]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_every_command_refuses_a_lease_with_no_kubernetes_api(tmp_path: Path, command: str) -> None:
    # check-config used to pass what `run` refused when it opened the Lease client.
    config = tmp_path / "config.yaml"
    config.write_text(
        "api: {client_id: id, client_secret: s}\n"
        "promotions: [{id: ad386702-e780-42c6-b190-0527ad768917}]\n"
        "coordination: {mode: lease, namespace: shop, identity: pod-0}\n",
        encoding="utf-8",
    )
    home = tmp_path / "home"  # no ~/.kube/config there
    home.mkdir()
    env = {"HOME": str(home), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""}
    result = run_cli(command, "--config", str(config), env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("promo-monitor: coordination: no Kubernetes API to reach")
    assert "Traceback" not in result.stderr


async def test_once_polls_whoever_holds_the_lease(store: Store, tmp_path: Path) -> None:
    # `once` takes part in no election: with a sidecar's lease config it still polls and
    # reports (it used to report every promotion "abandoned" behind a fence nobody opened).
    lease = {"mode": "lease", "namespace": "shop", "identity": "pod-0"}
    config = write_config(tmp_path, store.sim, store.promotions(), coordination=lease)
    home = tmp_path / "home"  # no ~/.kube/config: none is needed
    home.mkdir()
    result = await cli(
        "once",
        "--config",
        str(config),
        env={"HOME": str(home), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""},
    )
    assert result.code == 0, result.stderr
    assert [e["event"] for e in result.changes()] == ["baseline_loaded"] * 2


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_every_command_refuses_poll_bounds_around_the_interval_the_wrong_way(
    tmp_path: Path, command: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "api: {client_id: id, client_secret: s}\n"
        "promotions: [{id: ad386702-e780-42c6-b190-0527ad768917}]\n"
        "poll: {interval_seconds: 600, max_interval_seconds: 300}\n",
        encoding="utf-8",
    )
    result = run_cli(command, "--config", str(config), env={"EPCC_CLIENT_SECRET": ""})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "promo-monitor: poll.max_interval_seconds: must be >= interval_seconds"
    ]
