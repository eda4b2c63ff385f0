"""The state database: what loads is what was written, the outbox and the ledger, group commit,
failed and cancelled writes, files that are not ours, and the import of an older snapshot.json."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.models import FAILED, Change, ChangeKind, Job, PromotionSnapshot
from monitor.records import APPLICATION_ID
from monitor.state import Discarded, SnapshotStore
from tests.state_support import SNAPSHOTS, job, loaded, on_disk, snapshot

_text = st.text(st.characters(exclude_categories=["Cs"]))  # (text is valid where it enters)
_times = st.none() | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, PromotionSnapshot]:
    result: dict[str, PromotionSnapshot] = {}
    for pid in draw(st.lists(_text, max_size=4, unique=True)):
        jobs = draw(
            st.lists(
                st.builds(
                    Job,
                    id=_text,
                    job_type=_text,
                    status=_text,
                    error=st.none() | _text,
                    created_at=_times,
                    updated_at=_times,
                    name=st.none() | _text,
                    codes_requested=st.none() | st.integers(0, 2**40),
                ),
                max_size=5,
                unique_by=lambda job: job.id,
            )
        )
        ids = [job.id for job in jobs]
        stuck = draw(st.frozensets(st.sampled_from(ids))) if ids else frozenset[str]()
        result[pid] = snapshot(pid, *jobs, stuck=stuck)
    return result


@settings(database=None, max_examples=100, deadline=None)
@given(snapshots())
def test_any_snapshot_survives_a_restart(original: dict[str, PromotionSnapshot]) -> None:
    async def scenario(path: Path) -> None:
        store = SnapshotStore(path)
        assert store.load() is None
        for snap in original.values():
            store.put(snap)
        await store.persist()
        store.close()
        assert on_disk(path) == original

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory) / "monitor.db"))


def test_load_without_a_file_is_an_empty_store(tmp_path: Path) -> None:
    store = loaded(tmp_path / "absent" / "monitor.db")
    assert len(store) == 0
    assert list(store) == []
    assert store.owed() == []
    assert not store.dirty


async def test_the_state_is_a_database_anyone_can_read(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    for snap in SNAPSHOTS.values():
        store.put(snap)
    await store.persist()

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT promotion_id, id, status FROM jobs ORDER BY id").fetchall()
    assert rows[0] == ("p-failed", "j1", FAILED)
    assert len(rows) == sum(len(s.jobs) for s in SNAPSHOTS.values())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _sqlite_file(path: Path, statements: str) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(statements)


UNUSABLE: dict[str, Callable[[Path], object]] = {
    "not-sqlite": lambda p: p.write_bytes(b"\xff\xfe\x00garbage" * 100),
    "torn-header": lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50),
    "someone-elses-database": lambda p: _sqlite_file(p, "CREATE TABLE t (x);"),
    "another-schema-version": lambda p: _sqlite_file(
        p, f"PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 99; CREATE TABLE t(x);"
    ),
    "a-directory": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("make", UNUSABLE.values(), ids=UNUSABLE.keys())
async def test_a_file_that_is_not_our_state_is_set_aside_and_replaced(
    tmp_path: Path, make: Callable[[Path], object]
) -> None:
    path = tmp_path / "monitor.db"
    make(path)
    store = SnapshotStore(path)

    discarded = store.load()

    assert isinstance(discarded, Discarded)
    assert discarded.path == path
    assert discarded.reason.strip()
    assert len(store) == 0
    aside = discarded.set_aside()
    assert aside.exists()
    assert not path.exists()
    store.put(SNAPSHOTS["p-failed"])
    await store.persist()
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}


def test_a_newer_schema_is_named_in_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    UNUSABLE["another-schema-version"](path)
    discarded = SnapshotStore(path).load()
    assert discarded is not None
    assert "99" in discarded.reason


# group commit, failed and cancelled writes


class Writes:
    """The store's transactions, counted, and optionally held mid-way (then they write, or fail
    as a full disk would): the thread hop to the disk is the one thing these tests wrap."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.fail = False
        self._hold = False
        self._started, self._release = threading.Event(), threading.Event()
        real = SnapshotStore._write

        def write(store: SnapshotStore, batch: object) -> None:
            self.calls += 1
            if self._hold:
                self._started.set()
                self._release.wait(10)
            if self.fail:
                raise OSError(28, "No space left on device")
            real(store, batch)  # type: ignore[arg-type]

        monkeypatch.setattr(SnapshotStore, "_write", write)

    def hold(self) -> None:
        self._hold = True

    async def started(self) -> None:
        assert await asyncio.to_thread(self._started.wait, 10)

    def release(self) -> None:
        self._hold = False
        self._release.set()


