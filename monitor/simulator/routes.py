"""The simulator's HTTP face: Elastic Path's endpoints over aiohttp, with tokens and faults."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Literal

from aiohttp import web

from monitor.simulator.answers import UNAUTHORIZED, ApiError, error_body, json_response
from monitor.simulator.faults import Faults
from monitor.simulator.query import job_filter, page_window, paged, promotion_filter
from monitor.simulator.rendering import Kind, render_promotion
from monitor.simulator.store import Store
from monitor.simulator.tokens import TOKEN_PATH, Tokens

# PBcf's bare rule-promotion list: a documented answer variant, not a fault.
RuleListShape = Literal["envelope", "bare"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PREFIXES: tuple[tuple[Kind, str], ...] = (
    ("promotion", "/v2/promotions"),
    ("rule_promotion", "/v2/rule-promotions"),
)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the simulator saw it; status 0 means no answer was sent (yet)."""

    method: str
    path: str
    query: dict[str, str]
    at: float
    status: int


class Routes:
    """Serves a store's promotions and jobs, checks tokens, applies faults, records requests.

    page_cap, ignore_offset, unordered and unpaged are store behaviours a client must cope with (not
    faults: the real API may answer so), and may be changed while serving.
    """

    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        faults: Faults,
        *,
        seed: int = 0,
        page_cap: int | None = None,
        ignore_offset: bool = False,
        unordered: bool = False,
        unpaged: bool = False,
        rule_list_shape: RuleListShape = "envelope",
    ) -> None:
        if page_cap is not None and page_cap < 1:
            raise ValueError("page_cap must be at least 1, or None for no cap")
        self.requests: list[RecordedRequest] = []
        # page_cap: the store's page-length setting, served whatever page[limit] asks.
        self.page_cap = page_cap
        # ignore_offset: page[offset] is ignored, every request gets the first page.
        self.ignore_offset = ignore_offset
        # unordered: no ORDER BY behind the jobs listing, so each request sees a fresh order.
        self.unordered = unordered
        # unpaged: the jobs list is answered whole, as `{"data": [...]}` alone (it is described
        # with `data` only): page parameters ignored, no `meta`, no `links`.
        self.unpaged = unpaged
        self.rule_list_shape: RuleListShape = rule_list_shape
        self._store = store
        self._tokens = tokens
        self._faults = faults
        # A stream of its own, so shuffling job lists never moves the ids a seed serves.
        self._order_rng = random.Random(f"order:{seed}")  # noqa: S311 -- not secrets
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: _Handler) -> web.StreamResponse:
            index = len(self.requests)
            query = dict(request.query)
            entry = RecordedRequest(request.method, request.path, query, self._store.now(), 0)
            self.requests.append(entry)
            response, status = await self._respond(request, handler)
            self.requests[index] = replace(entry, status=status)
            if not response.prepared:
                # The store's Date is the store's clock (which may not be the client's).
                response.headers["Date"] = formatdate(self._store.now(), usegmt=True)
            return response

        app = web.Application(middlewares=[record])
        app.router.add_post(TOKEN_PATH, self._issue_token)
        for kind, prefix in _PREFIXES:
            app.router.add_get(prefix, self._list_handler(kind))
            app.router.add_get(prefix + "/{promotion_id}", self._promotion_handler(kind))
            app.router.add_get(prefix + "/{promotion_id}/jobs", self._jobs_handler(kind))
        return app

    async def _respond(
        self, request: web.Request, handler: _Handler
    ) -> tuple[web.StreamResponse, int]:
        """The answer and the status to record for it."""

        async def normal() -> web.StreamResponse:
            return await self._answer(request, handler)

        fault = self._faults.take(request.path)
        if fault is not None:
            return await self._faults.answer(fault, request, normal)
        response = await normal()
        return response, response.status

    async def _answer(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        if request.path != TOKEN_PATH and not self._tokens.authorises(authorization):
            return json_response(401, UNAUTHORIZED)
        try:
            return await handler(request)
        except ApiError as error:
            return json_response(error.status, error.body)
        except web.HTTPException as error:
            # unknown paths and methods get an EP-style JSON body, not aiohttp's text
            return json_response(error.status, error_body(error.status), dict(error.headers))

    async def _issue_token(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self._tokens.grant(await request.post()))

    def _window(self, request: web.Request) -> tuple[int, int]:
        """The page the store serves: what was asked, then its page-length and offset habits."""
        limit, offset = page_window(request.query)
        if self.page_cap is not None:
            limit = min(limit, self.page_cap)
        return limit, 0 if self.ignore_offset else offset

    def _promotion_handler(self, kind: Kind) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            promotion = self._store.find(kind, request.match_info["promotion_id"])
            if promotion is None:
                raise ApiError(404, error_body(404))
            return json_response(200, {"data": render_promotion(promotion)})

        return handle

    def _jobs_handler(self, kind: Kind) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            promotion = self._store.find(kind, request.match_info["promotion_id"])
            if promotion is None:
                raise ApiError(404, error_body(404))
            limit, offset = self._window(request)
            wanted = job_filter(request.query.get("filter"))
            jobs = [
                job
                for job in promotion.jobs.values()
                if all(getattr(job, name) == value for name, value in wanted)
            ]
            if self.unordered:
                self._order_rng.shuffle(jobs)
            window = jobs if self.unpaged else jobs[offset : offset + limit]
            page = [self._store.render_job(promotion, job) for job in window]
            if self.unpaged:
                return json_response(200, {"data": page})
            return json_response(200, paged(request, page, len(jobs), limit, offset))

        return handle

    def _list_handler(self, kind: Kind) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            limit, offset = self._window(request)
            tests = promotion_filter(kind, request.query.get("filter"))
            promotions = [p for p in self._store.listed(kind) if all(test(p) for test in tests)]
            page = [render_promotion(p) for p in promotions[offset : offset + limit]]
            if kind == "rule_promotion" and self.rule_list_shape == "bare":
                return json_response(200, [{"data": promotion} for promotion in page])
            return json_response(200, paged(request, page, len(promotions), limit, offset))

        return handle
