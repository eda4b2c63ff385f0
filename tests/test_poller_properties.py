"""Properties of one poll against answers of any shape: nothing escapes, nothing is lost.

The poller is built as the app builds it and talks HTTP to a small aiohttp app on 127.0.0.1
whose jobs answer hypothesis writes. One event loop (ours, not pytest-asyncio's) serves that
app and runs the polls, so the server and the client session are reused across examples.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor.app import Monitor
from monitor.client import REASONS, JobsTarget
from monitor.models import Job, PromotionKind, PromotionSnapshot
from monitor.poller import PollOutcome
from monitor.settings import parse_settings
from tests.support import store_app

PID = "ad386702-e780-42c6-b190-0527ad768917"
TERMINAL = {"completed", "complete", "failed", "cancelled"}
NOW = datetime.now(UTC)
LONG_AGO = (NOW - timedelta(days=30)).isoformat().replace("+00:00", "Z")
# What the monitor knew before each example: one active job and one finished one.
BASELINE = PromotionSnapshot(
    PID,
    {
        "j1": Job("j1", "code_generate", "processing", None, NOW.timestamp() - 60, None),
        "j2": Job("j2", "code_export", "failed", "codes limit exceeded", NOW.timestamp() - 90),
    },
)

PROPERTIES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Harness:
    """A poller wired as in the app, an HTTP store that serves `body`, and the loop of both."""

    loop: asyncio.AbstractEventLoop
    monitor: Monitor
    target: JobsTarget
    body: bytes = b'{"data": []}'

    def poll(self, body: Any, *, known: bool) -> tuple[PollOutcome, PromotionSnapshot | None]:
        """Serve `body`, poll once; returns the outcome and the snapshot from before the poll."""
        self.body = json.dumps(body).encode()
        store = self.monitor.store
        if known:
            store.put(BASELINE)
        else:
            store.drop(PID)
        before = store.get(PID)
        return self.again(), before

    def again(self) -> PollOutcome:
        """Poll once and report it, as the scheduler does."""
        return self.loop.run_until_complete(self._poll())

    async def _poll(self) -> PollOutcome:
        outcome = await self.monitor.poller.poll(self.target)
        assert await self.monitor.scheduler.reporter.report(outcome)
        return outcome


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    holder: list[Harness] = []

    async def jobs(request: web.Request) -> web.Response:
        # `body` is the first page; past it the listing is empty, as a real store's would be.
        first = request.query.get("page[offset]", "0") == "0"
        body = holder[0].body if first else b'{"data": []}'
        return web.Response(body=body, content_type="application/json")

    app = store_app(jobs)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    document = {
        "api": {
            "base_url": f"http://127.0.0.1:{port}",
            "client_id": "id",
            "client_secret": "secret",
            "max_requests_per_second": 1000,
        },
        "promotions": [{"id": PID}],
        "state": {"path": str(tmp_path_factory.mktemp("state") / "monitor.db")},
    }
    monitor = Monitor.build(
        parse_settings(document), registry=CollectorRegistry(), serve_http=False
    )
    loop.run_until_complete(monitor.lifecycle.load_state())
    harness = Harness(loop, monitor, monitor.client.target(PID, PromotionKind.PROMOTION))
    holder.append(harness)
    try:
        yield harness
    finally:
        loop.run_until_complete(monitor.client.close())
        loop.run_until_complete(runner.cleanup())
        loop.close()


# any JSON value, and the fields of a jobs answer, each either plausible or any JSON value

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def plausible(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, json_values)


timestamps = plausible(
    st.one_of(
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        st.sampled_from(
            [
                "2024-12-04T00:03:46.388696042Z",
                "2023-12-06T13:52:29.587Z",
                LONG_AGO,
                "2024-13-45T99:99:99Z",
                "",
            ]
        ),
    )
)
jobs = st.fixed_dictionaries(
    {},
    optional={
        "type": plausible(st.just("promotion_job")),
        # Few distinct ids, so answers repeat jobs and meet the baseline's.
        "id": plausible(
            st.sampled_from(["j1", "j2", "j3", " j1 ", "", "   "]) | st.uuids().map(str)
        ),
        "job_type": plausible(st.sampled_from(["code_generate", "code_export", "Code_Export"])),
        "status": plausible(
            st.sampled_from(["pending", "processing", "completed", "complete", "failed", "on_hold"])
        ),
        "error": plausible(st.text()),
        "meta": plausible(
            st.fixed_dictionaries(
                {},
                optional={
                    "timestamps": plausible(
                        st.fixed_dictionaries(
                            {}, optional={"created_at": timestamps, "updated_at": timestamps}
                        )
                    )
                },
            )
        ),
        "parameters": json_values,
        "result": json_values,
    },
)
pages = st.fixed_dictionaries(
    {},
    optional={
        "data": plausible(st.lists(st.one_of(jobs, json_values), max_size=6)),
        "meta": plausible(
            st.fixed_dictionaries(
                {},
                optional={
                    "results": plausible(
                        st.fixed_dictionaries(
                            {}, optional={"total": plausible(st.integers(-5, 20_000))}
                        )
                    ),
                    "page": json_values,
                },
            )
        ),
        "links": json_values,
    },
)
bodies = st.one_of(pages, json_values)


def served_ids(body: Any) -> dict[str, Any]:
    """The identifiable jobs of an answer by id (the last of repeated ids), as sent."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return {}
    found: dict[str, Any] = {}
    for job in body["data"]:
        if isinstance(job, dict) and isinstance(job.get("id"), str) and job["id"].strip():
            found[job["id"].strip()] = job
    return found


