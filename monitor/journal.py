"""The journal beside a large snapshot file: each write appends the changes it carries, then a
commit record; loading replays it up to the last whole write.

A promotion the files already hold is appended as a delta (the jobs that changed, the ids that
went), one they do not as a whole entry, a dropped one as its id alone. A crash mid-append tears
the tail; replay stops before the torn write, so what loads is always some write's state.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from monitor.codec import entry_of, row
from monitor.models import PromotionSnapshot

# 2: each append ends with a commit record, and a write torn before it is not applied; a record
# may be a delta (the jobs that changed). Journals of version 1 (whole entries, each applied
# alone) still replay.
JOURNAL_VERSION: Final = 2
READABLE_JOURNALS: Final = (1, 2)


# The journal: one record per line, `<crc32 of payload, 8 hex digits> <payload JSON>\n`. JSON
# escapes every newline, so a record never contains one; a record without its newline or with a
# wrong checksum is where a crash tore the file, and replay stops there. One write appends the
# records of every promotion it carries, then a commit record: a write torn between two of its
# records is not applied at all, so what loads is always the state of some earlier write. A
# promotion the files already hold is written as a delta (its changed jobs), one they do not
# as a whole entry.


def framed(payload: bytes) -> bytes:
    """One record line: the payload's checksum, the payload, a newline."""
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


def journal_head(epoch: str) -> bytes:
    """The first record: which snapshot file (by epoch) the journal continues."""
    return framed(json.dumps({"journal": JOURNAL_VERSION, "epoch": epoch}).encode())


def put_record(promotion_id: str, fragment: bytes) -> bytes:
    return framed(b'{"p":%b,"s":%b}' % (json.dumps(promotion_id).encode(), fragment))


def drop_record(promotion_id: str) -> bytes:
    return framed(b'{"p":%b}' % json.dumps(promotion_id).encode())


def delta_record(promotion_id: str, old: PromotionSnapshot, new: PromotionSnapshot) -> bytes:
    """What `new` changed since `old`: its jobs that differ (`u`), the ids it no longer has (`r`),
    and the rest of its entry. A poll's news costs its jobs, not the promotion's hundred."""
    before = old.jobs
    # Unchanged jobs are the very objects of the last snapshot (the parser reuses them).
    rows = [row(j) for jid, j in new.jobs.items() if (o := before.get(jid)) is not j and o != j]
    gone = [jid for jid in before if jid not in new.jobs]
    delta = {
        "p": promotion_id,
        "u": rows,
        "r": gone,
        "stuck": sorted(new.stuck),
        "baseline_at": new.baseline_at,
    }
    return framed(json.dumps(delta, separators=(",", ":")).encode())


COMMIT: Final = {"c": 1}
COMMIT_RECORD: Final = framed(json.dumps(COMMIT).encode())


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
        return pid, entry_of(pid, record["s"])
    if "u" not in record:
        return pid, None
    old = base(pid)
    if old is None:
        raise ValueError("a delta for a promotion the state does not hold")
    jobs = dict(old.jobs)
    for gone in record["r"]:
        jobs.pop(gone, None)
    changed = entry_of(pid, {"jobs": record["u"], "baseline_at": record["baseline_at"]})
    jobs.update(changed.jobs)
    stuck = frozenset(str(s) for s in record["stuck"] if s in jobs)
    return pid, PromotionSnapshot(pid, jobs, stuck, changed.baseline_at)


def _journal_version(head: Any, epoch: str) -> int | None:
    """The version of a journal that continues the snapshot of `epoch`, else None."""
    if not isinstance(head, dict) or head.get("epoch") != epoch or len(head) != 2:
        return None
    version = head.get("journal")
    return version if type(version) is int and version in READABLE_JOURNALS else None


def replay(data: bytes, epoch: str, snapshots: dict[str, PromotionSnapshot]) -> tuple[int, bool]:
    """Apply a journal's writes to `snapshots`, in order, up to the first torn one.

    Returns the bytes of the usable prefix and whether later writes may append to it: only to
    a whole journal, in this release's format (appends to a version 1 journal would end its
    replay at their first commit record). A journal that continues another snapshot file (an
    older epoch: a crash between a compaction's two renames) is not applied at all.
    """
    end = 0  # just past the last write applied
    version: int | None = None
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
    return end, end > 0 and end == len(data) and version == JOURNAL_VERSION


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
