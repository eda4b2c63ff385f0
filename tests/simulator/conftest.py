"""The simulator tests' fixtures: the simulator on the test's clock, and a minimal API client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from monitor.simulator import Simulator
from tests.simulator_support import Api
from tests.support import FakeClock


@pytest.fixture
def sim_clock(clock: FakeClock) -> FakeClock:
    """The simulator keeps the test's time: jobs advance and tokens expire as the test says."""
    return clock


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(sim, http)
