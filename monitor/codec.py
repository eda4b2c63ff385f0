"""The snapshot file's format: compact job rows by promotion, written as streamed fragments.

Each promotion's entry is encoded once per snapshot object and reused (`Fragments`), so a write
costs the promotions that changed. Reading is tolerant of nothing: a torn or foreign file raises
ValueError with a reason, and the store sets it aside.
"""

from __future__ import annotations

import json
from typing import Any, Final

from monitor.models import Job, PromotionSnapshot

# 2: job rows carry name and codes requested/generated/deleted. Files of version 1 still load.
# (A snapshot written with a journal names it by a random epoch, an optional key: still version 2.)
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)


# What the files on disk hold of each promotion: its snapshot, and its encoded entry while the
# snapshot file's copy is current (None once a journal delta has moved it on: encoded afresh at
# the next compaction). Touched only by the writer, under the store's lock.
Fragments = dict[str, tuple[PromotionSnapshot, bytes | None]]


def row(j: Job) -> list[Any]:
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
    rows = [row(j) for j in snap.jobs.values()]
    entry = {"jobs": rows, "stuck": sorted(snap.stuck), "baseline_at": snap.baseline_at}
    return json.dumps(entry, separators=(",", ":")).encode()


def cached_fragment(cache: Fragments | None, snap: PromotionSnapshot) -> bytes:
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
        fragment = cached_fragment(cache, snap)
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


def entry_of(pid: str, entry: Any) -> PromotionSnapshot:
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
        snapshots[str(pid)] = entry_of(str(pid), entry)
    epoch = document.get("journal")
    return snapshots, epoch if isinstance(epoch, str) else None
