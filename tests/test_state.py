"""The snapshot store: encoding, loading whatever is on disk, group-committed atomic writes."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import state
from monitor.codec import Fragments, decode, encode
from monitor.models import Job, PromotionSnapshot
from monitor.state import Discarded, SnapshotStore, write_atomic
from tests.state_support import SAVED_AT, SNAPSHOTS, CountingWrites, on_disk, snapshot

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


class HeldWrite:
    """The store's next whole-file write, held mid-way until released; then it writes, or with
    `fails` it raises as a full disk would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fails: bool = False) -> None:
        self._started, self._release = threading.Event(), threading.Event()
        self._monkeypatch = monkeypatch
        real = state.write_atomic

        def held(target: Path, data: bytes | list[bytes]) -> None:
            self._started.set()
            self._release.wait(10)
            if fails:
                raise OSError(28, "No space left on device")
            real(target, data)

        monkeypatch.setattr(state, "write_atomic", held)

    async def started(self) -> None:
        assert await asyncio.to_thread(self._started.wait, 10)

    def release(self) -> None:
        self._release.set()

    def undo(self) -> None:
        self._monkeypatch.undo()


async def test_a_change_made_during_a_write_stays_dirty_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    held = HeldWrite(monkeypatch)
    store.put(SNAPSHOTS["p-failed"])
    first = asyncio.create_task(store.persist(SAVED_AT))
    await held.started()
    store.put(SNAPSHOTS["p-none"])
    held.release()
    await first

    assert store.dirty
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}

    await store.persist(SAVED_AT + 1)

    assert not store.dirty
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"], "p-none": SNAPSHOTS["p-none"]}


async def test_a_write_whose_caller_is_cancelled_is_settled_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll cancelled mid-save (shutdown, a lost lease): the write goes on in its thread. It
    # must hold the store until it ends, and a failure must still be known, or the next write
    # would run beside it and the files would no longer be what the store thinks they are.
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    held = HeldWrite(monkeypatch, fails=True)
    store.put(SNAPSHOTS["p-failed"])
    poll = asyncio.create_task(store.persist(SAVED_AT))
    await held.started()
    poll.cancel()
    await asyncio.sleep(0.05)
    assert not poll.done()  # still settling the write it started
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await poll

    assert store.write_failed
    assert store.dirty
    held.undo()
    saved = await store.save(SAVED_AT + 1)
    assert (saved.ok, saved.recovered) == (True, True)
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}


async def test_a_recovery_is_reported_by_one_save_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two polls sharing the write that works again: one state_write_recovered, not two.
    path = tmp_path / "snapshot.json"
    store = SnapshotStore(path)
    real = state.write_atomic

    def failing_write(target: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state, "write_atomic", failing_write)
    store.put(SNAPSHOTS["p-failed"])
    assert not (await store.save(SAVED_AT)).ok
    monkeypatch.setattr(state, "write_atomic", real)
    store.put(SNAPSHOTS["p-none"])
    first, second = await asyncio.gather(store.save(SAVED_AT), store.save(SAVED_AT))

    assert (first.ok, second.ok) == (True, True)
    assert [first.recovered, second.recovered].count(True) == 1


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
    cache: Fragments = {}
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
