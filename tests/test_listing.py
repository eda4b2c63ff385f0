"""Lists as real stores serve them: any page length, offsets ignored, no stable order, and the
answer shapes Elastic Path's published descriptions disagree on (shared/docs/elastic-path-api.md).

Each store here is a small aiohttp app on 127.0.0.1 that answers one way the real API may.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.app import Monitor
from monitor.client import ElasticPathClient, FetchResult
from monitor.client.budget import RequestBudget
from monitor.events import PollFailed
from monitor.models import PromotionKind
from monitor.settings import ApiSettings, parse_settings
from tests.support import Recorder, serving, store_app

PID = "ad386702-e780-42c6-b190-0527ad768917"
JOBS = f"/v2/promotions/{PID}/jobs"
OFFSETS = web.AppKey("offsets", list[int])
Lister = Callable[[list[dict[str, Any]], int, int, int], list[dict[str, Any]]]


def api_job(n: int, status: str = "completed") -> dict[str, Any]:
    stamp = "2024-12-04T00:03:46.388696042Z"
    return {
        "type": "promotion_job",
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "promotion_id": PID,
        "job_type": "code_export",
        "name": "job",
        "status": status,
        "meta": {"timestamps": {"created_at": stamp, "updated_at": stamp}},
    }


def in_order(jobs: list[dict[str, Any]], offset: int, limit: int, _: int) -> list[dict[str, Any]]:
    return jobs[offset : offset + limit]


def capped_store(
    jobs: list[dict[str, Any]],
    lister: Lister = in_order,
    *,
    cap: int = 100,
    results: Callable[[int], dict[str, Any]] | None = None,
) -> web.Application:
    """A jobs endpoint that serves at most `cap` records a page, cut by `lister`. `results`
    writes meta.results from the number of jobs (by default: an exact total)."""
    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        limit = min(int(request.query.get("page[limit]", "25")), cap)
        offset = int(request.query.get("page[offset]", "0"))
        seen.append(offset)
        page = lister(jobs, offset, limit, len(seen))
        meta = {
            "page": {"limit": limit, "offset": offset, "current": 1, "total": 1},
            "results": results(len(jobs)) if results else {"total": len(jobs)},
        }
        return web.json_response({"data": page, "links": {"next": str(request.url)}, "meta": meta})

    app = store_app(handle, route=JOBS)
    app[OFFSETS] = seen
    return app


def first_page(jobs: list[dict[str, Any]], _: int, limit: int, __: int) -> list[dict[str, Any]]:
    """A store that ignores page[offset]."""
    return jobs[:limit]


@pytest.fixture
async def listing_of() -> AsyncIterator[Callable[[web.Application], Any]]:
    """Fetch a promotion's jobs from an app, the client asking for pages of 100."""
    contexts: list[Any] = []

    async def fetch(app: web.Application) -> FetchResult:
        context = serving(app)
        contexts.append(context)
        base_url = await context.__aenter__()
        settings = ApiSettings(base_url=base_url, client_id="id", client_secret="s", page_limit=100)
        async with ElasticPathClient(settings, budget=RequestBudget(1000)) as client:
            return await client.fetch_jobs(client.target(PID, PromotionKind.PROMOTION))

    yield fetch
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


async def test_a_store_page_length_shorter_than_asked_loses_no_job(listing_of: Any) -> None:
    # The store's page-length setting is 25: asking for 100 still gets 25 a page. A failure on
    # the third page must be seen, and nothing skipped.
    jobs = [api_job(n) for n in range(130)]
    jobs[60] = api_job(60, "failed")
    app = capped_store(jobs, cap=25)

    result = await listing_of(app)

    assert sorted(job.id for job in result.jobs) == sorted(job["id"] for job in jobs)
    assert [job.status for job in result.jobs].count("failed") == 1
    assert app[OFFSETS] == [0, 25, 50, 75, 100, 125]
    assert result.complete


async def test_a_store_that_ignores_the_offset_is_read_once_not_forever(listing_of: Any) -> None:
    app = capped_store([api_job(n) for n in range(130)], first_page, cap=25)

    result = await listing_of(app)

    # The second page repeats the first: paging stops there, nothing counted twice.
    assert app[OFFSETS] == [0, 25]
    assert len(result.jobs) == len({job.id for job in result.jobs}) == 25
    assert result.listing.incomplete == "offset_ignored"
    assert not result.complete


