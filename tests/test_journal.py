"""The journal: a large state appends each write's changes (deltas, then a commit record) beside
the snapshot, replays up to the last whole write, and folds it back by compaction."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.codec import decode
from monitor.journal import JOURNAL_VERSION, framed, journal_path
from monitor.models import PromotionSnapshot
from monitor.state import SnapshotStore
from tests.state_support import SAVED_AT, SNAPSHOTS, CountingWrites, job, on_disk, snapshot


def journal_records(path: Path, *, commits: bool = False) -> list[dict[str, object]]:
    """The journal's records after its head, as JSON (checksums stripped; the commit record
    that ends each write left out unless asked for)."""
    lines = journal_path(path).read_bytes().splitlines()
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
    assert journal_path(path).stat().st_size < 1000
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
    journal = journal_path(path)
    data = journal.read_bytes()
    journal.write_bytes(data[: data.index(b"\n", data.index(b'"a"')) + 1])  # a's record, whole

    assert on_disk(path) == {
        **FILLER,
        "a": snapshot("a", job("j1")),
        "b": snapshot("b", job("j2")),
    }


def as_version_1(path: Path) -> None:
    """Rewrite the journal as the release before commit records and deltas wrote it."""
    journal = journal_path(path)
    head, *records = journal.read_bytes().splitlines(keepends=True)
    epoch = json.loads(head.partition(b" ")[2])["epoch"]
    old_head = framed(json.dumps({"journal": 1, "epoch": epoch}).encode())
    journal.write_bytes(old_head + b"".join(r for r in records if b'"c"' not in r))


async def test_a_journal_written_before_commit_records_still_replays(tmp_path: Path) -> None:
    # Version 1 journals (before this release) apply each record alone.
    path = tmp_path / "snapshot.json"
    store = await journal_store(path, FILLER)
    store.put(snapshot("a", job("j1", "failed", "boom")))
    await store.persist(SAVED_AT)
    as_version_1(path)

    assert on_disk(path) == {**FILLER, "a": snapshot("a", job("j1", "failed", "boom"))}


async def test_writes_after_an_upgrade_never_go_into_the_old_journal(tmp_path: Path) -> None:
    # The release before this one left a version 1 journal. Appending commit records and deltas
    # to it would make it unreadable past the first of them: after a crash, every write but
    # the first would be lost (and their failures announced again). The first write folds it.
    path = tmp_path / "snapshot.json"
    await journal_store(path, FILLER)
    as_version_1(path)
    upgraded = SnapshotStore(path, journal_above=0)
    assert upgraded.load() is None
    for n in range(3):
        upgraded.put(snapshot(f"p{n}", job(f"j{n}", "failed", "boom")))
        await upgraded.persist(SAVED_AT + n)

    head = journal_path(path).read_bytes().partition(b"\n")[0]
    assert json.loads(head.partition(b" ")[2])["journal"] == JOURNAL_VERSION
    assert on_disk(path) == {snap.promotion_id: snap for snap in upgraded}


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
    journal = journal_path(path)
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
    journal = journal_path(path)
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
    journal = journal_path(path)
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
        assert journal_path(path).stat().st_size <= 2 * path.stat().st_size

    assert writes.calls - writes.appends in range(2, 8)  # a few rewrites among 40 writes
    assert path.stat().st_size > snapshot_size - 50
    assert on_disk(path)["p0"] == snapshot("p0", job("j0", "status-39"))


async def test_a_failed_append_is_retried_as_a_whole_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = await journaled(path)
    journal_path(path).unlink()  # appends only go to a journal a compaction created
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
        journal = journal_path(path)
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
    journal = journal_path(path)
    journal.unlink()
    journal.mkdir()  # reading it now fails with something other than "not found"

    again = SnapshotStore(path, journal_above=0)
    discarded = again.load()

    assert discarded is not None
    assert discarded.path == journal
    assert "unreadable" in discarded.reason
    assert list(again) == []
