"""In-process fake of Elastic Path's promotion job API, for the demo, tests and benchmarks.

It answers like the real API (tokens, paged job lists, filters, error bodies, including the
quirks described in docs/elastic-path-api.md) and lets a test inject faults and drive job
lifecycles deterministically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import operator
import random
import re
import secrets
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, Literal, get_args
from urllib.parse import quote

from aiohttp import web

Kind = Literal["promotion", "rule_promotion"]
# Documented variants of a normal answer (docs/elastic-path-api.md), not faults.
ResultKey = Literal["result", "generate_result"]
RuleListShape = Literal["envelope", "bare"]
TokenShape = Literal["flat", "wrapped"]
FaultKind = Literal[
    "status", "timeout", "reset", "truncated", "html", "wrong_shape", "huge", "slow"
]

TOKEN_PATH = "/oauth/access_token"  # noqa: S105 -- a URL path, not a password
DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_OFFSET = 10_000
HUGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_DELAY = 30.0
JOB_TYPES = ("code_generate", "code_export")
JOB_STATUSES = ("pending", "processing", "completed", "failed", "cancelling", "cancelled")
# Promotions Builder refuses a code_generate job asking for more (its job schema's maximum).
RULE_MAX_CODES = 1000

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_UNAUTHORIZED: dict[str, Any] = {
    "errors": [{"status": 401, "title": "Unable to validate access token"}]
}
_FILTER_ERROR: dict[str, Any] = {
    "errors": [
        {"status": "400", "title": "Bad Request", "detail": "Could not parse the supplied filter"}
    ]
}
_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_CODE_PARAMETERS = {"max_uses_per_code": 1, "code_length": 8, "code_prefix": "promo-"}
# Each API names its own consume units: PS per_cart/per_item, PB per_application/per_checkout.
_CONSUME_UNIT: dict[Kind, str] = {"promotion": "per_cart", "rule_promotion": "per_checkout"}
# Code counts the lifecycle and the demo pick from; a rule promotion's stay within PB's maximum
# (same lengths, so the seeded draws, and the ids a seed serves, do not move).
_SPAWN_CODES: dict[Kind, tuple[int, ...]] = {
    "promotion": (100, 500, 1000, 5000, 10_000),
    "rule_promotion": (50, 100, 250, 500, 1000),
}
_DEMO_CODES: dict[Kind, tuple[int, ...]] = {
    "promotion": (100, 1000, 5000, 10_000),
    "rule_promotion": (100, 250, 500, 1000),
}
# A minimal valid Promotions Standard `schema` for a cart fixed discount ($10 off).
_FIXED_DISCOUNT_SCHEMA: dict[str, Any] = {"currencies": [{"amount": 1000, "currency": "USD"}]}
# A minimal Promotions Builder rule set: 10% off carts of $50 or more.
_RULE_SET: dict[str, Any] = {
    "rules": {"strategy": "cart_total", "operator": "gte", "args": [5000]},
    "actions": [{"strategy": "cart_discount", "args": ["percent", 10]}],
}

# Templates are weighted so the failure the monitor exists for dominates; the numbers and ids
# in the others make the monitor's error normalisation do real work.
_FAILURES: dict[str, tuple[tuple[str, int], ...]] = {
    "code_generate": (
        ("codes limit exceeded", 5),
        ("Promotion code generation failed: database timeout after {seconds}s", 2),
        ("code generation aborted after {done} of {total} codes: duplicate code collision", 1),
    ),
    "code_export": (
        ("export failed: storage unavailable (request id {request_id})", 3),
        ("export failed: upload of {total} codes timed out after {seconds}s", 1),
    ),
}

# The reference's examples put a space after the comma (`eq(status, complete)`).
_CLAUSE = re.compile(r"(eq|ne|gt|ge|lt|le|like|in)\(([A-Za-z_.]+), ?([^()]*)\)")
# The jobs filter example says `complete`; every status enum says `completed`.
_STATUS_ALIASES = {"complete": "completed"}
_ORDERINGS: dict[str, Callable[[datetime, datetime], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


@dataclass
class Fault:
    """One injected fault; matched against requests in injection order.

    A timeout with delay 0 hangs for DEFAULT_TIMEOUT_DELAY, so that the client gives up first.
    """

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    path_contains: str | None = None
    times: int | None = 1
    delay: float = 0.0
    # Only requests to exactly this path (a promotion, not its jobs below it).
    path: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the simulator saw it; status 0 means no answer was sent (yet)."""

    method: str
    path: str
    query: dict[str, str]
    at: float
    status: int


