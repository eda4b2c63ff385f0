"""How the state is laid out in SQLite: its tables, a job as a row, the owed changes as JSON,
and the snapshot.json of the release before, read once for its import."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from typing import Any, Final

from monitor.models import Change, ChangeKind, Job, PromotionSnapshot

# Bumped when the tables change; a database of another version is set aside, not guessed at.
SCHEMA_VERSION: Final = 1
# "EPpm": marks the file as this monitor's, so a foreign SQLite file is never written into.
APPLICATION_ID: Final = 0x4550706D

SCHEMA: Final = """
CREATE TABLE promotions (
    id TEXT PRIMARY KEY, baseline_at REAL, stuck TEXT NOT NULL DEFAULT '[]',
    failures_known INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE jobs (
    promotion_id TEXT NOT NULL, id TEXT NOT NULL, job_type TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, created_at REAL, updated_at REAL, name TEXT,
    codes_requested INTEGER, codes_generated INTEGER, codes_deleted INTEGER,
    PRIMARY KEY (promotion_id, id)
) WITHOUT ROWID;
CREATE TABLE owed (
    ticket INTEGER PRIMARY KEY, promotion_id TEXT NOT NULL, changes TEXT NOT NULL
);
CREATE TABLE reported (
    promotion_id TEXT NOT NULL, job_id TEXT NOT NULL, reported_at REAL NOT NULL,
    PRIMARY KEY (promotion_id, job_id)
) WITHOUT ROWID;
"""

PUT_JOB: Final = "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


# A job's columns, in table order (`updated_key` is a parse-time cache, never stored).
_JOB_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Job) if f.name != "updated_key")


def row(job: Job) -> tuple[Any, ...]:
    return tuple(getattr(job, name) for name in _JOB_FIELDS)


def _flags(change: Change) -> tuple[Any, ...]:
    return change.counts, change.during_baseline, change.late


def encode_changes(changes: Iterable[Change]) -> str:
    rows = [
        (c.kind.value, c.job and row(c.job), c.previous and row(c.previous), *_flags(c))
        for c in changes
    ]
    return json.dumps(rows, separators=(",", ":"))


def decode_changes(pid: str, text: str) -> tuple[Change, ...]:
    return tuple(
        Change(ChangeKind(kind), pid, job and Job(*job), old and Job(*old), counts, during, late)
        for kind, job, old, counts, during, late in json.loads(text)
    )


def prepare(db: sqlite3.Connection) -> None:
    """Create the tables in a new file; refuse a file that is not this monitor's state."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if application_id == 0 and version == 0:
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise ValueError("a SQLite database of something else")
        db.executescript(
            f"BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
            f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
    elif application_id != APPLICATION_ID:
        raise ValueError("a SQLite database of something else")
    elif version != SCHEMA_VERSION:
        raise ValueError(f"state schema version {version} is not {SCHEMA_VERSION}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


def legacy_snapshot(data: bytes) -> dict[str, PromotionSnapshot]:
    """The promotions of a snapshot.json of before the SQLite state (formats 1 and 2). Not its
    journal: a crash left it older, which can only repeat an announcement, never lose one."""
    # (Text held before it was made valid at parse may hold a lone surrogate: UTF-8, and so
    # SQLite, cannot take it. Round-tripped through UTF-8 it is replaced.)
    text = json.dumps(json.loads(data), ensure_ascii=False)
    document = json.loads(text.encode("utf-8", "replace"))
    if not isinstance(document, dict) or document.get("version") not in (1, 2):
        raise ValueError("not a promo-monitor snapshot (format 1 or 2)")
    snapshots = {}
    for pid, entry in document["promotions"].items():
        jobs = {}
        for row in entry["jobs"]:
            job = Job(*(row if len(row) == 10 else [*row, None, None, None, None]))
            jobs[job.id] = job
        stuck = frozenset(s for s in entry.get("stuck", []) if s in jobs)
        snapshots[pid] = PromotionSnapshot(pid, jobs, stuck, entry.get("baseline_at"))
    return snapshots
