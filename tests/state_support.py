"""What the state tests share: snapshots to store, counted writes, and what a fresh store loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor import journal, state
from monitor.models import Job, PromotionSnapshot
from monitor.state import SnapshotStore

SAVED_AT = 1_733_270_626.0


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


class CountingWrites:
    """Writes to disk (whole files and journal appends), counted: the I/O boundary is the one
    thing these tests wrap."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.appends = 0
        real_write, real_append = state.write_atomic, journal.append_durable

        def write(path: Path, data: bytes | list[bytes]) -> None:
            if path.name.endswith(".json"):  # (a compaction's new journal is part of its write)
                self.calls += 1
            real_write(path, data)

        def append(path: Path, records: list[bytes]) -> None:
            self.calls += 1
            self.appends += 1
            real_append(path, records)

        monkeypatch.setattr(state, "write_atomic", write)
        monkeypatch.setattr(state, "append_durable", append)  # (the name the store calls)


def on_disk(path: Path) -> dict[str, PromotionSnapshot]:
    fresh = SnapshotStore(path)
    assert fresh.load() is None
    return {snap.promotion_id: snap for snap in fresh}


def job(job_id: str, status: str = "pending", error: str | None = None) -> Job:
    return Job(job_id, "code_generate", status, error, 1.0, 2.0)
