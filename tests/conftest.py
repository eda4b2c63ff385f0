"""Fixtures every test module may ask for: a fake clock, a started simulator,
the deploy tools (kubectl, promtool, amtool) and the kustomize renders of deploy/kubernetes.

The classes and functions behind them (FakeClock, Daemon, write_config, ...) are in support.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import stamina

from monitor.simulator import Simulator
from tests.deploy_support import KUBERNETES, kustomize
from tests.support import FakeClock, require_tool


@pytest.fixture(autouse=True, scope="session")
def _no_stamina_hooks() -> None:
    # The daemon's composition root sets these once (retries are reported as its own events);
    # tests that build a client directly need the same, or stamina logs and counts on its own.
    stamina.instrumentation.set_on_retry_hooks([])


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


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(
            "kubectl not installed: !!! the kustomize render checks of deploy/kubernetes are "
            "SKIPPED !!! (install kubectl >= 1.27 to run them)"
        )
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_tool("amtool")


@pytest.fixture(scope="module")
def example(kubectl: str) -> list[dict[str, Any]]:
    return kustomize(kubectl, KUBERNETES / "example")


@pytest.fixture(scope="module")
def standalone(kubectl: str) -> list[dict[str, Any]]:
    return kustomize(kubectl, KUBERNETES / "standalone")


@pytest.fixture(scope="module")
def statefulset(kubectl: str) -> list[dict[str, Any]]:
    return kustomize(kubectl, KUBERNETES / "statefulset")
