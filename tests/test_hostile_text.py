"""Text the published API allows but no output can carry: lone UTF-16 surrogates (legal JSON
escapes), bytes that are not UTF-8, and C0/C1 controls, ESC and OSC sequences meant for a
terminal. Every output must survive them: /metrics, /, /status.json, the logs, the state and
`once --format table`.

Each test runs the real daemon (a subprocess) against the simulator.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
from pathlib import Path

import structlog

from monitor.events import JobFailed
from monitor.simulator import Fault, Simulator
from monitor.sinks.logs import LogSink, configure_logging
from tests.fault_support import read_state
from tests.support import Daemon, parse_metrics, series_where, started, until, write_config

# What a terminal acts on: a title set (OSC 0), the screen cleared (CSI 2J), a clipboard write
# (OSC 52), a C1 CSI (0x9b), a NUL and a bell; and a lone surrogate, legal as a JSON escape.
TERMINAL = "\x1b]0;owned\x07 \x1b[2J \x1b]52;c;ZXZpbA==\x07 \x9b31m \x00"
SURROGATE = "\ud83d"
# Two raw bytes, as the simulator's raw_bytes fault sends them: 0xff 0xfe, never UTF-8.
RAW_BYTES = "\udcff\udcfe"
HOSTILE = f"{SURROGATE} {TERMINAL} {RAW_BYTES}"
_SURROGATES = re.compile("[\ud800-\udfff]")
# Every C0 control but the newline, DEL, and every C1 control.
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def made_valid(text: str) -> str:
    """What the monitor is to make of text from the store: each lone surrogate and each byte
    that is not UTF-8 becomes one U+FFFD (REPLACEMENT CHARACTER); everything else is kept."""
    return _SURROGATES.sub("\ufffd", text)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def test_surrogates_and_controls_reach_every_output_as_valid_text(tmp_path: Path) -> None:
    sim = Simulator(seed=221)
    pid = sim.add_promotion("promotion", name=f"Spring {SURROGATE} sale {TERMINAL}")
    job = sim.add_job(pid, status="processing", job_id=f"job-{SURROGATE}-{TERMINAL}")
    sim.add_job(pid, status="completed")
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}])
        daemon = await Daemon.start(config)
        try:
            await daemon.wait_for("baseline_loaded")
            sim.set_job_status(pid, job, "failed", error=f"codes {SURROGATE} limit {TERMINAL}")
            failed = await daemon.wait_for("job_failed")
            await daemon.polled(pid, 2)
            metrics_status, metrics_text = await daemon.get("/metrics")
            page_status, page = await daemon.get("/")
            json_status, status_json = await daemon.get("/status.json")
        finally:
            await daemon.stop()

    assert failed["job_id"] == made_valid(f"job-{SURROGATE}-{TERMINAL}")
    assert encodable(failed["error"])
    assert failed["error"].startswith("codes \ufffd limit")
    assert not _CONTROLS.search(failed["error"])
    assert all(encodable(json.dumps(e, ensure_ascii=False)) for e in daemon.events)

    assert metrics_status == 200
    samples = parse_metrics(metrics_text)
    ((labels, _),) = series_where(samples, "epcc_promotion_job_failed_info", promotion_id=pid)
    assert labels["job_id"] == made_valid(f"job-{SURROGATE}-{TERMINAL}")
    assert labels["error"] == failed["error"]
    assert page_status == 200
    assert "\ufffd" in page
    assert json_status == 200
    view = json.loads(status_json)
    assert [f["job_id"] for f in view["failures"]] == [failed["job_id"]]

    state = read_state(tmp_path)
    assert state[pid].jobs[failed["job_id"]].status == "failed"


async def test_bytes_that_are_not_utf8_are_replaced_and_the_failure_reported(
    tmp_path: Path,
) -> None:
    sim = Simulator(seed=222)
    pid = sim.add_promotion("promotion", name=f"Latin-1 caf{RAW_BYTES}")
    job = sim.add_job(pid, status="processing", job_id=f"job-{RAW_BYTES}")
    # Every answer about the promotion, its name and its jobs, carries raw bytes from now on.
    sim.inject(Fault("raw_bytes", path_contains=f"/{pid}", times=None))
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}])
        daemon = await Daemon.start(config)
        try:
            await daemon.wait_for("baseline_loaded")
            sim.set_job_status(pid, job, "failed", error=f"export {RAW_BYTES} failed")
            failed = await daemon.wait_for("job_failed")
            await daemon.polled(pid, 2)
            metrics_status, _ = await daemon.get("/metrics")
            json_status, status_json = await daemon.get("/status.json")
        finally:
            await daemon.stop()

    assert daemon.named("poll_failed") == []
    assert failed["job_id"] == "job-\ufffd\ufffd"
    assert failed["error"] == "export \ufffd\ufffd failed"
    assert metrics_status == 200
    assert json_status == 200
    (row,) = json.loads(status_json)["promotions"]
    assert row["name"] == "Latin-1 caf\ufffd\ufffd"


async def test_the_table_shows_controls_as_escapes_and_writes_only_utf8(tmp_path: Path) -> None:
    sim = Simulator(seed=223)
    pid = sim.add_promotion("promotion", name=f"Spring {HOSTILE}")
    job = sim.add_job(
        pid, status="failed", job_id=f"job-{HOSTILE}", error=f"export {HOSTILE}", name=HOSTILE
    )
    sim.inject(Fault("raw_bytes", path_contains=f"/{pid}", times=None))
    async with started(sim):
        config = write_config(tmp_path, sim, [{"id": pid}])
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "monitor", "once", "--config", str(config), "--format", "table"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    await until(lambda: process.returncode is not None, "once")

    assert process.returncode == 0, stderr.decode(errors="replace")
    table = stdout.decode("utf-8")  # strict: a byte that is not UTF-8 fails the test here
    assert not _CONTROLS.search(table)
    # The terminal's controls are shown, not obeyed: as \xNN escapes a reader can see.
    (line,) = [line for line in table.splitlines() if job.split("-")[0] + "-\ufffd" in line]
    assert "\\x1b]0;owned\\x07 \\x1b[2J \\x1b]52;c;ZXZpbA==\\x07 \\x9b31m \\x00" in line
    assert "Spring \ufffd" in table


def test_console_logs_show_controls_as_escapes() -> None:
    # `log.format: console` writes to a terminal too: a job id from the store must not drive it.
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    try:
        LogSink().emit(
            JobFailed(
                promotion_id="p",
                job_id="job-\x1b[2J\x1b]0;owned\x07\x9b31m",  # (no space: not quoted)
                job_type="code_export",
                status="failed",
                error="export failed",
            )
        )
    finally:
        structlog.reset_defaults()
    line = stream.getvalue()
    assert "job_failed" in line
    assert not _CONTROLS.search(line.rstrip("\n"))
    assert "job-\\x1b[2J\\x1b]0;owned\\x07\\x9b31m" in line
