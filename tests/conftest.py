"""Shared fixtures for every test module."""

from __future__ import annotations

import pytest
import stamina


@pytest.fixture(autouse=True, scope="session")
def _no_stamina_hooks() -> None:
    # The daemon's composition root sets these once (retries are reported as its own events);
    # tests that build a client directly need the same, or stamina logs and counts on its own.
    stamina.instrumentation.set_on_retry_hooks([])
