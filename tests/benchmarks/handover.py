"""Benchmark 6 — the handover record's size on the Lease at 10,000 promotions.

In process: a state of 10,000 promotions (UUIDs, ten finished jobs each), of which ACTIVE have a
job processing, and a burst of BURST failures reported within the lookback, spread over FAILING
promotions. The record is what the leader writes on the Lease with every renewal
(monitor.handover.Handover.text); the API server refuses more than 256 KiB of annotations. Also
measured: the record with every one of the 10,000 promotions failing at once (past the cap: its
oldest failures are left out), and what building the record costs (it runs every retry period).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from monitor.handover import ANNOUNCED, CAP, Handover
from monitor.models import Change, ChangeKind, Job, PromotionSnapshot
from monitor.state import SnapshotStore
from tests.benchmarks.common import Result

NAME = "handover"
TITLE = "Handover record on the Lease at 10,000 promotions with a burst of failures"
PROMOTIONS = 10_000
ACTIVE = 200
BURST = 1_000
FAILING = 250  # promotions the burst falls on
NOW = 1_733_270_626.0
LIMIT = 256 * 1024


def _state(failing: int) -> Handover:
    store = SnapshotStore(Path("unused.db"))  # (in memory: never loaded nor saved)
    pids = [str(uuid.UUID(int=n + 1, version=4)) for n in range(PROMOTIONS)]
    for n, pid in enumerate(pids):
        jobs = {
            (jid := str(uuid.uuid4())): Job(jid, "code_generate", "completed", None, NOW, NOW)
            for _ in range(10)
        }
        if n < ACTIVE:
            jid = str(uuid.uuid4())
            jobs[jid] = Job(jid, "code_generate", "processing", None, NOW, NOW)
        store.put(PromotionSnapshot(pid, jobs))
    spread = FAILING if failing <= BURST else PROMOTIONS
    # (all within the lookback: over 500 s)
    burst = {(pids[n % spread], str(uuid.uuid4())): NOW - n * 500 / failing for n in range(failing)}
    store.remember(burst)
    handover = Handover(
        store, lease="promo-monitor", clock=lambda: NOW, lookback=900.0, patience=10.0
    )
    # Every failure reported has been announced since: each carries its mark, as on a live Lease.
    handover.announced(
        Change(ChangeKind.DISCOVERED, pid, Job(jid, "code_generate", "failed", "x", at, at))
        for (pid, jid), at in burst.items()
    )
    return handover


async def run() -> Result:
    result = Result(NAME, TITLE)
    started = time.perf_counter()
    quiet = len(_state(0).text())
    handover = _state(BURST)
    timings = []
    for _ in range(5):
        clock = time.perf_counter()
        text = handover.text()
        timings.append(time.perf_counter() - clock)
    burst = len(text)
    record = json.loads(text)
    assert sum(map(len, record["failed"].values())) == BURST, "the burst must fit under the cap"
    marks = sum(s == ANNOUNCED for jobs in record["active"].values() for s in jobs.values())
    flood = _state(PROMOTIONS).text()
    flooded = len(flood)
    dropped = PROMOTIONS - sum(map(len, json.loads(flood)["failed"].values()))
    per_failure = (burst - quiet) / BURST
    per_active = quiet / ACTIVE
    result.check(f"record, {ACTIVE} active jobs, no failure", quiet, "bytes")
    result.check(
        f"record, + a burst of {BURST:,} failures",
        burst,
        "bytes",
        f"<= {CAP:,} (cap); API limit {LIMIT:,}",
        burst <= CAP,
    )
    result.check("marks of announcement kept in the burst's record", marks, "entries")
    result.check("bytes per failure (with its mark)", round(per_failure, 1), "bytes")
    result.check("bytes per active job", round(per_active, 1), "bytes")
    result.check(
        f"record, every one of {PROMOTIONS:,} promotions failing",
        flooded,
        "bytes",
        f"<= {CAP:,}",
        flooded <= CAP,
    )
    result.check("failures left out at the cap (oldest)", dropped, "entries")
    result.check("building the record (burst)", round(min(timings) * 1000, 1), "ms")
    result.data = {
        "promotions": PROMOTIONS,
        "active": ACTIVE,
        "burst": BURST,
        "quiet_bytes": quiet,
        "burst_bytes": burst,
        "flood_bytes": flooded,
        "flood_dropped": dropped,
        "build_ms": [round(t * 1000, 2) for t in timings],
    }
    result.seconds = time.perf_counter() - started
    return result
