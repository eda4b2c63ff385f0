"""The snapshot: what the monitor knows, in memory and on disk, so restarts neither repeat nor miss.

Writes are group-committed: polls that finish while a write is under way share the next write,
so a thousand promotions changing in one cycle cost a handful of writes, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from monitor.events import Discard, EventSink, StateWriteFailed, StateWriteRecovered
from monitor.models import Job, PromotionSnapshot

# 2: job rows carry name and codes requested/generated/deleted. Files of version 1 still load.
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)


@dataclass(frozen=True, slots=True)
class Discarded:
    """Why a state file on disk could not be used."""

    path: Path
    reason: str


Fragments = dict[str, tuple[PromotionSnapshot, bytes]]


def _fragment(snap: PromotionSnapshot) -> bytes:
    rows = [
        [
            j.id,
            j.job_type,
            j.status,
            j.error,
            j.created_at,
            j.updated_at,
            j.name,
            j.codes_requested,
            j.codes_generated,
            j.codes_deleted,
        ]
        for j in snap.jobs.values()
    ]
    entry = {"jobs": rows, "stuck": sorted(snap.stuck), "baseline_at": snap.baseline_at}
    return json.dumps(entry, separators=(",", ":")).encode()


def encode_parts(
    snapshots: dict[str, PromotionSnapshot], saved_at: float, cache: Fragments | None = None
) -> list[bytes]:
    """The on-disk form as chunks to write one after another: compact job rows, so 100k jobs
    stay a few MB, and never one more copy of the whole file in memory.

    With `cache`, a promotion whose snapshot object is unchanged since the last write reuses
    its encoded bytes: a write costs the changed promotions, not all of them.
    """
    head = json.dumps({"version": FORMAT_VERSION, "saved_at": saved_at}, separators=(",", ":"))
    parts = [head[:-1].encode() + b',"promotions":{']
    for n, (pid, snap) in enumerate(snapshots.items()):
        cached = cache.get(pid) if cache is not None else None
        if cached is not None and cached[0] is snap:
            fragment = cached[1]
        else:
            fragment = _fragment(snap)
            if cache is not None:
                cache[pid] = (snap, fragment)
        parts.append((b"," if n else b"") + json.dumps(pid).encode() + b":")
        parts.append(fragment)
    parts.append(b"}}")
    if cache is not None:
        for gone in cache.keys() - snapshots.keys():
            del cache[gone]
    return parts


def encode(
    snapshots: dict[str, PromotionSnapshot], saved_at: float, cache: Fragments | None = None
) -> bytes:
    """The whole state file as one bytes object (see encode_parts)."""
    return b"".join(encode_parts(snapshots, saved_at, cache))


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError("timestamp is not a number")


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError("error is not a string")


def _optional_count(value: Any) -> int | None:
    if value is None or (type(value) is int and value >= 0):
        return value
    raise ValueError("a code count is not a non-negative integer")


def _job(row: Any) -> Job:
    """One job row: 6 fields in version 1, 10 since version 2."""
    if not isinstance(row, list) or len(row) not in (6, 10):
        raise ValueError("job row has the wrong shape")
    job_id, job_type, status, error, created, updated = row[:6]
    name, requested, generated, deleted = row[6:] if len(row) == 10 else (None,) * 4
    if not all(isinstance(v, str) for v in (job_id, job_type, status)):
        raise ValueError("job row has non-text fields")
    return Job(
        job_id,
        job_type,
        status,
        _optional_str(error),
        _optional_float(created),
        _optional_float(updated),
        _optional_str(name),
        _optional_count(requested),
        _optional_count(generated),
        _optional_count(deleted),
    )


def decode(data: bytes) -> dict[str, PromotionSnapshot]:
    """Parse a state file; raises ValueError with a reason for anything torn or foreign."""
    document = json.loads(data)
    if not isinstance(document, dict) or "promotions" not in document:
        raise ValueError("not a promo-monitor state file")
    version = document.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ValueError(f"state format version {version!r} is not one of {READABLE_VERSIONS}")
    snapshots: dict[str, PromotionSnapshot] = {}
    promotions = document["promotions"]
    if not isinstance(promotions, dict):
        raise ValueError("promotions is not a mapping")  # noqa: TRY004 - callers catch ValueError
    for pid, entry in promotions.items():
        jobs: dict[str, Job] = {}
        for row in entry["jobs"]:
            job = _job(row)
            jobs[job.id] = job
        stuck = frozenset(str(s) for s in entry.get("stuck", []) if s in jobs)
        # (absent in files written before it was kept: then nothing counts as seen late)
        baseline_at = _optional_float(entry.get("baseline_at"))
        snapshots[str(pid)] = PromotionSnapshot(str(pid), jobs, stuck, baseline_at)
    return snapshots


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


class SnapshotStore:
    """The current snapshot of every watched promotion, and its durable copy."""

    def __init__(self, path: Path, events: EventSink | None = None) -> None:
        self.path = path
        self._events: EventSink = events if events is not None else Discard()
        self._snapshots: dict[str, PromotionSnapshot] = {}
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped by every change in memory
        self._written = 0  # the generation the file on disk holds
        self._fragments: Fragments = {}  # only touched under _lock, in the writer thread
        self.write_failed = False  # the last write raised; the scheduler's flush retries it

    def load(self) -> Discarded | None:
        """Load the file if there is one; a torn or foreign file is set aside, never fatal."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Discarded(self.path, f"unreadable: {exc.strerror}")
        try:
            self._snapshots = decode(data)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            return Discarded(self.path, str(exc) or type(exc).__name__)
        return None

    def get(self, promotion_id: str) -> PromotionSnapshot | None:
        return self._snapshots.get(promotion_id)

    def put(self, snapshot: PromotionSnapshot) -> None:
        self._snapshots[snapshot.promotion_id] = snapshot
        self._generation += 1

    def drop(self, promotion_id: str) -> None:
        if self._snapshots.pop(promotion_id, None) is not None:
            self._generation += 1

    def retain(self, promotion_ids: set[str]) -> list[str]:
        """Forget promotions no longer watched; returns the ids dropped."""
        dropped = [pid for pid in self._snapshots if pid not in promotion_ids]
        for pid in dropped:
            del self._snapshots[pid]
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

    def _write(self, view: dict[str, PromotionSnapshot], saved_at: float) -> None:
        # One thread hop for encoding and writing; the fragments are reused, never copied.
        write_atomic(self.path, encode_parts(view, saved_at, self._fragments))

    async def save(self, saved_at: float) -> bool:
        """persist(), reporting instead of raising: True when every change is durable.

        The one place a failed or recovered write is announced; the scheduler retries every
        30 s while `write_failed`.
        """
        failed_before = self.write_failed
        try:
            await self.persist(saved_at)
        except OSError as exc:
            self._events.emit(
                StateWriteFailed(path=str(self.path), detail=exc.strerror or str(exc))
            )
            return False
        if failed_before:
            self._events.emit(StateWriteRecovered(path=str(self.path)))
        return True

    async def persist(self, saved_at: float) -> None:
        """Make every change made so far durable; concurrent callers share one write."""
        wanted = self._generation
        async with self._lock:
            if self._written >= wanted:
                return
            generation = self._generation
            # Snapshots are immutable, so a shallow copy is a consistent view to encode off-loop.
            view = dict(self._snapshots)
            try:
                await asyncio.to_thread(self._write, view, saved_at)
            except OSError:
                self.write_failed = True
                raise
            self.write_failed = False
            self._written = generation