async def test_an_estimated_total_does_not_end_paging(listing_of: Any) -> None:
    # Promotions Builder's PaginationMeta says how the total was counted (total_method); a
    # total that is not exact must not stop paging before the last job.
    jobs = [api_job(n) for n in range(60)]
    jobs[40] = api_job(40, "failed")
    app = capped_store(jobs, cap=25, results=lambda _: {"total": 25, "total_method": "lower_bound"})

    result = await listing_of(app)

    assert len(result.jobs) == 60
    assert [job.status for job in result.jobs].count("failed") == 1
    assert app[OFFSETS] == [0, 25, 50, 60]  # to the empty page
    assert result.complete


async def test_an_exact_total_named_as_such_ends_paging(listing_of: Any) -> None:
    app = capped_store(
        [api_job(n) for n in range(60)],
        cap=25,
        results=lambda listed: {"total": listed, "total_method": "exact"},
    )
    result = await listing_of(app)
    assert len(result.jobs) == 60
    assert app[OFFSETS] == [0, 25, 50]


@pytest.mark.parametrize("with_total", [True, False], ids=["with a total", "data alone"])
async def test_a_store_that_answers_the_whole_list_at_once(
    listing_of: Any, with_total: bool
) -> None:
    # Promotions Builder's SDK description answers the jobs list with `data` alone: a server
    # that does not page returns every job, more than asked, whatever the offset. With a total
    # that is the whole listing; without one, an answer with neither `meta` nor `links` is
    # taken at its word as the whole list too (issue 22): one request, complete. (A page that
    # repeats the one before while carrying paging meta stays offset_ignored: test_real_world.)
    jobs = [api_job(n) for n in range(130)]
    jobs[120] = api_job(120, "failed")
    meta = {"meta": {"results": {"total": 130}}} if with_total else {}

    async def everything(_: web.Request) -> web.Response:
        return web.json_response({"data": jobs, **meta})

    result = await listing_of(store_app(everything, route=JOBS))

    assert len(result.jobs) == len({job.id for job in result.jobs}) == 130
    assert [job.status for job in result.jobs].count("failed") == 1
    assert result.listing.incomplete is None
    assert result.listing.pages == 1


async def test_a_store_that_refuses_the_status_filter_still_gives_its_listing(
    tmp_path: Path,
) -> None:
    # Past an offset-ignoring store's one page the monitor asks for the failed jobs alone; a
    # store that answers that with a 400 must cost the extra look, not the poll.
    jobs = [api_job(n) for n in range(130)]

    async def refusing(request: web.Request) -> web.Response:
        if "filter" in request.query:
            refusal = {"errors": [{"status": 400, "title": "Bad Request"}]}
            return web.json_response(refusal, status=400)
        return web.json_response({"data": jobs[:25], "meta": {"results": {"total": 130}}})

    async with serving(store_app(refusing, route=JOBS)) as base_url:
        events = Recorder()
        monitor = Monitor.build(
            parse_settings(
                {
                    "api": {"base_url": base_url, "client_id": "id", "client_secret": "s"},
                    "promotions": [{"id": PID}],
                    "state": {"path": str(tmp_path / "state.json")},
                }
            ),
            registry=CollectorRegistry(),
            serve_http=False,
            events=events,
        )
        (outcome,) = await monitor.run_once()

    assert outcome.ok
    assert outcome.incomplete == "offset_ignored"
    assert [e for e in events.events if isinstance(e, PollFailed)] == []
    assert monitor.store.get(PID) is not None  # the baseline was taken from the listing


async def test_a_failure_past_the_offset_limit_is_read_through_the_status_filter(
    tmp_path: Path,
) -> None:
    # 10,200 jobs: the API pages no further than offset 10,000, so the newest are never listed.
    # The failed jobs alone are: the one failure among them reaches the snapshot (and pages).
    recent = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    jobs = [api_job(n) for n in range(10_200)]
    failed = {**api_job(10_150, "failed"), "error": "codes limit exceeded"}
    failed["meta"] = {"timestamps": {"created_at": recent, "updated_at": recent}}
    jobs[10_150] = failed

    async def large(request: web.Request) -> web.Response:
        if request.query.get("filter") == "eq(status,failed)":
            listed = [job for job in jobs if job["status"] == "failed"]
        else:
            listed = jobs
        offset = int(request.query["page[offset]"])
        page = listed[offset : offset + int(request.query["page[limit]"])]
        return web.json_response({"data": page, "meta": {"results": {"total": len(listed)}}})

    async with serving(store_app(large, route=JOBS)) as base_url:
        monitor = Monitor.build(
            parse_settings(
                {
                    "api": {
                        "base_url": base_url,
                        "client_id": "id",
                        "client_secret": "s",
                        "max_requests_per_second": 1000,  # (103 requests, without waiting)
                    },
                    "promotions": [{"id": PID}],
                    "state": {"path": str(tmp_path / "state.json")},
                }
            ),
            registry=CollectorRegistry(),
            serve_http=False,
            events=Recorder(),
        )
        (outcome,) = await monitor.run_once()

    assert outcome.incomplete == "offset_limit"
    snapshot = monitor.store.get(PID)
    assert snapshot is not None
    assert snapshot.jobs[failed["id"]].status == "failed"