def finished(job: Any) -> bool:
    status = job.get("status")
    return isinstance(status, str) and status.strip().lower() in TERMINAL


@PROPERTIES
@given(body=bodies, known=st.booleans())
def test_no_answer_escapes_the_poller_and_a_failed_poll_changes_nothing(
    harness: Harness, body: Any, known: bool
) -> None:
    outcome, before = harness.poll(body, known=known)
    event("poll ok" if outcome.ok else f"poll failed: {outcome.reason}")

    after = harness.monitor.store.get(PID)
    assert outcome.promotion_id == PID
    if not outcome.ok:
        assert outcome.reason in REASONS
        assert outcome.changes == ()
        assert after is before
        return
    assert after is not None
    served = served_ids(body)
    previous = set(before.jobs) if before is not None else set()
    for job_id, job in after.jobs.items():
        assert job_id == job.id
        assert job_id in served or job_id in previous
        for text in (job.job_type, job.status, job.error or ""):
            assert "\n" not in text
    # An unfinished job in the answer is always in the snapshot (retention drops only history).
    for job_id, sent in served.items():
        if not finished(sent):
            assert job_id in after.jobs


@PROPERTIES
@given(body=pages)
def test_polling_the_same_answer_twice_changes_nothing_the_second_time(
    harness: Harness, body: Any
) -> None:
    first, _ = harness.poll(body, known=True)
    snapshot = harness.monitor.store.get(PID)
    second = harness.again()

    assert second.ok == first.ok
    assert second.changes == ()
    assert harness.monitor.store.get(PID) is snapshot


@PROPERTIES
@given(body=pages)
# A watched job seen finished with a timestamp older than the retention window: history to
# prune later, but news now (once reported as vanished).
@example(
    body={
        "data": [
            {
                "id": "j1",
                "job_type": "code_generate",
                "status": "failed",
                "error": "codes limit exceeded",
                "meta": {"timestamps": {"created_at": LONG_AGO, "updated_at": LONG_AGO}},
            }
        ]
    }
)
def test_a_job_in_the_answer_is_never_reported_vanished(harness: Harness, body: Any) -> None:
    outcome, _ = harness.poll(body, known=True)

    vanished = {c.job.id for c in outcome.changes if c.kind == "job_vanished" and c.job}
    assert not vanished & set(served_ids(body))


def test_the_harness_serves_what_the_examples_write(harness: Harness) -> None:
    """The properties are only as good as the plumbing: a plain answer parses as expected."""
    outcome, _ = harness.poll(
        {"data": [{"id": "j1", "job_type": "code_generate", "status": "failed"}]}, known=True
    )
    assert outcome.ok
    changes = {(c.kind.value, c.job.id if c.job else None) for c in outcome.changes}
    assert changes == {("job_status_changed", "j1"), ("job_vanished", "j2")}
    snapshot = harness.monitor.store.get(PID)
    assert snapshot is not None
    assert set(snapshot.jobs) == {"j1"}


def finished_long_ago(count: int, total: int) -> dict[str, Any]:
    """A page of jobs that finished a month ago, of an answer of `total` such jobs."""
    return {
        "data": [
            {
                "id": f"history-{i}",
                "job_type": "code_export",
                "status": "completed",
                "meta": {"timestamps": {"created_at": LONG_AGO, "updated_at": LONG_AGO}},
            }
            for i in range(count)
        ],
        "meta": {"results": {"total": total}},
    }


def test_history_past_the_retention_window_is_not_held_in_memory(harness: Harness) -> None:
    # Warm up (connection, token) on an empty answer, so only what the history costs is measured.
    harness.poll(finished_long_ago(0, 0), known=False)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # 100 jobs a page, 5,000 in all: 50 pages, as the API pages a long history.
        outcome, _ = harness.poll(finished_long_ago(100, 5_000), known=False)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert outcome.ok
    snapshot = harness.monitor.store.get(PID)
    assert snapshot is not None
    assert dict(snapshot.jobs) == {}
    # 5,000 parsed jobs take more than a megabyte; a few pages' fingerprints take kilobytes.
    assert retained < 256 * 1024
