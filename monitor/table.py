"""`once --format table`: jobs by promotion and status, for a person at a terminal.

Every cell is text from the store; a control character in it (ESC, OSC, CSI, C1) would be obeyed
by the terminal (clear the screen, set the title, write the clipboard), so it is shown escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from monitor.app import Monitor
from monitor.models import ACTIVE_STATUSES, COMPLETED, FAILED, PromotionSnapshot, shown
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
    for target in monitor.targets:
        outcome = by_id.get(target.promotion_id)
        poll = "ok" if outcome and outcome.ok else f"failed: {outcome.reason if outcome else '?'}"
        snapshot = monitor.store.get(target.promotion_id) or PromotionSnapshot(
            target.promotion_id, {}
        )
        statuses = Counter(job.status for job in snapshot.jobs.values())
        active = sum(statuses[s] for s in ACTIVE_STATUSES)
        other = sum(statuses.values()) - active - statuses[COMPLETED] - statuses[FAILED]
        counts = [len(snapshot.jobs), active, statuses[COMPLETED], statuses[FAILED], other]
        name = monitor.names.get(target.promotion_id) or "-"
        kind = target.kind.value
        rows.append([target.promotion_id, kind, poll, *map(str, counts), _codes(snapshot), name])
        shortfalls.extend(
            f"  {target.promotion_id}  {job.id}  {job.codes_generated} of {job.codes_requested}"
            f"  {_when(job.status_since)}  {job.name or ''}"
            for job in snapshot.jobs.values()
            if job.shortfall
        )
        failed = sorted(
            (job for job in snapshot.jobs.values() if job.status == FAILED),
            key=lambda job: job.status_since or 0.0,
            reverse=True,
        )
        failures.extend(
            f"  {target.promotion_id}  {job.id}  {job.job_type:<13}  "
            f"{_when(job.status_since)}  {job.error or '(no error text)'}"
            for job in failed
        )
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
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


def _codes(snapshot: PromotionSnapshot) -> str:
    """Codes generated of requested by the promotion's completed code_generate jobs."""
    done = [
        job
        for job in snapshot.jobs.values()
        if job.status == COMPLETED and job.codes_requested is not None
    ]
    if not done:
        return "-"
    generated = sum(job.codes_generated or 0 for job in done)
    requested = sum(job.codes_requested or 0 for job in done)
    return f"{generated}/{requested}"
