"""Fixtures every test module may ask for: a fake clock and a started simulator.

The classes and functions behind them (FakeClock, Daemon, write_config, ...) are in support.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from monitor.simulator import Simulator
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