@dataclass
class _ArmedFault:
    fault: Fault
    remaining: int | None


@dataclass
class _Job:
    id: str
    job_type: str
    name: str
    status: str
    number_of_codes: int
    error: str | None
    created_at: float
    updated_at: float
    # Codes a completed code_generate job made; None means all it was asked for.
    generated: int | None = None


@dataclass
class _Promotion:
    id: str
    kind: Kind
    name: str
    enabled: bool
    start: str
    end: str
    promotion_type: str
    automatic: bool
    # dict keeps insertion order, which is the order the API answers in
    jobs: dict[str, _Job] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class Simulator:
    """A fake Elastic Path store serving the promotion job endpoints over aiohttp."""

    def __init__(
        self,
        *,
        client_id: str = "demo-client-id",
        client_secret: str = "demo-client-secret",  # noqa: S107 -- public demo credentials
        token_ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        page_cap: int | None = None,
        ignore_offset: bool = False,
        unordered: bool = False,
        result_key: ResultKey = "result",
        rule_list_shape: RuleListShape = "envelope",
        token_shape: TokenShape = "flat",  # noqa: S107 -- an answer shape, not a password
    ) -> None:
        if page_cap is not None and page_cap < 1:
            raise ValueError("page_cap must be at least 1, or None for no cap")
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.transitions = 0
        self.tokens_issued = 0
        self.requests: list[RecordedRequest] = []
        self.failure_rate = 0.2
        self.spawn_rate = 0.1
        # Of the code_generate jobs that complete, how many make fewer codes than asked.
        self.shortfall_rate = 0.05
        # Store behaviours a client must cope with (not faults: the real API may answer so).
        # page_cap: the store's page-length setting, served whatever page[limit] asks.
        self.page_cap = page_cap
        # ignore_offset: page[offset] is ignored, every request gets the first page.
        self.ignore_offset = ignore_offset
        # unordered: no ORDER BY behind the jobs listing, so each request sees a fresh order.
        self.unordered = unordered
        # Documented answer variants: PBcf's `generate_result` and bare rule-promotion list,
        # AUTHcf's token wrapped in `data`.
        self.result_key: ResultKey = result_key
        self.rule_list_shape: RuleListShape = rule_list_shape
        self.token_shape: TokenShape = token_shape
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 -- reproducible lifecycles, not secrets
        # A separate stream, so shuffling job lists never moves the ids a seed serves.
        self._order_rng = random.Random(f"order:{seed}")  # noqa: S311 -- not secrets
        self._promotions: dict[str, _Promotion] = {}
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []  # every token ever issued, for leak checks in tests
        self._faults: list[_ArmedFault] = []
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._app = self._build_app()

    # lifecycle

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # handler_cancellation stops a hanging fault as soon as the client gives up; the short
        # shutdown timeout keeps stop() fast while a huge body is still streaming.
        runner = web.AppRunner(
            self._app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner = runner
        self._base_url = f"http://{shown}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        """Stop serving (for good); requests held by slow or timeout faults are answered first."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # data

    def add_promotion(
        self,
        kind: Kind = "promotion",
        *,
        promotion_id: str | None = None,
        name: str | None = None,
        enabled: bool = True,
        end: str | None = None,
    ) -> str:
        """Create a promotion and return its id."""
        if kind not in get_args(Kind):
            raise ValueError(f"unknown promotion kind {kind!r}")
        promotion_id = promotion_id or self._new_id()
        if promotion_id in self._promotions:
            raise ValueError(f"promotion {promotion_id} already exists")
        now = self._clock()
        if end is not None:
            _time(end)
        self._promotions[promotion_id] = _Promotion(
            id=promotion_id,
            kind=kind,
            name=name or f"Promotion {len(self._promotions) + 1}",
            enabled=enabled,
            start=_iso_millis(now),
            end=end or _iso_millis(now + timedelta(days=365).total_seconds()),
            promotion_type="rule_promotion" if kind == "rule_promotion" else "fixed_discount",
            automatic=False,
        )
        return promotion_id

    def remove_promotion(self, promotion_id: str) -> None:
        """Delete a promotion and its jobs; its jobs endpoint then answers 404."""
        del self._promotions[promotion_id]

    def set_promotion(
        self,
        promotion_id: str,
        *,
        enabled: bool | None = None,
        end: str | None = None,
        name: str | None = None,
    ) -> None:
        promotion = self._promotions[promotion_id]
        if enabled is not None:
            promotion.enabled = enabled
        if end is not None:
            _time(end)
            promotion.end = end
        if name is not None:
            promotion.name = name

    def add_job(
        self,
        promotion_id: str,
        *,
        job_type: str = "code_generate",
        status: str = "pending",
        error: str | None = None,
        job_id: str | None = None,
        created_at: float | None = None,
        updated_at: float | None = None,
        number_of_codes: int = 1000,
        name: str = "job",
    ) -> str:
        """Add a job as given, without the real API's one-active-job check, and return its id.

        Like Promotions Builder, a rule promotion refuses a code_generate job over 1000 codes.
        """
        promotion = self._promotions[promotion_id]
        if (
            promotion.kind == "rule_promotion"
            and job_type == "code_generate"
            and number_of_codes > RULE_MAX_CODES
        ):
            raise ValueError(
                f"number_of_codes {number_of_codes} is above Promotions Builder's maximum "
                f"of {RULE_MAX_CODES}"
            )
        job_id = job_id or self._new_id()
        if job_id in promotion.jobs:
            raise ValueError(f"job {job_id} already exists")
        created = self._clock() if created_at is None else created_at
        promotion.jobs[job_id] = _Job(
            id=job_id,
            job_type=job_type,
            name=name,
            status=status,
            number_of_codes=number_of_codes,
            error=error,
            created_at=created,
            updated_at=created if updated_at is None else updated_at,
        )
        return job_id

    def add_jobs(
        self,
        promotion_id: str,
        count: int,
        *,
        job_type: str = "code_generate",
        status: str = "pending",
        error: str | None = None,
        created_at: float | None = None,
        number_of_codes: int = 1000,
    ) -> list[str]:
        return [
            self.add_job(
                promotion_id,
                job_type=job_type,
                status=status,
                error=error,
                created_at=created_at,
                number_of_codes=number_of_codes,
            )
            for _ in range(count)
        ]

    def set_job_status(
        self,
        promotion_id: str,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        generated: int | None = None,
    ) -> None:
        """Set a job's status and error; bumps updated_at and counts a transition if it changed.

        `generated`: for a code_generate job completing, how many codes it made (a shortfall
        when fewer than its number_of_codes); by default all of them.
        """
        job = self._promotions[promotion_id].jobs[job_id]
        job.generated = generated
        self._change(job, status, error)

    def remove_job(self, promotion_id: str, job_id: str) -> None:
        del self._promotions[promotion_id].jobs[job_id]

    def jobs(self, promotion_id: str) -> list[dict[str, Any]]:
        """The promotion's jobs as the API renders them, in API order."""
        promotion = self._promotions[promotion_id]
        return [self._render_job(promotion, job) for job in promotion.jobs.values()]

    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion, both kinds, as the list endpoints render them."""
        return [_render_promotion(p) for p in self._promotions.values()]

    # faults and tokens

    def inject(self, fault: Fault) -> None:
        if fault.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be at least 1, or None for until cleared")
        self._faults.append(_ArmedFault(fault, fault.times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    def _new_id(self) -> str:
        # From the seeded RNG, so `--seed N` always serves the same promotion ids.
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far, revoked or not."""
        return list(self._issued)

    # autonomous lifecycle

    def step(self) -> int:
        """Advance every promotion's job queue once and return the number of transitions."""
        made = 0
        for promotion in list(self._promotions.values()):
            jobs = list(promotion.jobs.values())
            for job in jobs:
                if job.status == "cancelling":
                    made += self._change(job, "cancelled")
                elif job.status == "processing":
                    if self._rng.random() < self.failure_rate:
                        message = _failure_message(self._rng, job.job_type, job.number_of_codes)
                        made += self._change(job, "failed", message)
                    else:
                        if job.job_type == "code_generate" and (
                            self._rng.random() < self.shortfall_rate
                        ):
                            job.generated = self._rng.randrange(job.number_of_codes)
                        made += self._change(job, "completed")
            pending = [job for job in jobs if job.status == "pending"]
            if pending:
                made += self._change(min(pending, key=lambda job: job.created_at), "processing")
            # disabled promotions get jobs too: codes are made before a campaign is switched on
            elif self._rng.random() < self.spawn_rate:
                job_type = self._rng.choice(JOB_TYPES)
                codes = self._rng.choice(_SPAWN_CODES[promotion.kind])
                self.add_job(promotion.id, job_type=job_type, number_of_codes=codes)
        return made

    async def run_lifecycle(self, period: float) -> None:
        """Call step() every period seconds until cancelled."""
        while True:
            await asyncio.sleep(period)
            self.step()

    def _change(self, job: _Job, status: str, error: str | None = None) -> int:
        changed = job.status != status
        job.status = status
        job.error = error
        job.updated_at = self._clock()
        self.transitions += changed
        return int(changed)

    # HTTP

    def _build_app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: _Handler) -> web.StreamResponse:
            index = len(self.requests)
            query = dict(request.query)
            entry = RecordedRequest(request.method, request.path, query, self._clock(), 0)
            self.requests.append(entry)
            response, status = await self._respond(request, handler)
            self.requests[index] = replace(entry, status=status)
            return response

        app = web.Application(middlewares=[record])
        app.router.add_post(TOKEN_PATH, self._issue_token)
        routes: tuple[tuple[Kind, str], ...] = (
            ("promotion", "/v2/promotions"),
            ("rule_promotion", "/v2/rule-promotions"),
        )
        for kind, prefix in routes:
            app.router.add_get(prefix, self._list_handler(kind))
            app.router.add_get(prefix + "/{promotion_id}", self._promotion_handler(kind))
            app.router.add_get(prefix + "/{promotion_id}/jobs", self._jobs_handler(kind))
        return app

    async def _respond(
        self, request: web.Request, handler: _Handler
    ) -> tuple[web.StreamResponse, int]:
        fault = self._take_fault(request.path)
        if fault is None or fault.kind in ("slow", "timeout"):
            if fault is not None:
                default = DEFAULT_TIMEOUT_DELAY if fault.kind == "timeout" else 0.0
                await self._pause(fault.delay or default)
            response = await self._answer(request, handler)
            return response, response.status
        match fault.kind:
            case "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                return _json(fault.status, _error_body(fault.status), headers), fault.status
            case "reset":
                _reset(request)
                # never sent: the write fails on the closed transport and aiohttp drops it quietly
                return web.Response(status=500), 0
            case "truncated":
                normal = await self._answer(request, handler)
                full = normal.body if isinstance(normal, web.Response) else None
                data = full if isinstance(full, bytes) else b'{"data": []}'
                return _raw_json(data[: len(data) // 2]), 200
            case "html":
                return web.Response(
                    status=502, text=_BAD_GATEWAY_HTML, content_type="text/html"
                ), 502
            case "wrong_shape":
                shape: Any = (
                    [{"token": "not an object"}]
                    if request.path == TOKEN_PATH
                    else {"data": {"not": "a list"}}
                )
                return _json(200, shape), 200
            case "huge":
                return await _stream_huge(request), 200
        raise AssertionError(fault.kind)  # pragma: no cover

    async def _answer(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path != TOKEN_PATH and not self._authorised(request):
            return _json(401, _UNAUTHORIZED)
        try:
            return await handler(request)
        except _ApiError as error:
            return _json(error.status, error.body)
        except web.HTTPException as error:
            # unknown paths and methods get an EP-style JSON body, not aiohttp's text
            return _json(error.status, _error_body(error.status), dict(error.headers))

    def _take_fault(self, path: str) -> Fault | None:
        for armed in self._faults:
            fault = armed.fault
            if fault.path is not None and fault.path != path:
                continue
            if fault.path_contains is None or fault.path_contains in path:
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        self._faults.remove(armed)
                return armed.fault
        return None

    async def _pause(self, seconds: float) -> None:
        # waiting on the stop event rather than sleeping lets stop() release held requests
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self._tokens.get(token.strip())
        return scheme.lower() == "bearer" and expires is not None and self._clock() < expires

    async def _issue_token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            raise _ApiError(401, _token_refused("Unsupported grant type"))
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            raise _ApiError(401, _token_refused("Invalid client credentials"))
        token = secrets.token_hex(20)
        now = self._clock()
        self._tokens[token] = now + self.token_ttl
        self._issued.append(token)
        self.tokens_issued += 1
        ttl = self.token_ttl
        answer = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "expires": int(now + ttl),
            "identifier": "client_credentials",
        }
        wrapped = self.token_shape == "wrapped"  # noqa: S105 -- an answer shape, not a password
        return _json(200, {"data": answer} if wrapped else answer)

    def _render_job(self, promotion: _Promotion, job: _Job) -> dict[str, Any]:
        rule = promotion.kind == "rule_promotion"
        stamp = _iso_nanos if rule else _iso_millis
        rendered: dict[str, Any] = {
            "type": "promotion_job",
            "id": job.id,
            "rule_promotion_id" if rule else "promotion_id": promotion.id,
            "job_type": job.job_type,
            "name": job.name,
        }
        if job.job_type == "code_generate":
            rendered["parameters"] = {
                "number_of_codes": job.number_of_codes,
                "consume_unit": _CONSUME_UNIT[promotion.kind],
                **_CODE_PARAMETERS,
            }
            result = _code_result(job)
            if result is not None:
                rendered[self.result_key] = result
        rendered["status"] = job.status
        if job.error is not None:
            rendered["error"] = job.error
        rendered["meta"] = {
            "timestamps": {"created_at": stamp(job.created_at), "updated_at": stamp(job.updated_at)}
        }
        return rendered

    def _page_window(self, query: Mapping[str, str]) -> tuple[int, int]:
        """The page the store serves: what was asked, then its page-length and offset habits."""
        limit, offset = _page_window(query)
        if self.page_cap is not None:
            limit = min(limit, self.page_cap)
        return limit, 0 if self.ignore_offset else offset

    def _promotion_handler(self, kind: Kind) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            promotion = self._promotions.get(request.match_info["promotion_id"])
            if promotion is None or promotion.kind != kind:
                raise _ApiError(404, _error_body(404))
            return _json(200, {"data": _render_promotion(promotion)})

        return handle

    def _jobs_handler(self, kind: Kind) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            promotion = self._promotions.get(request.match_info["promotion_id"])
            if promotion is None or promotion.kind != kind:
                raise _ApiError(404, _error_body(404))
            limit, offset = self._page_window(request.query)
            wanted: list[tuple[str, str]] = []
            for op, name, value in _parse_filter(request.query.get("filter")):
                if op != "eq" or name not in ("job_type", "status"):
                    raise _ApiError(400, _FILTER_ERROR)
                wanted.append(
                    (name, _STATUS_ALIASES.get(value, value) if name == "status" else value)
                )
            jobs = [
                job
                for job in promotion.jobs.values()
                if all(getattr(job, name) == value for name, value in wanted)
            ]
            if self.unordered:
                self._order_rng.shuffle(jobs)
            page = [self._render_job(promotion, job) for job in jobs[offset : offset + limit]]
            return _json(200, _paged(request, page, len(jobs), limit, offset))

        return handle

    def _list_handler(self, kind: Kind) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            limit, offset = self._page_window(request.query)
            tests: list[Callable[[_Promotion], bool]] = []
            for op, name, value in _parse_filter(request.query.get("filter")):
                test = _promotion_test(kind, op, name, value)
                if test is None:
                    raise _ApiError(400, _FILTER_ERROR)
                tests.append(test)
            promotions = [
                p
                for p in self._promotions.values()
                if p.kind == kind and all(test(p) for test in tests)
            ]
            page = [_render_promotion(p) for p in promotions[offset : offset + limit]]
            if kind == "rule_promotion" and self.rule_list_shape == "bare":
                return _json(200, [{"data": promotion} for promotion in page])
            return _json(200, _paged(request, page, len(promotions), limit, offset))

        return handle


def populate_demo(sim: Simulator, promotions: int, jobs_per_promotion: int) -> list[str]:
    """Fill sim with a realistic mix of promotions and jobs; returns the promotion ids."""
    names = (
        "Summer sale 10% off",
        "Free shipping over $50",
        "Welcome code",
        "Black Friday 25%",
        "Loyalty reward",
        "Clearance bundle",
        "Holiday gift card bonus",
    )
    terminal = ("completed", "failed", "cancelled")
    # the last job of each promotion is its active one, as the real API allows only one
    active = ("pending", "processing", "cancelling")
    now = sim._clock()
    ids: list[str] = []
    finished = 0  # counts terminal jobs across promotions, so every type/status pair appears
    for i in range(promotions):
        # every third is a rule promotion, and the last one too if none came before it
        kind: Kind = (
            "rule_promotion" if i % 3 == 2 or (i == promotions - 1 and i < 2) else "promotion"
        )
        ended = i % 7 == 5
        end = _iso_millis(now - 86_400 if ended else now + 90 * 86_400)
        pid = sim.add_promotion(kind, name=names[i % len(names)], enabled=i % 5 != 4, end=end)
        ids.append(pid)
        for j in range(jobs_per_promotion):
            if j == jobs_per_promotion - 1:
                status, job_type = active[i % 3], JOB_TYPES[i % 2]
            else:
                status, job_type = terminal[finished % 3], JOB_TYPES[(finished // 3) % 2]
                finished += 1
            codes = _DEMO_CODES[kind][(i + j) % 4]
            created = now - (jobs_per_promotion - j) * 3600.0 - i * 60.0
            error = _failure_message(sim._rng, job_type, codes) if status == "failed" else None
            sim.add_job(
                pid,
                job_type=job_type,
                status=status,
                error=error,
                created_at=created,
                updated_at=created if status == "pending" else created + 90.0,
                number_of_codes=codes,
                name="job" if job_type == "code_generate" else "Export codes",
            )
    return ids


# rendering


def _iso_millis(at: float) -> str:
    seconds, millis = divmod(round(at * 1000), 1000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def _iso_nanos(at: float) -> str:
    seconds, nanos = divmod(round(at * 1_000_000_000), 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time(text: str) -> datetime:
    parsed = _parse_time(text)
    if parsed is None:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    return parsed


def _code_result(job: _Job) -> dict[str, int] | None:
    """The codes a finished code_generate job made (and a cancel removed)."""
    if job.status == "completed":
        made = job.number_of_codes if job.generated is None else job.generated
        return {"generated": made, "deleted": 0}
    if job.status == "cancelled":
        # the cancel is taken to reach the job halfway, and removes what it had made
        made = job.number_of_codes // 2
        return {"generated": made, "deleted": made}
    return None


def _render_promotion(promotion: _Promotion) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "type": promotion.kind,
        "id": promotion.id,
        "name": promotion.name,
        "description": f"{promotion.name} (simulated)",
        "enabled": promotion.enabled,
        "start": promotion.start,
        "end": promotion.end,
        "promotion_type": promotion.promotion_type,
        "automatic": promotion.automatic,
    }
    # Promotions Standard requires `schema`; a Builder promotion carries a `rule_set` instead.
    if promotion.kind == "promotion":
        rendered["schema"] = _FIXED_DISCOUNT_SCHEMA
    else:
        rendered["rule_set"] = _RULE_SET
    return rendered


def _paged(
    request: web.Request, page: list[dict[str, Any]], total: int, limit: int, offset: int
) -> dict[str, Any]:
    pages = math.ceil(total / limit)
    # An empty list yields a negative last offset and next always has a value, even on the last
    # page: both are what the real API has been seen to answer, so clients must not trust links.
    last = (pages - 1) * limit
    next_offset = offset + limit if offset + limit < total else last
    base = f"{request.url.origin()}{request.path}"
    extra = (
        f"&filter={quote(request.query['filter'], safe='(),:')}"
        if "filter" in request.query
        else ""
    )

    def link(at: int) -> str:
        return f"{base}?page[offset]={at}&page[limit]={limit}{extra}"

    return {
        "data": page,
        "links": {
            "current": link(offset),
            "first": link(0),
            "last": link(last),
            "prev": link(max(offset - limit, 0)),
            "next": link(next_offset),
        },
        "meta": {
            "page": {
                "limit": limit,
                "offset": offset,
                "current": offset // limit + 1,
                "total": pages,
            },
            "results": {"total": total},
        },
    }


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    response = _raw_json(json.dumps(body).encode(), status)
    if headers:
        response.headers.update({k: v for k, v in headers.items() if k != "Content-Type"})
    return response


def _raw_json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error_body(status: int) -> dict[str, Any]:
    """An Elastic Path error body; the status is a number for some and a string for others."""
    if status == 401:
        return _UNAUTHORIZED
    error: dict[str, Any]
    if status >= 500:
        error = {
            "title": HTTPStatus(status).phrase,
            "status": str(status),
            "detail": "there was a problem processing your request",
            "request_id": str(uuid.uuid4()),
        }
    elif status == 400:
        error = {"status": "400", "title": "Bad Request", "detail": "The request was invalid"}
    else:
        details = {
            403: "You do not have permission to access this resource",
            404: "The requested promotion could not be found",
            429: "You have exceeded the rate limit for this store",
        }
        error = {"status": status, "title": _phrase(status)}
        if status in details:
            error["detail"] = details[status]
    return {"errors": [error]}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _page_window(query: Mapping[str, str]) -> tuple[int, int]:
    limit = _int_param(query, "page[limit]", DEFAULT_LIMIT)
    offset = _int_param(query, "page[offset]", 0)
    if not 1 <= limit <= MAX_LIMIT:
        raise _ApiError(400, _bad_request(f"page[limit] must be between 1 and {MAX_LIMIT}"))
    if not 0 <= offset <= MAX_OFFSET:
        raise _ApiError(400, _bad_request(f"page[offset] must be between 0 and {MAX_OFFSET}"))
    return limit, offset


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise _ApiError(400, _bad_request(f"{name} must be an integer")) from None


def _token_refused(detail: str) -> dict[str, Any]:
    # the authentication descriptions (AUTHcf's Error schema and examples) give status as a string
    return {"errors": [{"status": "401", "title": "Unauthorized", "detail": detail}]}


def _bad_request(detail: str) -> dict[str, Any]:
    return {"errors": [{"status": 400, "title": "Bad Request", "detail": detail}]}


def _parse_filter(text: str | None) -> list[tuple[str, str, str]]:
    """Split `op(field,value):op(field,value)`; values may contain ':' (timestamps)."""
    if text is None:
        return []
    clauses: list[tuple[str, str, str]] = []
    position = 0
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            raise _ApiError(400, _FILTER_ERROR)
        op, name, value = match.groups()
        clauses.append((op, name, value))
        position = match.end()
        if position == len(text):
            return clauses
        if text[position] != ":":
            raise _ApiError(400, _FILTER_ERROR)
        position += 1


def _promotion_test(
    kind: Kind, op: str, name: str, value: str
) -> Callable[[_Promotion], bool] | None:
    if kind == "promotion":
        # Promotions Standard filters only by code server-side; codes are not modelled here.
        return (lambda _: True) if (op, name) == ("eq", "code") else None
    if name in ("enabled", "automatic"):
        if op != "eq" or value not in ("true", "false"):
            return None
        wanted = value == "true"
        return lambda p: bool(getattr(p, name)) is wanted
    if name in ("start", "end"):
        when = _parse_time(value)
        compare = _ORDERINGS.get(op)
        if when is None or compare is None:
            return None
        return lambda p: compare(_time(getattr(p, name)), when)
    if name in ("id", "name", "promotion_type") and op == "eq":
        return lambda p: bool(getattr(p, name) == value)
    return None


def _failure_message(rng: random.Random, job_type: str, number_of_codes: int) -> str:
    templates = _FAILURES.get(job_type, _FAILURES["code_generate"])
    template = rng.choices([t for t, _ in templates], [w for _, w in templates])[0]
    return template.format(
        seconds=rng.choice((30, 45, 60, 90)),
        done=rng.randint(0, number_of_codes),
        total=number_of_codes,
        request_id=f"{rng.getrandbits(64):016x}",
    )


# faults


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # linger 0 makes close() send RST, which is what a reset looks like to the client
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _stream_huge(request: web.Request) -> web.StreamResponse:
    """A valid ~64 MiB job list, written in blocks so it is never in memory at once."""
    item = json.dumps(
        {
            "type": "promotion_job",
            "id": "00000000-0000-4000-8000-000000000000",
            "promotion_id": "00000000-0000-4000-8000-000000000001",
            "job_type": "code_export",
            "name": "job",
            "status": "completed",
            "meta": {
                "timestamps": {
                    "created_at": "2024-01-01T00:00:00.000Z",
                    "updated_at": "2024-01-01T00:00:00.000Z",
                }
            },
        }
    ).encode()
    head, tail = b'{"data": [', b"]}"
    count = HUGE_BYTES // (len(item) + 1) + 1
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(head) + count * (len(item) + 1) - 1 + len(tail)
    await response.prepare(request)
    per_block = 2048
    # a client that stops reading closes the connection, which is the point of this fault
    with contextlib.suppress(ConnectionError):
        await response.write(head)
        for first in range(0, count, per_block):
            block = b",".join([item] * min(per_block, count - first))
            await response.write(block if first == 0 else b"," + block)
        await response.write(tail)
    return response


# command line


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a populated simulator until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m monitor.simulator", description="Serve a fake Elastic Path store."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--promotions", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5, help="jobs per promotion")
    parser.add_argument(
        "--lifecycle-period", type=float, default=2.0, help="seconds between steps; 0 = frozen"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client-id", default="demo-client-id")
    parser.add_argument("--client-secret", default="demo-client-secret")
    parser.add_argument("--token-ttl", type=float, default=3600.0)
    parser.add_argument(
        "--page-cap", type=_positive, default=None, help="serve at most this many records per page"
    )
    parser.add_argument(
        "--ignore-offset", action="store_true", help="ignore page[offset]: always the first page"
    )
    parser.add_argument(
        "--unordered", action="store_true", help="list jobs in a fresh random order each request"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


async def _serve(args: argparse.Namespace) -> None:
    sim = Simulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        seed=args.seed,
        page_cap=args.page_cap,
        ignore_offset=args.ignore_offset,
        unordered=args.unordered,
    )
    populate_demo(sim, args.promotions, args.jobs)
    base_url = await sim.start(args.host, args.port)
    # the variable names Elastic Path's own CLI reads, so the line can be pasted into a shell
    print(
        f"EPCC_API_BASE_URL={base_url} EPCC_CLIENT_ID={sim.client_id} "
        f"EPCC_CLIENT_SECRET={sim.client_secret}",
        flush=True,
    )
    try:
        if args.lifecycle_period > 0:
            await sim.run_lifecycle(args.lifecycle_period)
        else:
            await asyncio.Event().wait()
    finally:
        await sim.stop()


if __name__ == "__main__":
    main()