async def test_polls_finishing_during_a_write_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = Writes(monkeypatch)
    path = tmp_path / "monitor.db"
    store = loaded(path)
    wanted = {f"p{i}": snapshot(f"p{i}", Job(f"j{i}", "code_export", "failed")) for i in range(50)}

    async def poll_done(snap: PromotionSnapshot) -> None:
        store.put(snap)
        await store.persist()

    await asyncio.gather(*(poll_done(snap) for snap in wanted.values()))

    assert not store.dirty
    assert on_disk(path) == wanted
    assert writes.calls in range(1, 50)  # at least one write, and fewer than one per put


async def test_persist_without_changes_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = loaded(tmp_path / "monitor.db")
    writes = Writes(monkeypatch)
    await store.persist()
    store.put(SNAPSHOTS["p-none"])
    await store.persist()
    await store.persist()
    assert writes.calls == 1


async def test_a_change_made_during_a_write_stays_dirty_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    writes = Writes(monkeypatch)
    writes.hold()
    store.put(SNAPSHOTS["p-failed"])
    first = asyncio.create_task(store.persist())
    await writes.started()
    store.put(SNAPSHOTS["p-none"])
    writes.release()
    await first

    assert store.dirty
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}
    await store.persist()
    assert not store.dirty
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"], "p-none": SNAPSHOTS["p-none"]}


async def test_a_write_whose_caller_is_cancelled_is_settled_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll cancelled mid-save (shutdown, a lost lease): the write goes on in its thread. It
    # must hold the store until it ends, and a failure must still be known.
    path = tmp_path / "monitor.db"
    store = loaded(path)
    writes = Writes(monkeypatch)
    writes.hold()
    writes.fail = True
    store.put(SNAPSHOTS["p-failed"])
    poll = asyncio.create_task(store.persist())
    await writes.started()
    poll.cancel()
    await asyncio.sleep(0.05)
    assert not poll.done()  # still settling the write it started
    writes.release()
    with pytest.raises(asyncio.CancelledError):
        await poll

    assert store.write_failed
    assert store.dirty
    writes.fail = False
    saved = await store.save()
    assert (saved.ok, saved.recovered) == (True, True)
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}


async def test_a_failed_write_changes_nothing_on_disk_and_is_retried_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    store.put(SNAPSHOTS["p-failed"])
    await store.persist()
    writes = Writes(monkeypatch)
    writes.fail = True
    store.put(SNAPSHOTS["p-stuck"])
    store.drop("p-failed")
    owed = store.owe("p-stuck", [Change(ChangeKind.DISCOVERED, "p-stuck", job("j9", FAILED))], 5.0)

    saved = await store.save()

    assert not saved.ok
    assert "No space left" in (saved.error or "")
    assert on_disk(path) == {"p-failed": SNAPSHOTS["p-failed"]}
    writes.fail = False
    first, second = await asyncio.gather(store.save(), store.save())
    assert [first.recovered, second.recovered].count(True) == 1  # one state_write_recovered
    again = loaded(path)
    assert {s.promotion_id: s for s in again} == {"p-stuck": SNAPSHOTS["p-stuck"]}
    assert [o.changes for o in again.owed()] == [owed.changes]


async def test_retain_drops_unknown_promotions(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    for snap in SNAPSHOTS.values():
        store.put(snap)
    await store.persist()

    dropped = store.retain({"p-failed", "p-empty", "never-seen"})

    assert sorted(dropped) == ["p-none", "p-stuck"]
    assert store.get("p-stuck") is None
    await store.persist()
    assert sorted(on_disk(path)) == ["p-empty", "p-failed"]


# the outbox and the ledger


def _failed(pid: str, job_id: str) -> Change:
    return Change(ChangeKind.STATUS_CHANGED, pid, job(job_id, FAILED, "boom"), job(job_id))


async def test_owed_announcements_are_written_with_their_changes_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    store.put(snapshot("p1", job("j1", FAILED, "boom")))
    owed = store.owe("p1", [_failed("p1", "j1")], 100.0)
    await store.persist()

    again = loaded(path)  # a process killed before it announced
    assert [o.changes for o in again.owed()] == [owed.changes]
    assert again.reported("p1", "j1")
    assert again.get("p1") == snapshot("p1", job("j1", FAILED, "boom"))


async def test_an_announced_change_is_owed_no_more_but_stays_on_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    first = store.owe("p1", [_failed("p1", "j1")], 100.0)
    await store.persist()
    store.announced(first)
    # Owed and announced between two writes: never written at all.
    second = store.owe("p1", [_failed("p1", "j2")], 101.0)
    store.announced(second)
    await store.persist()

    again = loaded(path)
    assert again.owed() == []
    assert again.reported("p1", "j1")
    assert again.reported("p1", "j2")
    assert not again.reported("p1", "j3")
    assert not again.reported("p2", "j1")  # (a job id is only unique within its promotion)


async def test_the_ledger_forgets_what_is_older_than_the_retention(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    store = loaded(path)
    store.owe("p1", [_failed("p1", "old")], 100.0)
    store.owe("p1", [_failed("p1", "new")], 200.0)
    await store.persist()

    store.prune_ledger(150.0)
    await store.persist()

    again = loaded(path)
    assert (again.reported("p1", "old"), again.reported("p1", "new")) == (False, True)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abc"), st.sampled_from(["pending", FAILED])),
        st.tuples(st.just("drop"), st.sampled_from("abc"), st.none()),
        st.tuples(st.just("owe"), st.sampled_from("abc"), st.none()),
        st.tuples(st.just("announce"), st.none(), st.none()),
        st.tuples(st.just("persist"), st.none(), st.none()),
    ),
    max_size=30,
)


