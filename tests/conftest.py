"""Fixtures every test module may ask for: a fake clock, a started simulator, its clients.

The classes and functions behind them (FakeClock, Daemon, write_config, ...) are in support.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from monitor.budget import RequestBudget
from monitor.client import ElasticPathClient
from monitor.simulator import Simulator
from tests.client_support import Connect, RecordedEvents, make_client
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """Time that moves only when the test moves it."""
    return FakeClock()


@pytest.fixture
def seed() -> int:
    """The simulator's seed; a module overrides this fixture to get ids of its own."""
    return 0


@pytest.fixture
def sim_clock() -> Callable[[], float]:
    """The simulator's clock: real time; a module overrides it with `clock` to steer time."""
    return time.time


@pytest.fixture
async def sim(seed: int, sim_clock: Callable[[], float]) -> AsyncIterator[Simulator]:
    """A simulated store on 127.0.0.1, port 0, that makes jobs only when a test adds them."""
    simulator = Simulator(seed=seed, clock=sim_clock)
    simulator.spawn_rate = 0
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def connect(sim: Simulator) -> AsyncIterator[Connect]:
    """Builds clients for `sim` (credentials by default, overridable) and closes them after."""
    clients: list[ElasticPathClient] = []

    def build(
        *, events: RecordedEvents | None = None, budget: RequestBudget | None = None, **api: Any
    ) -> ElasticPathClient:
        settings = {
            "base_url": sim.base_url,
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            **api,
        }
        client = make_client(settings, events=events, budget=budget)
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()
