"""The client tests' fixtures: the simulator on the test's clock, and clients for it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from monitor.client import ElasticPathClient
from monitor.client.budget import RequestBudget
from monitor.simulator import Simulator
from tests.client_support import Connect, RecordedEvents, make_client
from tests.support import FakeClock


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    """The simulator keeps the test's time: tokens expire when the test moves the clock."""
    return clock


@pytest.fixture
async def connect(sim: Simulator) -> AsyncIterator[Connect]:
    """Builds clients for `sim` (credentials by default, overridable) and closes them after."""
    clients: list[ElasticPathClient] = []

    def build(
        *,
        events: RecordedEvents | None = None,
        budget: RequestBudget | None = None,
        token_clock: Callable[[], float] = time.monotonic,
        **api: Any,
    ) -> ElasticPathClient:
        settings = {
            "base_url": sim.base_url,
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            **api,
        }
        client = make_client(settings, events=events, budget=budget, token_clock=token_clock)
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()
