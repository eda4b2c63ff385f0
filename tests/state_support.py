"""What the state tests share: snapshots to store, and what a fresh store loads."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from monitor.models import Job, PromotionSnapshot
from monitor.state import SnapshotStore


def snapshot(
    promotion_id: str, *jobs: Job, stuck: frozenset[str] = frozenset()
) -> PromotionSnapshot:
    return PromotionSnapshot(promotion_id, {job.id: job for job in jobs}, stuck)


SNAPSHOTS = {
    "p-failed": snapshot(
        "p-failed",
        Job("j1", "code_generate", "failed", "codes limit exceeded", 1.5, 2.25),
        Job("j2", "code_export", "completed", None, 1_701_870_749.587, 1_701_870_889.133),
    ),
    "p-none": snapshot("p-none", Job("j3", "unknown", "some_new_status", None, None, None)),
    "p-stuck": snapshot(
        "p-stuck",
        Job("j4", "code_generate", "processing", None, 10.0, None),
        Job("j5", "code_generate", "pending", None, None, 11.0),
        Job("j6", "code_export", "cancelling", "löschen… ☃", 0.0, 0.0),
        stuck=frozenset({"j4", "j6"}),
    ),
    "p-empty": snapshot("p-empty"),
}


def loaded(path: Path) -> SnapshotStore:
    fresh = SnapshotStore(path)
    assert fresh.load() is None
    return fresh


def on_disk(path: Path) -> dict[str, PromotionSnapshot]:
    fresh = loaded(path)
    try:
        return {snap.promotion_id: snap for snap in fresh}
    finally:
        fresh.close()


def job(job_id: str, status: str = "pending", error: str | None = None) -> Job:
    return Job(job_id, "code_generate", status, error, 1.0, 2.0)


def owed_rows(directory: Path) -> int:
    """Announcements a daemon whose state is in `directory`/state has not marked done yet."""
    with contextlib.closing(sqlite3.connect(directory / "state" / "monitor.db")) as db:
        return int(db.execute("SELECT count(*) FROM owed").fetchone()[0])
