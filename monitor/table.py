"""`once --format table`: jobs by promotion and status, for a person at a terminal. A control
character in the store's text (ESC, OSC, CSI, C1) would be obeyed by the terminal (clear the
screen, set the title, write the clipboard), so it is shown escaped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from monitor.app import Monitor
from monitor.models import ACTIVE_STATUSES, COMPLETED, FAILED, Job, shown
from monitor.poller import PollOutcome

# (one line: a list literal is formatted one name a line)
HEADER: Final = "PROMOTION KIND POLL JOBS ACTIVE COMPLETED FAILED OTHER CODES NAME".split()  # noqa: SIM905


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(monitor: Monitor, outcomes: Sequence[PollOutcome]) -> str:
    """Jobs by promotion and status, then every failed job with its error."""
    by_id = {o.promotion_id: o for o in outcomes}
    rows: list[list[str]] = [list(HEADER)]
    failures: list[str] = []
    shortfalls: list[str] = []
    for target in monitor.scheduler.plan.targets:
        pid = target.promotion_id
        outcome = by_id.get(pid)
        poll = "ok" if outcome and outcome.ok else f"failed: {outcome.reason if outcome else '?'}"
        snapshot = monitor.store.get(pid)
        jobs = list(snapshot.jobs.values()) if snapshot else []
        statuses = Counter(job.status for job in jobs)
        active = sum(statuses[s] for s in ACTIVE_STATUSES)
        other = len(jobs) - active - statuses[COMPLETED] - statuses[FAILED]
        counts = [len(jobs), active, statuses[COMPLETED], statuses[FAILED], other]
        name = monitor.names.get(pid) or "-"
        rows.append([pid, target.kind.value, poll, *map(str, counts), _codes(jobs), name])
        shortfalls.extend(
            f"  {pid}  {job.id}  {job.codes_generated} of {job.codes_requested}"
            f"  {_when(job.status_since)}  {job.name or ''}"
            for job in jobs
            if job.shortfall
        )
        failed = [job for job in jobs if job.status == FAILED]
        failures.extend(
            f"  {pid}  {job.id}  {job.job_type:<13}  "
            f"{_when(job.status_since)}  {job.error or '(no error text)'}"
            for job in sorted(failed, key=lambda job: job.status_since or 0.0, reverse=True)
        )
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    if failures:
        lines += ["", "FAILED JOBS (promotion, job, type, failed at, error):", *failures]
    if shortfalls:
        lines += ["", "INCOMPLETE JOBS (promotion, job, codes generated of requested, at, name):"]
        lines += shortfalls
    return "\n".join(shown(line.rstrip()) for line in lines)


def _codes(jobs: list[Job]) -> str:
    """Codes generated of requested by the promotion's completed code_generate jobs."""
    done = [job for job in jobs if job.status == COMPLETED and job.codes_requested is not None]
    if not done:
        return "-"
    generated = sum(job.codes_generated or 0 for job in done)
    requested = sum(job.codes_requested or 0 for job in done)
    return f"{generated}/{requested}"
