"""What the client tests share: a recorder of client events, a client builder, fetch helpers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.client import ApiError, ElasticPathClient, FetchResult
from monitor.client.budget import RequestBudget
from monitor.models import PromotionKind
from monitor.settings import ApiSettings
from monitor.simulator import RecordedRequest, Simulator
from tests.support import TOKEN_PATH, Handler, serving, store_app

MAX_RETRIES = 2
# Elastic Path's documented example responses (copied from shared/fixtures, see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class RecordedEvents:
    """A ClientEvents that keeps every call, so tests can read what the client reported."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    retries: list[tuple[str, str, int]] = field(default_factory=list)
    retry_errors: list[ApiError] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    skews: list[float] = field(default_factory=list)

    def request_done(self, endpoint: str, code: str) -> None:
        self.requests.append((endpoint, code))

    def token_refreshed(self, expires_in: float) -> None:
        self.tokens.append(expires_in)

    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None:
        self.retries.append((endpoint, error.reason, attempt))
        self.retry_errors.append(error)

    def budget_waited(self, seconds: float) -> None:
        self.waits.append(seconds)

    def store_clock_skew(self, seconds: float) -> None:
        self.skews.append(seconds)


Connect = Callable[..., ElasticPathClient]


def make_client(
    settings: dict[str, Any],
    *,
    events: RecordedEvents | None = None,
    budget: RequestBudget | None = None,
    token_clock: Callable[[], float] = time.monotonic,
) -> ElasticPathClient:
    return ElasticPathClient(
        ApiSettings.model_validate({"timeout_seconds": 0.5, **settings}),
        budget=budget or RequestBudget(1000),
        events=events,
        token_clock=token_clock,
        max_retries=MAX_RETRIES,
        retry_wait_initial=0.01,
        retry_wait_max=0.05,
    )


@contextlib.asynccontextmanager
async def store_client(
    listing: Handler,
    *,
    token: Handler | None = None,
    events: RecordedEvents | None = None,
    **api: Any,
) -> AsyncIterator[ElasticPathClient]:
    """A client of a hand-written store (`store_app`) on loopback, any credentials; closes both."""
    async with serving(store_app(listing, token=token)) as base_url:
        settings = {"base_url": base_url, "client_id": "id", "client_secret": "s", **api}
        async with make_client(settings, events=events) as client:
            yield client


def jobs_path(promotion_id: str, kind: PromotionKind = PromotionKind.PROMOTION) -> str:
    segment = "rule-promotions" if kind is PromotionKind.RULE_PROMOTION else "promotions"
    return f"/v2/{segment}/{promotion_id}/jobs"


def requests_to(sim: Simulator, path: str) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.path == path]


async def fetch(
    client: ElasticPathClient,
    promotion_id: str,
    kind: PromotionKind = PromotionKind.PROMOTION,
    job_filter: str | None = None,
) -> FetchResult:
    return await client.fetch_jobs(client.target(promotion_id, kind, job_filter))


async def fetch_error(
    client: ElasticPathClient,
    promotion_id: str,
    kind: PromotionKind = PromotionKind.PROMOTION,
    job_filter: str | None = None,
) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await fetch(client, promotion_id, kind, job_filter)
    return caught.value


async def request_token(sim: Simulator) -> str:
    """A token straight from the simulator's token endpoint, as an operator would fetch one."""
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(sim.base_url + TOKEN_PATH, data=form) as response,
    ):
        assert response.status == 200
        body = await response.json()
    token = body["access_token"]
    assert isinstance(token, str)
    return token
