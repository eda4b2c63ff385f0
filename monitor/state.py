"""What the monitor knows, in memory and in a SQLite database, so restarts neither repeat nor miss.

Its tables (open the file with `sqlite3`): `jobs`/`promotions`, the last snapshot of every watched
promotion; `owed`, the announcements a poll's changes owe, written in the same transaction and
deleted once emitted (still owed at start: announced then, so a crash repeats, never loses);
`reported`, the ledger of failures announced or taken for history, the one authority on "already
reported". A write is one transaction over what changed since the last, shared by the polls that
finish while one is under way (WAL, `synchronous=NORMAL`: a power cut may roll back the last
commits together, which can only repeat an announcement).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor import records
from monitor.models import Change, Job, PromotionSnapshot


@dataclass(frozen=True, slots=True)
class Discarded:
    """Why a state file on disk could not be used."""

    path: Path
    reason: str

    def set_aside(self) -> Path:
        """Keep the file (and SQLite's -wal and -shm beside it) as `.discarded`, for a look."""
        aside = self.path.with_name(self.path.name + ".discarded")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        return aside


@dataclass(frozen=True, slots=True)
class Saved:
    """What a save() came to; whoever saved reports it (monitor.events.state_written)."""

    path: Path
    ok: bool
    error: str | None = None  # why the write failed
    recovered: bool = False  # it worked after failed ones


@dataclass(frozen=True, slots=True)
class Owed:
    """Announcements a poll owes: written with its changes, deleted once emitted."""

    ticket: int
    promotion_id: str
    changes: tuple[Change, ...]


class SnapshotStore:
    """Every watched promotion's snapshot, the announcements owed, the ledger, on disk too."""

    def __init__(self, path: Path) -> None:
        # A `state.path` naming a snapshot.json of an older release: the database goes beside
        # it and the file is imported once.
        self.legacy = path if path.suffix == ".json" else path.with_name("snapshot.json")
        self.path = path.with_suffix(".db") if path.suffix == ".json" else path
        self._db: sqlite3.Connection | None = None
        self._snapshots: dict[str, PromotionSnapshot] = {}
        self._on_disk: dict[str, PromotionSnapshot | None] = {}  # what the database holds
        self._owed: dict[int, Owed] = {}
        self._next_ticket = 1
        self._ledger: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()
        # Pending since the last write (touched only on the loop; the writer gets copies).
        self._changed: dict[str, None] = {}
        self._owed_added: dict[int, None] = {}
        self._owed_done: dict[int, None] = {}
        self._ledger_added: dict[tuple[str, str], None] = {}
        self._ledger_horizon: float | None = None
        self.write_failed = False  # the last write raised; the scheduler's flush retries it

    # loading

    def load(self) -> Discarded | None:
        """Open (or create) the database and read it; a foreign or broken file is set aside by
        the caller, never fatal. An older release's snapshot.json is imported once."""
        try:
            self._db = self._open()
            self._read(self._db)
        except (sqlite3.DatabaseError, OSError, ValueError, TypeError, KeyError) as exc:
            self.close()
            self._snapshots, self._owed, self._ledger = {}, {}, {}
            return Discarded(self.path, str(exc) or type(exc).__name__)
        if not self._snapshots and self.legacy.is_file():
            return self._import_legacy()
        return None

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise OSError(f"{self.path} is a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One writer thread at a time (under _lock), never two: the check is ours, not sqlite3's.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            records.prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _read(self, db: sqlite3.Connection) -> None:
        jobs: dict[str, dict[str, Job]] = {}
        for pid, *columns in db.execute("SELECT * FROM jobs"):
            job = Job(*columns)
            jobs.setdefault(pid, {})[job.id] = job
        for pid, baseline_at, stuck, known in db.execute("SELECT * FROM promotions"):
            held = jobs.get(pid, {})
            marked = frozenset(s for s in json.loads(stuck) if s in held)
            snapshot = PromotionSnapshot(pid, held, marked, baseline_at, failures_known=known == 1)
            self._snapshots[pid] = snapshot
        self._on_disk = dict(self._snapshots)
        for ticket, pid, changes in db.execute("SELECT ticket, promotion_id, changes FROM owed"):
            self._owed[ticket] = Owed(ticket, pid, records.decode_changes(pid, changes))
            self._next_ticket = max(self._next_ticket, ticket + 1)
        for pid, job_id, at in db.execute("SELECT promotion_id, job_id, reported_at FROM reported"):
            self._ledger[(pid, job_id)] = at

    def _import_legacy(self) -> Discarded | None:
        """Import the old file's promotions, then keep it aside as `.imported` (read once)."""
        try:
            snapshots = records.legacy_snapshot(self.legacy.read_bytes())
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return Discarded(self.legacy, str(exc) or type(exc).__name__)
        for snap in snapshots.values():
            self.put(snap)
        try:
            self._write(self._take_batch())
            self._on_disk.update(self._snapshots)
            os.replace(self.legacy, self.legacy.with_name(self.legacy.name + ".imported"))
        except (OSError, sqlite3.Error):
            # (the snapshots stay pending for the first write, the file for the next start)
            self._changed = dict.fromkeys(self._snapshots)
        return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # snapshots

    def get(self, promotion_id: str) -> PromotionSnapshot | None:
        return self._snapshots.get(promotion_id)

    def active(self, promotion_id: str) -> bool:
        """Whether the promotion has a pending, processing or cancelling job, as last known."""
        snapshot = self._snapshots.get(promotion_id)
        return snapshot is not None and snapshot.has_active

    def put(self, snapshot: PromotionSnapshot) -> None:
        self._snapshots[snapshot.promotion_id] = snapshot
        self._changed[snapshot.promotion_id] = None

    def drop(self, promotion_id: str) -> None:
        if self._snapshots.pop(promotion_id, None) is not None:
            self._changed[promotion_id] = None

    def retain(self, promotion_ids: set[str]) -> list[str]:
        """Forget promotions no longer watched; returns the ids dropped."""
        dropped = [pid for pid in self._snapshots if pid not in promotion_ids]
        for pid in dropped:
            self.drop(pid)
        return dropped

    def __iter__(self) -> Iterator[PromotionSnapshot]:
        return iter(list(self._snapshots.values()))

    def __len__(self) -> int:
        return len(self._snapshots)

    # the outbox and the ledger

    def owe(
        self, promotion_id: str, changes: Sequence[Change], at: float, history: Iterable[str] = ()
    ) -> Owed:
        """Owe `changes` an announcement and put their failures, and the failed jobs taken for
        `history`, on the ledger: all on disk in the same write as the snapshot they came with."""
        owed = Owed(self._next_ticket, promotion_id, tuple(changes))
        self._next_ticket += 1
        self._owed[owed.ticket] = owed
        self._owed_added[owed.ticket] = None
        failed = [c.job.id for c in changes if c.is_failure and c.job is not None]
        for job_id in (*failed, *history):
            key = (promotion_id, job_id)
            self._ledger[key] = at
            self._ledger_added[key] = None
        return owed

    def announced(self, owed: Owed) -> None:
        """The owed announcements went out: forget them, on disk at once when no write is under
        way (a delete of one row, without fsync: tens of microseconds on the loop), else with
        the next write. The shorter this gap, the rarer a kill in it repeats an announcement."""
        if self._owed.pop(owed.ticket, None) is None:
            return
        if self._owed_added.pop(owed.ticket, 0) is None:
            return  # (never written: nothing to delete)
        if self._db is not None and not self._lock.locked():
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("DELETE FROM owed WHERE ticket = ?", (owed.ticket,))
                return
        self._owed_done[owed.ticket] = None  # (the next write deletes it)

    def owed(self) -> list[Owed]:
        """What is still owed, oldest first (at start: what a stopped process did not announce)."""
        return sorted(self._owed.values(), key=lambda owed: owed.ticket)

    def reported(self, promotion_id: str, job_id: str) -> bool:
        """Whether this job's failure was announced (or is owed, or was taken for history)."""
        return (promotion_id, job_id) in self._ledger

    def reported_since(self, horizon: float) -> dict[tuple[str, str], float]:
        """The failures announced (or owed) at or after `horizon`, with when."""
        return {key: at for key, at in self._ledger.items() if at >= horizon}

    def remember(self, reported: Mapping[tuple[str, str], float]) -> None:
        """Put failures another replica reported on the ledger (monitor.handover)."""
        for key, at in reported.items():
            if key not in self._ledger:
                self._ledger[key] = at
                self._ledger_added[key] = None

    def prune_ledger(self, horizon: float) -> None:
        """Forget reported failures from before `horizon` (the retention period)."""
        old = [key for key, at in self._ledger.items() if at < horizon]
        for key in old:
            del self._ledger[key]
            self._ledger_added.pop(key, None)
        if old:
            self._ledger_horizon = horizon

    # writing

    @property
    def dirty(self) -> bool:
        return bool(
            self._changed
            or self._owed_added
            or self._owed_done
            or self._ledger_added
            or self._ledger_horizon is not None
        )

    def _write(self, batch: _Batch) -> None:
        if self._db is None:
            self._db = self._open()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for pid, snap in batch.snapshots.items():
                self._write_promotion(db, pid, snap)
            db.executemany(
                "INSERT INTO owed (ticket, promotion_id, changes) VALUES (?, ?, ?)",
                batch.owed,
            )
            db.executemany("DELETE FROM owed WHERE ticket = ?", ((t,) for t in batch.owed_done))
            db.executemany("INSERT OR REPLACE INTO reported VALUES (?, ?, ?)", batch.ledger)
            if batch.ledger_horizon is not None:
                db.execute("DELETE FROM reported WHERE reported_at < ?", (batch.ledger_horizon,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _write_promotion(
        self, db: sqlite3.Connection, pid: str, snap: PromotionSnapshot | None
    ) -> None:
        """Bring the database's copy of one promotion to `snap` (None: dropped), row by row."""
        old = self._on_disk.get(pid)
        if old is None or snap is None:
            db.execute("DELETE FROM jobs WHERE promotion_id = ?", (pid,))
        if snap is None:
            db.execute("DELETE FROM promotions WHERE id = ?", (pid,))
            return
        before = old.jobs if old is not None else {}
        gone = [(pid, job_id) for job_id in before.keys() - snap.jobs.keys()]
        db.executemany("DELETE FROM jobs WHERE promotion_id = ? AND id = ?", gone)
        db.executemany(
            records.PUT_JOB,
            (
                (pid, *records.row(job))
                for job_id, job in snap.jobs.items()
                if (held := before.get(job_id)) is not job and held != job
            ),
        )
        db.execute(
            "INSERT OR REPLACE INTO promotions VALUES (?, ?, ?, ?)",
            (pid, snap.baseline_at, json.dumps(sorted(snap.stuck)), int(snap.failures_known)),
        )

    def _take_batch(self) -> _Batch:
        """Everything pending, handed to the writer; restored by _restore if the write fails."""
        batch = _Batch(
            snapshots={pid: self._snapshots.get(pid) for pid in self._changed},
            owed=[
                (t, o.promotion_id, records.encode_changes(o.changes))
                for t in self._owed_added
                if (o := self._owed.get(t)) is not None
            ],
            owed_done=list(self._owed_done),
            ledger=[(pid, job, self._ledger[(pid, job)]) for pid, job in self._ledger_added],
            ledger_horizon=self._ledger_horizon,
        )
        self._changed, self._owed_added, self._owed_done, self._ledger_added = {}, {}, {}, {}
        self._ledger_horizon = None
        return batch

    def _restore(self, batch: _Batch) -> None:
        """A write that failed rolled back: what it carried is pending again."""
        self._changed = dict.fromkeys(batch.snapshots) | self._changed
        # (an announcement marked done meanwhile needs no row at all)
        self._owed_added = {t: None for t, _, _ in batch.owed if t in self._owed} | self._owed_added
        self._owed_done = dict.fromkeys(batch.owed_done) | self._owed_done
        still = [(pid, job) for pid, job, _ in batch.ledger if (pid, job) in self._ledger]
        self._ledger_added = dict.fromkeys(still) | self._ledger_added
        if batch.ledger_horizon is not None and self._ledger_horizon is None:
            self._ledger_horizon = batch.ledger_horizon

    async def save(self, *, compact: bool = False) -> Saved:
        """persist(), answering instead of raising (the scheduler retries while `write_failed`)."""
        try:
            recovered = await self.persist(compact=compact)
        except (OSError, sqlite3.Error) as exc:
            return Saved(self.path, ok=False, error=getattr(exc, "strerror", None) or str(exc))
        return Saved(self.path, ok=True, recovered=recovered)

    async def persist(self, *, compact: bool = False) -> bool:
        """Make every change made so far durable (one write for concurrent callers; `compact`
        checkpoints the WAL); True when this write is the first to work after failed ones."""
        async with self._lock:
            if not self.dirty and not compact:
                return False
            dirty, batch = self.dirty, self._take_batch()
            write = asyncio.ensure_future(asyncio.to_thread(self._commit, batch, dirty, compact))
            cancelled = False
            while not write.done():
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    # The thread writes on whatever happens to this caller (a poll abandoned at
                    # shutdown or on a lost lease): the lock stays held and the outcome settled
                    # before anyone else writes, or memory and disk would part.
                    cancelled = True
                except Exception:  # noqa: S110 - the write's own error, read from `write` below
                    pass
            error = write.exception()
            recovered = False
            if error is not None:
                self._restore(batch)
                self.write_failed = True
            else:
                recovered, self.write_failed = self.write_failed, False
                self._on_disk.update(batch.snapshots)
        if cancelled:
            raise asyncio.CancelledError
        if error is not None:
            raise error
        return recovered

    def _commit(self, batch: _Batch, dirty: bool, compact: bool) -> None:
        if dirty:
            self._write(batch)
        if compact and self._db is not None:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@dataclass(slots=True)
class _Batch:
    """One write's worth of pending changes, as rows."""

    snapshots: dict[str, PromotionSnapshot | None]
    owed: list[tuple[int, str, str]]
    owed_done: list[int]
    ledger: list[tuple[str, str, float]]
    ledger_horizon: float | None