@settings(database=None, max_examples=100, deadline=None)
@given(_ops)
def test_what_loads_is_what_was_persisted_whatever_the_order(
    operations: list[tuple[str, str | None, str | None]],
) -> None:
    async def scenario(path: Path) -> None:
        store = loaded(path)
        for n, (operation, pid, status) in enumerate(operations):
            if operation == "put" and pid and status:
                store.put(snapshot(pid, job(f"j{n}", status), job("j-old", "completed")))
            elif operation == "drop" and pid:
                store.drop(pid)
            elif operation == "owe" and pid:
                store.owe(pid, [_failed(pid, f"j{n}")], float(n))
            elif operation == "announce" and store.owed():
                store.announced(store.owed()[0])
            else:
                await store.persist()
                again = loaded(path)
                assert {s.promotion_id: s for s in again} == {s.promotion_id: s for s in store}
                assert [o.changes for o in again.owed()] == [o.changes for o in store.owed()]
                again.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory) / "monitor.db"))


# the snapshot.json of the release before


def _legacy(promotions: object, version: object = 2) -> bytes:
    return json.dumps({"version": version, "saved_at": 1.0, "promotions": promotions}).encode()


@pytest.mark.parametrize("configured", ["snapshot.json", "monitor.db"])
async def test_an_older_snapshot_json_is_imported_once(tmp_path: Path, configured: str) -> None:
    # Format 1 rows have six fields; format 2 ten (name and code counts).
    legacy = tmp_path / "snapshot.json"
    legacy.write_bytes(
        _legacy(
            {
                "p1": {"jobs": [["j1", "code_generate", "failed", "x", 1.0, 2.0]], "stuck": []},
                "p2": {
                    "jobs": [["j2", "code_generate", "processing", None, 1.0, 2.0, "n", 5, 0, 0]],
                    "stuck": ["j2"],
                    "baseline_at": 0.5,
                },
            }
        )
    )
    store = loaded(tmp_path / configured)

    # (a configured snapshot.json names the database beside it: snapshot.db)
    assert store.path == (tmp_path / configured).with_suffix(".db")
    assert store.get("p1") == snapshot("p1", Job("j1", "code_generate", "failed", "x", 1.0, 2.0))
    p2 = store.get("p2")
    assert p2 is not None
    assert (p2.stuck, p2.baseline_at, p2.jobs["j2"].codes_requested) == (frozenset({"j2"}), 0.5, 5)
    assert not legacy.exists()
    assert (tmp_path / "snapshot.json.imported").is_file()
    assert sorted(on_disk(store.path)) == ["p1", "p2"]


def test_an_unreadable_snapshot_json_is_set_aside_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "snapshot.json").write_bytes(_legacy({}, version=7))
    discarded = SnapshotStore(tmp_path / "monitor.db").load()
    assert discarded is not None
    assert discarded.path == tmp_path / "snapshot.json"


def test_a_lone_surrogate_in_an_older_snapshot_json_is_replaced_not_fatal(tmp_path: Path) -> None:
    # Written before text was made valid where it enters: "\ud83d" is legal JSON, not UTF-8.
    row = ["j1", "code_generate", "failed", "boom \\ud83d", 1.0, 2.0]
    (tmp_path / "snapshot.json").write_bytes(
        _legacy({"p1": {"jobs": [row], "stuck": []}}).replace(b"\\\\ud83d", b"\\ud83d")
    )
    store = loaded(tmp_path / "monitor.db")
    held = store.get("p1")
    assert held is not None
    error = held.jobs["j1"].error
    assert error is not None
    assert error.startswith("boom ")
    error.encode("utf-8")  # (raises for a lone surrogate)
    assert on_disk(store.path) == {"p1": held}
