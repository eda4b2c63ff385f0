"""The snapshot: what the monitor knows, in memory and on disk, so restarts neither repeat nor miss.

On disk it is a snapshot file plus an append-only journal beside it (`snapshot.json.journal`):
a write appends one record per changed promotion and fsyncs, so it costs the change, not the
state; once the journal outgrows the snapshot, or at a clean shutdown, the snapshot is rewritten
whole and the journal started afresh (compaction). Loading reads the snapshot and replays the
journal up to its first torn record (a crash mid-append). Small states are rewritten whole every
time: below `JOURNAL_ABOVE_BYTES` a rewrite costs what an append does and leaves one file.

Writes are group-committed: polls that finish while a write is under way share the next write,
so a thousand promotions changing in one cycle cost a handful of writes, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from monitor.models import Job, PromotionSnapshot

# 2: job rows carry name and codes requested/generated/deleted. Files of version 1 still load.
# (A snapshot written with a journal names it by a random epoch, an optional key: still version 2.)
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)
# 2: each append ends with a commit record, and a write torn before it is not applied; a record
# may be a delta (the jobs that changed). Journals of version 1 (whole entries, each applied
# alone) still replay.
JOURNAL_VERSION: Final = 2
READABLE_JOURNALS: Final = (1, 2)
# Below this state size a whole rewrite costs about what an append does (one fsync either way).
JOURNAL_ABOVE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Discarded:
    """Why a state file on disk could not be used."""

    path: Path
    reason: str


# What the files on disk hold of each promotion: its snapshot, and its encoded entry while the
# snapshot file's copy is current (None once a journal delta has moved it on: encoded afresh at
# the next compaction). Touched only by the writer, under the store's lock.
Fragments = dict[str, tuple[PromotionSnapshot, bytes | None]]


def _row(j: Job) -> list[Any]:
    return [
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


def _fragment(snap: PromotionSnapshot) -> bytes:
    rows = [_row(j) for j in snap.jobs.values()]
    entry = {"jobs": rows, "stuck": sorted(snap.stuck), "baseline_at": snap.baseline_at}
    return json.dumps(entry, separators=(",", ":")).encode()


def _cached_fragment(cache: Fragments | None, snap: PromotionSnapshot) -> bytes:
    """The snapshot's encoded entry, reused while its (immutable) object is the same."""
    cached = cache.get(snap.promotion_id) if cache is not None else None
    if cached is not None and cached[0] is snap and cached[1] is not None:
        return cached[1]
    fragment = _fragment(snap)
    if cache is not None:
        cache[snap.promotion_id] = (snap, fragment)
    return fragment


