"""The snapshot: what the monitor knows, in memory and on disk, so restarts neither repeat nor miss.

On disk it is a snapshot file (`monitor.codec`) plus an append-only journal beside it
(`snapshot.json.journal`, `monitor.journal`): a write appends the changes of the promotions it
carries and fsyncs, so it costs the change, not the state; once the journal outgrows the
snapshot, or at a clean shutdown, the snapshot is rewritten whole and the journal started afresh
(compaction). Loading reads the snapshot and replays the journal up to its last whole write (a
crash mid-append). Small states are rewritten whole every time: below `JOURNAL_ABOVE_BYTES` a
rewrite costs what an append does and leaves one file.

Writes are group-committed: polls that finish while a write is under way share the next write,
so a thousand promotions changing in one cycle cost a handful of writes, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from monitor.codec import Fragments, cached_fragment, decode_with_epoch, encode_parts
from monitor.journal import (
    COMMIT_RECORD,
    append_durable,
    delta_record,
    drop_record,
    journal_head,
    journal_path,
    put_record,
    replay,
)
from monitor.models import PromotionSnapshot

# Below this state size a whole rewrite costs about what an append does (one fsync either way).
JOURNAL_ABOVE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Discarded:
    """Why a state file on disk could not be used."""

    path: Path
    reason: str


def write_atomic(path: Path, data: bytes | list[bytes]) -> None:
    """Write via a temp file in the same directory, fsync, then rename over the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                handle.writelines(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk, or a power cut can bring back the old file.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Saved:
    """What a save() came to; whoever saved reports it (monitor.events.state_written)."""

    path: Path
    ok: bool
    error: str | None = None  # why the write failed
    recovered: bool = False  # it worked after failed ones


class SnapshotStore:
    """The current snapshot of every watched promotion, and its durable copy."""

    def __init__(
        self,
        path: Path,
        *,
        journal_above: int = JOURNAL_ABOVE_BYTES,
    ) -> None:
        self.path = path
        self.journal = journal_path(path)
        self._journal_above = journal_above
        self._snapshots: dict[str, PromotionSnapshot] = {}
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped by every change in memory
        self._written = 0  # the generation the files on disk hold
        self._changed: dict[str, None] = {}  # promotions put or dropped since the last write
        # Only touched under _lock (in the writer thread): what is on disk.
        self._fragments: Fragments = {}
        self._epoch: str | None = None  # the journal appends may go to; None: rewrite whole
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        self.write_failed = False  # the last write raised; the scheduler's flush retries it

    def load(self) -> Discarded | None:
        """Load the file and replay its journal; a torn or foreign file is set aside, never
        fatal; a torn journal is applied up to the tear."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Discarded(self.path, f"unreadable: {exc.strerror}")
        try:
            snapshots, epoch = decode_with_epoch(data)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            return Discarded(self.path, str(exc) or type(exc).__name__)
        self._snapshot_bytes = len(data)
        whole = False
        if epoch is not None:
            try:
                journal = self.journal.read_bytes()
            except FileNotFoundError:
                journal = b""  # none yet: the snapshot holds everything
            except OSError as exc:
                # Changes were journaled that cannot be read: the snapshot alone is older than
                # what was announced, and would announce it again. A fresh baseline instead.
                return Discarded(self.journal, f"unreadable: {exc.strerror}")
            # (a version 1 journal, from the release before, is folded at the next write)
            self._journal_bytes, whole = replay(journal, epoch, snapshots)
        # A journal with a torn tail cannot take appends (replay would stop before them): the
        # next write rewrites the snapshot and starts a new journal.
        self._epoch = epoch if whole else None
        self._snapshots = snapshots
        return None

    def get(self, promotion_id: str) -> PromotionSnapshot | None:
        return self._snapshots.get(promotion_id)

    def active(self, promotion_id: str) -> bool:
        """Whether the promotion has a pending, processing or cancelling job, as last known."""
        snapshot = self._snapshots.get(promotion_id)
        return snapshot is not None and snapshot.has_active

    def put(self, snapshot: PromotionSnapshot) -> None:
        self._snapshots[snapshot.promotion_id] = snapshot
        self._changed[snapshot.promotion_id] = None
        self._generation += 1

    def drop(self, promotion_id: str) -> None:
        if self._snapshots.pop(promotion_id, None) is not None:
            self._changed[promotion_id] = None
            self._generation += 1

    def retain(self, promotion_ids: set[str]) -> list[str]:
        """Forget promotions no longer watched; returns the ids dropped."""
        dropped = [pid for pid in self._snapshots if pid not in promotion_ids]
        for pid in dropped:
            del self._snapshots[pid]
            self._changed[pid] = None
        if dropped:
            self._generation += 1
        return dropped

    def __iter__(self) -> Iterator[PromotionSnapshot]:
        return iter(list(self._snapshots.values()))

    def __len__(self) -> int:
        return len(self._snapshots)

    @property
    def dirty(self) -> bool:
        return self._written < self._generation

    def _write(
        self,
        view: dict[str, PromotionSnapshot],
        changed: Iterable[str],
        saved_at: float,
        compact: bool,
    ) -> None:
        # One thread hop for encoding and writing; the fragments are reused, never copied.
        small = self._snapshot_bytes + self._journal_bytes < self._journal_above
        if compact or small or self._epoch is None or self._journal_bytes > self._snapshot_bytes:
            self._rewrite(view, saved_at, journal=not small)
            return
        records = [self._journal_record(pid, view.get(pid)) for pid in changed]
        records.append(COMMIT_RECORD)
        append_durable(self.journal, records)
        self._journal_bytes += sum(map(len, records))

    def _journal_record(self, pid: str, snap: PromotionSnapshot | None) -> bytes:
        """The record that brings the files' copy of `pid` to `snap` (None: dropped)."""
        fragments = self._fragments
        if snap is None:
            fragments.pop(pid, None)
            return drop_record(pid)
        on_disk = fragments.get(pid)
        if on_disk is None:  # (not written since the state was loaded, or new)
            return put_record(pid, cached_fragment(fragments, snap))
        fragments[pid] = (snap, None)
        return delta_record(pid, on_disk[0], snap)

    def _rewrite(self, view: dict[str, PromotionSnapshot], saved_at: float, journal: bool) -> None:
        """Compaction: the whole snapshot, then (for a large state) a new, empty journal."""
        epoch = secrets.token_hex(8) if journal else None
        parts = encode_parts(view, saved_at, self._fragments, epoch)
        self._epoch = None  # until the new journal is in place
        # A crash between these two renames leaves a journal of the old epoch: never replayed.
        write_atomic(self.path, parts)
        had_journal, self._journal_bytes = self._journal_bytes > 0, 0
        self._snapshot_bytes = sum(map(len, parts))
        if epoch is None and had_journal:
            with contextlib.suppress(OSError):  # (stale, so never replayed: only tidiness)
                os.unlink(self.journal)
        if epoch is not None:
            head = journal_head(epoch)
            write_atomic(self.journal, head)
            self._epoch, self._journal_bytes = epoch, len(head)

    async def save(self, saved_at: float, *, compact: bool = False) -> Saved:
        """persist(), answering instead of raising: whether every change is durable, and whether
        this call's write ended a run of failed writes (the scheduler retries every 30 s while
        `write_failed`)."""
        try:
            recovered = await self.persist(saved_at, compact=compact)
        except OSError as exc:
            return Saved(self.path, ok=False, error=exc.strerror or str(exc))
        return Saved(self.path, ok=True, recovered=recovered)

    async def persist(self, saved_at: float, *, compact: bool = False) -> bool:
        """Make every change made so far durable; concurrent callers share one write. Returns
        True when this call's write is the first to work after failed ones.

        `compact` (at a clean shutdown) leaves the whole state in the snapshot file.
        """
        wanted = self._generation
        async with self._lock:
            if self._written >= wanted and not (compact and self._epoch is not None):
                return False
            generation = self._generation
            # Snapshots are immutable, so a shallow copy is a consistent view to encode off-loop.
            view = dict(self._snapshots)
            changed, self._changed = self._changed, {}
            write = asyncio.ensure_future(
                asyncio.to_thread(self._write, view, changed, saved_at, compact)
            )
            cancelled, recovered = False, False
            while not write.done():
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    # The thread writes on whatever happens to this caller (a poll abandoned
                    # at shutdown or on a lost lease): the lock stays held and the outcome is
                    # settled before anyone else writes, or files and bookkeeping would part.
                    cancelled = True
                except Exception:  # noqa: S110 - the write's own error, read from `write` below
                    pass
            error = write.exception()
            if error is not None:
                # What reached the journal is unknown: the retry rewrites the whole snapshot.
                self._epoch = None
                self._changed = changed | self._changed
                self.write_failed = True
            else:
                recovered, self.write_failed = self.write_failed, False
                self._written = generation
        if cancelled:
            raise asyncio.CancelledError
        if error is not None:
            raise error
        return recovered