async def test_pages_that_overlap_make_an_incomplete_listing(listing_of: Any) -> None:
    # No ORDER BY: each request lists the jobs in another order, so pages overlap and skip.
    def shuffled(
        jobs: list[dict[str, Any]], offset: int, limit: int, n: int
    ) -> list[dict[str, Any]]:
        order = list(jobs)
        random.Random(n).shuffle(order)
        return order[offset : offset + limit]

    app = capped_store([api_job(n) for n in range(150)], shuffled, cap=25)

    result = await listing_of(app)

    distinct = {job.id for job in result.jobs}
    assert len(distinct) < 150  # (seeded: this order does overlap)
    assert result.listing.incomplete == "short"
    assert app[OFFSETS] == [0, 25, 50, 75, 100, 125]


async def test_a_listing_whose_pages_add_up_is_complete(listing_of: Any) -> None:
    result = await listing_of(capped_store([api_job(n) for n in range(130)]))
    assert len(result.jobs) == 130
    assert result.complete
    assert result.listing.pages == 2


# Answer shapes the published descriptions disagree on


def token_app(answer: dict[str, Any]) -> web.Application:
    async def token(_: web.Request) -> web.Response:
        return web.json_response(answer)

    async def jobs(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer t0k3n"
        return web.json_response(
            {"data": [api_job(1, "failed")], "meta": {"results": {"total": 1}}}
        )

    return store_app(jobs, token=token, route=JOBS)


FLAT_TOKEN = {
    "access_token": "t0k3n",
    "token_type": "Bearer",
    "expires_in": 3600,
    "expires": 1733274226,
    "identifier": "client_credentials",
}


@pytest.mark.parametrize(
    "answer",
    [FLAT_TOKEN, {"data": FLAT_TOKEN}],
    ids=["flat (SDKs, CLI)", "wrapped in data (authentication description examples)"],
)
async def test_the_token_answer_is_read_flat_or_wrapped(
    listing_of: Any, answer: dict[str, Any]
) -> None:
    result = await listing_of(token_app(answer))
    assert [job.status for job in result.jobs] == ["failed"]


def rule_list_app(body: Any) -> web.Application:
    async def promotions(request: web.Request) -> web.Response:
        # A bare array carries no total: only an empty page ends it.
        first = request.query.get("page[offset]", "0") == "0"
        return web.json_response(
            body if first else ([] if isinstance(body, list) else {**body, "data": []})
        )

    return store_app(promotions, route="/v2/rule-promotions")


RULE = {"type": "rule_promotion", "id": PID, "name": "Builder sale", "enabled": False}


@pytest.mark.parametrize(
    "body",
    [
        {"data": [RULE], "links": {}, "meta": {"results": {"total": 1}}},
        [{"data": RULE}],
        [RULE],
    ],
    ids=["envelope (Builder spec)", "bare array of {data} (SDK spec)", "bare array"],
)
async def test_the_rule_promotion_list_is_read_in_every_documented_shape(body: Any) -> None:
    async with serving(rule_list_app(body)) as base_url:
        settings = ApiSettings(base_url=base_url, client_id="id", client_secret="s")
        async with ElasticPathClient(settings, budget=RequestBudget(1000)) as client:
            found, listing = await client.list_promotions(PromotionKind.RULE_PROMOTION)
    assert [(p["id"], p["name"]) for p in found] == [(PID, "Builder sale")]
    assert listing.incomplete is None


async def test_jobs_without_an_id_each_count_as_a_record(listing_of: Any) -> None:
    # Two id-less records and one job: the page holds all the store's three, nothing is missing
    # (id-less records used to count as one, making the listing look incomplete).
    jobs = [api_job(1), {"status": "failed"}, {"status": "completed"}]
    result = await listing_of(capped_store(jobs))
    assert result.complete
    assert len(result.skipped) == 2
