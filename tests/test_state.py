"""The snapshot store: encoding, loading whatever is on disk, group-committed atomic writes."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import state
from monitor.models import Job, PromotionSnapshot
from monitor.state import Discarded, SnapshotStore, decode, encode, write_atomic

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
        real_write, real_append = state.write_atomic, state.append_durable

        def write(path: Path, data: bytes | list[bytes]) -> None:
            if path.name.endswith(".json"):  # (a compaction's new journal is part of its write)
                self.calls += 1
            real_write(path, data)

        def append(path: Path, records: list[bytes]) -> None:
            self.calls += 1
            self.appends += 1
            real_append(path, records)

        monkeypatch.setattr(state, "write_atomic", write)
        monkeypatch.setattr(state, "append_durable", append)


def on_disk(path: Path) -> dict[str, PromotionSnapshot]:
    fresh = SnapshotStore(path)
    assert fresh.load() is None
    return {snap.promotion_id: snap for snap in fresh}


# encoding


def test_encode_decode_round_trip() -> None:
    assert decode(encode(SNAPSHOTS, SAVED_AT)) == SNAPSHOTS


def test_encoding_is_one_compact_json_document() -> None:
    document = json.loads(encode(SNAPSHOTS, SAVED_AT))
    assert document["saved_at"] == SAVED_AT
    assert sorted(document["promotions"]) == sorted(SNAPSHOTS)


_times = st.none() | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, PromotionSnapshot]:
    result: dict[str, PromotionSnapshot] = {}
    for pid in draw(st.lists(st.text(), max_size=4, unique=True)):
        jobs = draw(
            st.lists(
                st.builds(
                    Job,
                    id=st.text(),
                    job_type=st.text(),
                    status=st.text(),
                    error=st.none() | st.text(),
                    created_at=_times,
                    updated_at=_times,
                ),
                max_size=5,
                unique_by=lambda job: job.id,
            )
        )
        ids = [job.id for job in jobs]
        stuck = draw(st.frozensets(st.sampled_from(ids))) if ids else frozenset[str]()
        result[pid] = snapshot(pid, *jobs, stuck=stuck)
    return result


@settings(database=None, max_examples=200)
@given(snapshots())
def test_any_snapshot_survives_a_round_trip(original: dict[str, PromotionSnapshot]) -> None:
    assert decode(encode(original, SAVED_AT)) == original


# loading


def test_load_without_a_file_is_an_empty_store(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "absent" / "snapshot.json")
    assert store.load() is None
    assert len(store) == 0
    assert list(store) == []
    assert not store.dirty


async def test_persisted_snapshots_are_loaded_by_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "snapshot.json"
    store = SnapshotStore(path)
    for snap in SNAPSHOTS.values():
        store.put(snap)
    assert store.dirty

    await store.persist(SAVED_AT)

    assert not store.dirty
    fresh = SnapshotStore(path)
    assert fresh.load() is None
    assert {snap.promotion_id: snap for snap in fresh} == SNAPSHOTS
    assert fresh.get("p-stuck") == SNAPSHOTS["p-stuck"]
    assert fresh.get("unknown") is None
    assert not fresh.dirty


GOOD_ROW = ["j1", "code_generate", "failed", "codes limit exceeded", 1.0, 2.0]


def state_file(promotions: object, version: object = 1) -> bytes:
    return json.dumps({"version": version, "saved_at": SAVED_AT, "promotions": promotions}).encode()


BROKEN_FILES = {
    "torn": encode(SNAPSHOTS, SAVED_AT)[:-40],
    "empty": b"",
    "not-utf8": b"\xff\xfe\x00garbage",
    "foreign-object": b'{"foo": 1}',
    "foreign-list": b"[1, 2, 3]",
    "foreign-scalar": b'"snapshot"',
    "other-version": state_file({}, version=3),
    "no-version": json.dumps({"promotions": {}}).encode(),
    "promotions-not-a-mapping": state_file([]),
    "entry-not-a-mapping": state_file({"p": [GOOD_ROW]}),
    "entry-without-jobs": state_file({"p": {"stuck": []}}),
    "short-row": state_file({"p": {"jobs": [GOOD_ROW[:5]]}}),
    "long-row": state_file({"p": {"jobs": [[*GOOD_ROW, "extra"]]}}),
    "row-not-a-list": state_file({"p": {"jobs": [7]}}),
    "numeric-id": state_file({"p": {"jobs": [[1, *GOOD_ROW[1:]]]}}),
    "text-timestamp": state_file({"p": {"jobs": [[*GOOD_ROW[:4], "yesterday", 2.0]]}}),
    "bool-timestamp": state_file({"p": {"jobs": [[*GOOD_ROW[:5], True]]}}),
    "numeric-error": state_file({"p": {"jobs": [[*GOOD_ROW[:3], 500, 1.0, 2.0]]}}),
    "stuck-not-a-list": state_file({"p": {"jobs": [GOOD_ROW], "stuck": 5}}),
    "stuck-unhashable": state_file({"p": {"jobs": [GOOD_ROW], "stuck": [["j1"]]}}),
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_unusable_file_is_discarded_with_a_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(content)
    store = SnapshotStore(path)

    discarded = store.load()

    assert isinstance(discarded, Discarded)
    assert discarded.path == path
    assert discarded.reason.strip()
    assert len(store) == 0
    assert not store.dirty


def test_other_version_names_the_version(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(state_file({}, version=3))
    discarded = SnapshotStore(path).load()
    assert discarded is not None
    assert "version" in discarded.reason
    assert "2" in discarded.reason


def test_a_directory_in_place_of_the_file_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.mkdir()
    store = SnapshotStore(path)
    discarded = store.load()
    assert isinstance(discarded, Discarded)
    assert len(store) == 0


def test_deeply_nested_file_is_discarded_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(b"[" * 200_000)
    assert isinstance(SnapshotStore(path).load(), Discarded)


async def test_a_bad_file_is_replaced_by_the_next_persist(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(BROKEN_FILES["torn"])
    store = SnapshotStore(path)
    assert store.load() is not None
    store.put(SNAPSHOTS["p-failed"])

    await store.persist(SAVED_AT)

    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}


# persisting


async def test_concurrent_persists_share_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = CountingWrites(monkeypatch)
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    wanted = {
        f"p{i}": snapshot(f"p{i}", Job(f"j{i}", "code_generate", "pending")) for i in range(50)
    }
    for snap in wanted.values():
        store.put(snap)

    await asyncio.gather(*(store.persist(SAVED_AT) for _ in range(50)))

    assert not store.dirty
    assert on_disk(path) == wanted
    assert writes.calls in range(1, 50)  # at least one write, and fewer than one per put


async def test_polls_finishing_during_a_write_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = CountingWrites(monkeypatch)
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    wanted = {f"p{i}": snapshot(f"p{i}", Job(f"j{i}", "code_export", "failed")) for i in range(50)}

    async def poll_done(snap: PromotionSnapshot) -> None:
        store.put(snap)
        await store.persist(SAVED_AT)

    await asyncio.gather(*(poll_done(snap) for snap in wanted.values()))

    assert not store.dirty
    assert on_disk(path) == wanted
    assert writes.calls in range(1, 50)  # at least one write, and fewer than one per put


async def test_a_change_made_during_a_write_stays_dirty_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    started, release = threading.Event(), threading.Event()
    real = state.write_atomic

    def held_write(target: Path, data: bytes) -> None:
        started.set()
        release.wait(10)
        real(target, data)

    monkeypatch.setattr(state, "write_atomic", held_write)
    store.put(SNAPSHOTS["p-failed"])
    first = asyncio.create_task(store.persist(SAVED_AT))
    assert await asyncio.to_thread(started.wait, 10)
    store.put(SNAPSHOTS["p-none"])
    release.set()
    await first

    assert store.dirty
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}

    await store.persist(SAVED_AT + 1)

    assert not store.dirty
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"], "p-none": SNAPSHOTS["p-none"]}


async def test_persist_without_changes_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(encode(SNAPSHOTS, SAVED_AT))
    store = SnapshotStore(path)
    assert store.load() is None
    writes = CountingWrites(monkeypatch)

    await store.persist(SAVED_AT)
    store.put(SNAPSHOTS["p-none"])
    await store.persist(SAVED_AT)
    await store.persist(SAVED_AT)

    assert writes.calls == 1


async def test_failed_persist_keeps_the_store_dirty_until_a_later_one_succeeds(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a regular file where the state directory should be", encoding="utf-8")
    path = blocker / "snapshot.json"
    store = SnapshotStore(path)
    store.put(SNAPSHOTS["p-stuck"])
    # Dirty between a put and its persist is normal; only a failed write asks for a retry.
    assert store.dirty
    assert not store.write_failed

    with pytest.raises(OSError):  # noqa: PT011 - which OSError depends on the platform
        await store.persist(SAVED_AT)
    assert store.dirty
    assert store.write_failed

    blocker.unlink()
    await store.persist(SAVED_AT)

    assert not store.dirty
    assert not store.write_failed
    assert on_disk(path) == {"p-stuck": SNAPSHOTS["p-stuck"]}


# write_atomic


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "snapshot.json"
    write_atomic(path, b"first")
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["snapshot.json"]


def test_write_atomic_cleans_up_after_a_failed_rename(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.mkdir()  # a file cannot be renamed over a directory
    (path / "keep").write_bytes(b"")

    with pytest.raises(OSError):  # noqa: PT011 - IsADirectoryError on Linux, others elsewhere
        write_atomic(path, b"data")

    assert os.listdir(tmp_path) == ["snapshot.json"]
    assert path.is_dir()


def test_write_atomic_fails_when_the_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"x")
    with pytest.raises(OSError):  # noqa: PT011 - FileExistsError or NotADirectoryError
        write_atomic(blocker / "snapshot.json", b"data")
    assert sorted(os.listdir(tmp_path)) == ["blocker"]
    assert blocker.read_bytes() == b"x"


# retain


async def test_retain_drops_unknown_promotions(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    for snap in SNAPSHOTS.values():
        store.put(snap)
    await store.persist(SAVED_AT)

    dropped = store.retain({"p-failed", "p-empty", "never-seen"})

    assert sorted(dropped) == ["p-none", "p-stuck"]
    assert sorted(snap.promotion_id for snap in store) == ["p-empty", "p-failed"]
    assert store.get("p-stuck") is None
    assert store.dirty
    await store.persist(SAVED_AT)
    assert sorted(on_disk(path)) == ["p-empty", "p-failed"]


def test_retain_of_every_known_promotion_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(encode(SNAPSHOTS, SAVED_AT))
    store = SnapshotStore(path)
    assert store.load() is None

    assert store.retain(set(SNAPSHOTS)) == []
    assert len(store) == len(SNAPSHOTS)
    assert not store.dirty


def test_cached_encoding_is_identical_and_follows_changes() -> None:
    a = PromotionSnapshot("a", {"j1": Job("j1", "code_generate", "pending", None, 1.0, 2.0)})
    b = PromotionSnapshot("b", {"j2": Job("j2", "code_export", "failed", "boom", 1.0, None)})
    cache: state.Fragments = {}
    first = encode({"a": a, "b": b}, 5.0, cache)
    assert first == encode({"a": a, "b": b}, 5.0)
    assert set(cache) == {"a", "b"}
    cached_b = cache["b"][1]
    # a changes, b does not: b's fragment is reused as is, a's is new.
    a2 = PromotionSnapshot("a", {"j1": Job("j1", "code_generate", "failed", "x", 1.0, 3.0)})
    second = encode({"a": a2, "b": b}, 6.0, cache)
    assert cache["b"][1] is cached_b
    assert decode(second) == {"a": a2, "b": b}
    # A promotion that is gone leaves the cache too.
    encode({"a": a2}, 7.0, cache)
    assert set(cache) == {"a"}


def test_a_version_1_file_loads_and_is_written_back_as_version_2(tmp_path: Path) -> None:
    # Written before jobs carried names and code counts: rows of six fields, no baseline time.
    path = tmp_path / "snapshot.json"
    row = ["j1", "code_generate", "failed", "codes limit exceeded", 1.0, 2.0]
    path.write_bytes(state_file({"p1": {"jobs": [row], "stuck": []}}, version=1))
    store = SnapshotStore(path)

    assert store.load() is None
    snapshot = store.get("p1")
    assert snapshot is not None
    assert snapshot.baseline_at is None
    assert snapshot.jobs["j1"] == Job(
        "j1", "code_generate", "failed", "codes limit exceeded", 1.0, 2.0
    )


async def test_names_and_code_counts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    job = Job(
        "j1",
        "code_generate",
        "completed",
        None,
        1.0,
        2.0,
        name="Spring codes",
        codes_requested=1000,
        codes_generated=640,
        codes_deleted=0,
    )
    store = SnapshotStore(path)
    store.put(PromotionSnapshot("p1", {"j1": job}, baseline_at=0.5))
    await store.persist(SAVED_AT)

    again = SnapshotStore(path)
    assert again.load() is None
    assert again.get("p1") == PromotionSnapshot("p1", {"j1": job}, baseline_at=0.5)
    assert json.loads(path.read_bytes())["version"] == 2


# the journal: large states append their changes


def job(job_id: str, status: str = "pending", error: str | None = None) -> Job:
    return Job(job_id, "code_generate", status, error, 1.0, 2.0)


def journal_records(path: Path, *, commits: bool = False) -> list[dict[str, object]]:
    """The journal's records after its head, as JSON (checksums stripped; the commit record
    that ends each write left out unless asked for)."""
    lines = state.journal_path(path).read_bytes().splitlines()
    records = [json.loads(line.partition(b" ")[2]) for line in lines[1:]]
    return [r for r in records if commits or r != {"c": 1}]


# Unchanged promotions, so that the snapshot file outweighs a few journal records.
FILLER = {f"f{i}": snapshot(f"f{i}", job(f"jf{i}")) for i in range(20)}
AB = {"a": snapshot("a", job("j1")), "b": snapshot("b", job("j2"))}


async def journal_store(
    path: Path, *snapshot_sets: Mapping[str, PromotionSnapshot]
) -> SnapshotStore:
    """A store that journals every write (journal_above=0), with `snapshot_sets` written whole."""
    store = SnapshotStore(path, journal_above=0)
    for snapshots in snapshot_sets:
        for snap in snapshots.values():
            store.put(snap)
    await store.persist(SAVED_AT)
    return store


async def test_a_large_state_appends_each_change_to_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.json"
    store = await journal_store(path, SNAPSHOTS)
    written = path.read_bytes()
    writes = CountingWrites(monkeypatch)
    changed = snapshot("p-none", job("j3", "failed", "boom"))

    store.put(changed)
    await store.persist(SAVED_AT + 1)
    store.drop("p-empty")
    await store.persist(SAVED_AT + 2)

    assert path.read_bytes() == written  # the snapshot file is not rewritten...
    assert writes.appends == writes.calls == 2  # ...each write is one append
    assert [record["p"] for record in journal_records(path)] == ["p-none", "p-empty"]
    assert "s" not in journal_records(path)[1]  # a drop is a record without a snapshot
    expected = {**SNAPSHOTS, "p-none": changed}
    del expected["p-empty"]
    assert on_disk(path) == expected


async def test_a_small_state_is_one_self_contained_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)  # the default threshold: far above these few jobs
    for snap in SNAPSHOTS.values():
        store.put(snap)
    await store.persist(SAVED_AT)
    store.put(snapshot("p-none"))
    await store.persist(SAVED_AT)

    assert os.listdir(tmp_path) == ["snapshot.json"]
    assert decode(path.read_bytes()) == {**SNAPSHOTS, "p-none": snapshot("p-none")}


async def test_replay_applies_records_in_order(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path, journal_above=0)
    store.put(snapshot("p", job("j1")))
    filler = {f"f{i}": snapshot(f"f{i}", job(f"j{i}")) for i in range(20)}
    for snap in filler.values():  # (a snapshot larger than the journal: no compaction)
        store.put(snap)
    await store.persist(SAVED_AT)
    for status in ("processing", "failed"):
        store.put(snapshot("p", job("j1", status)))
        await store.persist(SAVED_AT)
    store.drop("p")
    await store.persist(SAVED_AT)
    store.put(snapshot("p", job("j2", "completed")))
    await store.persist(SAVED_AT)

    assert len(journal_records(path)) == 4
    assert on_disk(path) == {**filler, "p": snapshot("p", job("j2", "completed"))}


async def test_a_promotion_on_disk_journals_only_the_jobs_that_changed(tmp_path: Path) -> None:
    # A poll's news is one job of a hundred: the append carries that job and the ids that went,
    # not the promotion's hundred rows (which made every few appends a compaction).
    path = tmp_path / "snapshot.json"
    jobs = [job(f"j{i}", "completed") for i in range(100)]
    big = snapshot("big", *jobs)
    store = await journal_store(path, FILLER, {"big": big})
    changed = snapshot("big", *jobs[1:50], job("j50", "failed", "boom"), *jobs[51:], job("new"))
    store.put(changed)
    await store.persist(SAVED_AT + 1)

    (delta,) = journal_records(path)
    assert delta["p"] == "big"
    rows = delta["u"]
    assert isinstance(rows, list)
    assert [row[0] for row in rows] == ["j50", "new"]
    assert delta["r"] == ["j0"]
    assert state.journal_path(path).stat().st_size < 1000
    assert on_disk(path) == {**FILLER, "big": changed}


async def test_a_write_torn_between_its_records_is_not_applied_at_all(tmp_path: Path) -> None:
    # One write carries two promotions; a crash after the first record reached the disk must
    # not load a state that was never whole (a with its new job, b without).
    path = tmp_path / "snapshot.json"
    store = await journal_store(path, FILLER, AB)
    store.put(snapshot("a", job("j1", "failed", "boom")))
    store.put(snapshot("b", job("j2", "completed")))
    await store.persist(SAVED_AT)
    assert [r.get("p", "commit") for r in journal_records(path, commits=True)] == [
        "a",
        "b",
        "commit",
    ]
    journal = state.journal_path(path)
    data = journal.read_bytes()
    journal.write_bytes(data[: data.index(b"\n", data.index(b'"a"')) + 1])  # a's record, whole

    assert on_disk(path) == {
        **FILLER,
        "a": snapshot("a", job("j1")),
        "b": snapshot("b", job("j2")),
    }


async def test_a_journal_written_before_commit_records_still_replays(tmp_path: Path) -> None:
    # Version 1 journals (before this release) apply each record alone.
    path = tmp_path / "snapshot.json"
    store = await journal_store(path, FILLER)
    store.put(snapshot("a", job("j1", "failed", "boom")))
    await store.persist(SAVED_AT)
    journal = state.journal_path(path)
    head, *records = journal.read_bytes().splitlines(keepends=True)
    epoch = json.loads(head.partition(b" ")[2])["epoch"]
    old_head = state._record(json.dumps({"journal": 1, "epoch": epoch}).encode())
    journal.write_bytes(old_head + b"".join(r for r in records if b'"c"' not in r))

    assert on_disk(path) == {**FILLER, "a": snapshot("a", job("j1", "failed", "boom"))}


async def journaled(path: Path) -> SnapshotStore:
    """A store whose journal holds two appends after its snapshot."""
    store = await journal_store(path, AB, FILLER)
    store.put(snapshot("a", job("j1", "processing")))
    await store.persist(SAVED_AT)
    store.put(snapshot("b", job("j2", "failed", "boom")))
    await store.persist(SAVED_AT)
    return store


@pytest.mark.parametrize("cut", [1, 10, 30])
async def test_a_torn_journal_tail_is_ignored_and_the_next_write_repairs_it(
    tmp_path: Path, cut: int
) -> None:
    path = tmp_path / "snapshot.json"
    await journaled(path)
    journal = state.journal_path(path)
    journal.write_bytes(journal.read_bytes()[:-cut])  # a crash in the middle of the last append

    again = SnapshotStore(path, journal_above=0)
    assert again.load() is None
    # Everything before the torn record is kept; the torn record is as if never written.
    assert {s.promotion_id: s for s in again} == {
        **FILLER,
        "a": snapshot("a", job("j1", "processing")),
        "b": snapshot("b", job("j2")),
    }
    assert not again.dirty

    # Appends after the tear would be lost behind it: the next write rewrites instead.
    again.put(snapshot("c", job("j3")))
    await again.persist(SAVED_AT)
    assert on_disk(path) == {
        **FILLER,
        "a": snapshot("a", job("j1", "processing")),
        "b": snapshot("b", job("j2")),
        "c": snapshot("c", job("j3")),
    }


async def test_a_record_with_a_wrong_checksum_ends_the_replay(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    await journaled(path)
    journal = state.journal_path(path)
    data = journal.read_bytes()
    flipped = data.rindex(b"boom")
    journal.write_bytes(data[:flipped] + b"BOOM" + data[flipped + 4 :])

    assert on_disk(path) == {
        **FILLER,
        "a": snapshot("a", job("j1", "processing")),
        "b": snapshot("b", job("j2")),
    }


async def test_a_journal_left_by_a_crash_between_compaction_renames_is_not_replayed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snapshot.json"
    store = await journaled(path)
    journal = state.journal_path(path)
    old_journal = journal.read_bytes()  # b failed, per its last record
    store.put(snapshot("b", job("j2", "cancelled")))
    await store.persist(SAVED_AT, compact=True)
    # The crash: the new snapshot is in place, the journal is still the old one.
    journal.write_bytes(old_journal)

    assert on_disk(path) == {
        **FILLER,
        "a": snapshot("a", job("j1", "processing")),
        "b": snapshot("b", job("j2", "cancelled")),
    }


async def test_compaction_leaves_the_whole_state_in_the_snapshot_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = await journaled(path)

    await store.persist(SAVED_AT, compact=True)

    expected = {
        **FILLER,
        "a": snapshot("a", job("j1", "processing")),
        "b": snapshot("b", job("j2", "failed", "boom")),
    }
    assert decode(path.read_bytes()) == expected  # without the journal
    assert journal_records(path) == []
    assert on_disk(path) == expected


async def test_the_journal_is_compacted_once_it_outgrows_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path, journal_above=0)
    for i in range(10):
        store.put(snapshot(f"p{i}", job(f"j{i}")))
    await store.persist(SAVED_AT)
    writes = CountingWrites(monkeypatch)
    snapshot_size = path.stat().st_size

    for n in range(40):  # each append is about a tenth of the snapshot
        store.put(snapshot("p0", job("j0", f"status-{n}")))
        await store.persist(SAVED_AT)
        assert state.journal_path(path).stat().st_size <= 2 * path.stat().st_size

    assert writes.calls - writes.appends in range(2, 8)  # a few rewrites among 40 writes
    assert path.stat().st_size > snapshot_size - 50
    assert on_disk(path)["p0"] == snapshot("p0", job("j0", "status-39"))


async def test_a_failed_append_is_retried_as_a_whole_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = await journaled(path)
    state.journal_path(path).unlink()  # appends only go to a journal a compaction created
    store.put(snapshot("a", job("j1", "completed")))

    with pytest.raises(FileNotFoundError):
        await store.persist(SAVED_AT)
    assert store.write_failed
    assert store.dirty

    await store.persist(SAVED_AT)

    assert not store.write_failed
    assert on_disk(path) == {
        **FILLER,
        "a": snapshot("a", job("j1", "completed")),
        "b": snapshot("b", job("j2", "failed", "boom")),
    }


_pids = st.sampled_from(["a", "b", "c"])
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _pids, st.sampled_from(["pending", "failed", "completed"])),
        st.tuples(st.just("drop"), _pids, st.none()),
        st.tuples(st.just("retain"), _pids, st.none()),
        st.tuples(st.just("persist"), st.none(), st.none()),
        st.tuples(st.just("compact"), st.none(), st.none()),
    ),
    max_size=30,
)


@settings(database=None, max_examples=150, deadline=None)
@given(_operations, st.sampled_from([0, 400, 10**6]), st.integers(min_value=0, max_value=2000))
def test_what_loads_is_what_was_persisted_whatever_the_writes_and_tears(
    operations: list[tuple[str, str | None, str | None]], journal_above: int, cut: int
) -> None:
    """Any sequence of puts, drops, persists and compactions loads as the state at the last
    persist; and a journal torn anywhere loads as the state at some earlier persist."""

    async def scenario(path: Path) -> None:
        store = SnapshotStore(path, journal_above=journal_above)
        persisted = [dict[str, PromotionSnapshot]()]
        for n, (operation, pid, status) in enumerate(operations):
            if operation == "put" and pid is not None and status is not None:
                store.put(snapshot(pid, job(f"j{n}", status), job("j-old", "completed")))
            elif operation == "drop" and pid is not None:
                store.drop(pid)
            elif operation == "retain" and pid is not None:
                store.retain({pid})
            else:
                await store.persist(SAVED_AT, compact=operation == "compact")
                persisted.append({s.promotion_id: s for s in store})
                assert on_disk(path) == persisted[-1]
        journal = state.journal_path(path)
        if journal.exists():
            data = journal.read_bytes()
            journal.write_bytes(data[: max(0, len(data) - cut)])
            fresh = SnapshotStore(path)
            assert fresh.load() is None
            assert {s.promotion_id: s for s in fresh} in persisted

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory) / "snapshot.json"))


async def test_an_unreadable_journal_discards_the_state_rather_than_replaying_less(
    tmp_path: Path,
) -> None:
    # The snapshot alone is older than what was announced: a fresh baseline, not a stale load.
    path = tmp_path / "snapshot.json"
    store = await journal_store(path, SNAPSHOTS)
    store.put(snapshot("p-none", job("j3", "failed", "boom")))
    await store.persist(SAVED_AT + 1)
    journal = state.journal_path(path)
    journal.unlink()
    journal.mkdir()  # reading it now fails with something other than "not found"

    again = SnapshotStore(path, journal_above=0)
    discarded = again.load()

    assert discarded is not None
    assert discarded.path == journal
    assert "unreadable" in discarded.reason
    assert list(again) == []