def encode_parts(
    snapshots: dict[str, PromotionSnapshot],
    saved_at: float,
    cache: Fragments | None = None,
    epoch: str | None = None,
) -> list[bytes]:
    """The on-disk form as chunks to write one after another: compact job rows, so 100k jobs
    stay a few MB, and never one more copy of the whole file in memory.

    With `cache`, a promotion whose snapshot object is unchanged since the last write reuses
    its encoded bytes: a write costs the changed promotions, not all of them. `epoch` names the
    journal that continues this file.
    """
    head: dict[str, Any] = {"version": FORMAT_VERSION, "saved_at": saved_at}
    if epoch is not None:
        head["journal"] = epoch
    parts = [json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"promotions":{']
    for n, (pid, snap) in enumerate(snapshots.items()):
        fragment = _cached_fragment(cache, snap)
        parts.append((b"," if n else b"") + json.dumps(pid).encode() + b":")
        parts.append(fragment)
    parts.append(b"}}")
    if cache is not None:
        for gone in cache.keys() - snapshots.keys():
            del cache[gone]
    return parts


def encode(
    snapshots: dict[str, PromotionSnapshot],
    saved_at: float,
    cache: Fragments | None = None,
    epoch: str | None = None,
) -> bytes:
    """The whole state file as one bytes object (see encode_parts)."""
    return b"".join(encode_parts(snapshots, saved_at, cache, epoch))


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


def _entry(pid: str, entry: Any) -> PromotionSnapshot:
    """One promotion's entry, as encoded by _fragment."""
    jobs: dict[str, Job] = {}
    for row in entry["jobs"]:
        job = _job(row)
        jobs[job.id] = job
    stuck = frozenset(str(s) for s in entry.get("stuck", []) if s in jobs)
    # (absent in files written before it was kept: then nothing counts as seen late)
    baseline_at = _optional_float(entry.get("baseline_at"))
    return PromotionSnapshot(pid, jobs, stuck, baseline_at)


def decode(data: bytes) -> dict[str, PromotionSnapshot]:
    """Parse a state file; raises ValueError with a reason for anything torn or foreign."""
    return decode_with_epoch(data)[0]


def decode_with_epoch(data: bytes) -> tuple[dict[str, PromotionSnapshot], str | None]:
    """A state file's snapshots and the epoch of the journal that continues it (None: none)."""
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
        snapshots[str(pid)] = _entry(str(pid), entry)
    epoch = document.get("journal")
    return snapshots, epoch if isinstance(epoch, str) else None


# The journal: one record per line, `<crc32 of payload, 8 hex digits> <payload JSON>\n`. JSON
# escapes every newline, so a record never contains one; a record without its newline or with a
# wrong checksum is where a crash tore the file, and replay stops there. One write appends the
# records of every promotion it carries, then a commit record: a write torn between two of its
# records is not applied at all, so what loads is always the state of some earlier write. A
# promotion the files already hold is written as a delta (its changed jobs), one they do not
# as a whole entry.


def _record(payload: bytes) -> bytes:
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


def journal_head(epoch: str) -> bytes:
    """The first record: which snapshot file (by epoch) the journal continues."""
    return _record(json.dumps({"journal": JOURNAL_VERSION, "epoch": epoch}).encode())


def put_record(promotion_id: str, fragment: bytes) -> bytes:
    return _record(b'{"p":%b,"s":%b}' % (json.dumps(promotion_id).encode(), fragment))


def drop_record(promotion_id: str) -> bytes:
    return _record(b'{"p":%b}' % json.dumps(promotion_id).encode())


def delta_record(promotion_id: str, old: PromotionSnapshot, new: PromotionSnapshot) -> bytes:
    """What `new` changed since `old`: its jobs that differ (`u`), the ids it no longer has (`r`),
    and the rest of its entry. A poll's news costs its jobs, not the promotion's hundred."""
    before = old.jobs
    # Unchanged jobs are the very objects of the last snapshot (the parser reuses them).
    rows = [_row(j) for jid, j in new.jobs.items() if (o := before.get(jid)) is not j and o != j]
    gone = [jid for jid in before if jid not in new.jobs]
    delta = {
        "p": promotion_id,
        "u": rows,
        "r": gone,
        "stuck": sorted(new.stuck),
        "baseline_at": new.baseline_at,
    }
    return _record(json.dumps(delta, separators=(",", ":")).encode())


COMMIT: Final = {"c": 1}
COMMIT_RECORD: Final = _record(json.dumps(COMMIT).encode())


def _payload(line: bytes) -> Any:
    """A record's payload, or ValueError if the line is torn or corrupt."""
    crc, _, payload = line.partition(b" ")
    if len(crc) != 8 or int(crc, 16) != zlib.crc32(payload):  # (int() raises on non-hex)
        raise ValueError("checksum mismatch")
    return json.loads(payload)


def _operation(
    record: Any, base: Callable[[str], PromotionSnapshot | None]
) -> tuple[str, PromotionSnapshot | None]:
    """A put or delta (the promotion's new snapshot) or a drop (None); ValueError if malformed.

    `base` gives a promotion's snapshot as the journal has it so far, for a delta to apply to.
    """
    pid = record["p"]
    if not isinstance(pid, str):
        raise ValueError("promotion id is not text")  # noqa: TRY004 - callers catch ValueError
    if "s" in record:
        return pid, _entry(pid, record["s"])
    if "u" not in record:
        return pid, None
    old = base(pid)
    if old is None:
        raise ValueError("a delta for a promotion the state does not hold")
    jobs = dict(old.jobs)
    for gone in record["r"]:
        jobs.pop(gone, None)
    changed = _entry(pid, {"jobs": record["u"], "baseline_at": record["baseline_at"]})
    jobs.update(changed.jobs)
    stuck = frozenset(str(s) for s in record["stuck"] if s in jobs)
    return pid, PromotionSnapshot(pid, jobs, stuck, changed.baseline_at)


def _journal_version(head: Any, epoch: str) -> int | None:
    """The version of a journal that continues the snapshot of `epoch`, else None."""
    if not isinstance(head, dict) or head.get("epoch") != epoch or len(head) != 2:
        return None
    version = head.get("journal")
    return version if type(version) is int and version in READABLE_JOURNALS else None


def journal_version(data: bytes) -> int | None:
    """The version its head record names, or None for a journal without a readable head."""
    head, _, _ = data.partition(b"\n")
    try:
        record = _payload(head)
    except (ValueError, RecursionError):
        return None
    version = record.get("journal") if isinstance(record, dict) else None
    return version if type(version) is int else None


def replay(data: bytes, epoch: str, snapshots: dict[str, PromotionSnapshot]) -> tuple[int, bool]:
    """Apply a journal's writes to `snapshots`, in order, up to the first torn one.

    Returns the bytes of the usable prefix and whether that is the whole journal. A journal
    that continues another snapshot file (an older epoch: a crash between a compaction's two
    renames) is not applied at all.
    """
    end = 0  # just past the last write applied
    grouped = True
    pending: dict[str, PromotionSnapshot | None] = {}  # the write being read, until its commit

    def base(pid: str) -> PromotionSnapshot | None:
        return pending[pid] if pid in pending else snapshots.get(pid)

    position = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        if newline < 0:
            break
        try:
            record = _payload(data[position:newline])
            if position == 0:
                version = _journal_version(record, epoch)
                if version is None:
                    return 0, False
                grouped = version >= 2  # (the version that added commits)
                end = newline + 1
            elif grouped and record == COMMIT:
                for pid, snapshot in pending.items():
                    _set(snapshots, pid, snapshot)
                pending.clear()
                end = newline + 1
            elif grouped:
                pid, snapshot = _operation(record, base)
                pending[pid] = snapshot
            else:
                _set(snapshots, *_operation(record, snapshots.get))
                end = newline + 1
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            break
        position = newline + 1
    return end, end > 0 and end == len(data)


def _set(
    snapshots: dict[str, PromotionSnapshot], pid: str, snapshot: PromotionSnapshot | None
) -> None:
    if snapshot is None:
        snapshots.pop(pid, None)
    else:
        snapshots[pid] = snapshot


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def append_durable(path: Path, records: list[bytes]) -> None:
    """Append to an existing file and fsync its data; the file is created by a compaction."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    with os.fdopen(fd, "ab") as handle:
        handle.writelines(records)
        handle.flush()
        os.fdatasync(handle.fileno())


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
            self._journal_bytes, whole = replay(journal, epoch, snapshots)
            # Appends must be in the journal's own format: one written by an earlier release
            # (version 1: no commit records) is folded into a new snapshot at the next write.
            whole = whole and journal_version(journal) == JOURNAL_VERSION
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
            return put_record(pid, _cached_fragment(fragments, snap))
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
