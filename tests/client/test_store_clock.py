"""The store's clock from `Date` headers: smoothed, and deaf to dates that say nothing."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from monitor.client.clock import SMOOTHING, StoreClock
from tests.support import START, FakeClock


def date(at: float) -> str:
    return formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    "header", [None, "", "yesterday", "Sun, 32 Dec 2026 25:00:00 GMT", date(START - 2 * 86_400)]
)
def test_an_absent_unreadable_or_absurd_date_is_ignored(header: str | None) -> None:
    store = StoreClock(FakeClock(START))
    assert store.observe(header) is None
    assert store.skew is None
    assert store.store_time(START) == START


def test_the_skew_starts_at_the_first_date_and_then_moves_smoothly() -> None:
    clock = FakeClock(START)
    store = StoreClock(clock)
    # (a Date is cut to the second: the store's time was half a second past it, on average)
    assert store.observe(date(START + 600)) == START + 600
    assert store.skew == 600.5
    assert store.store_time(START + 10) == START + 610.5
    # One answer a minute further off moves the estimate part of the way, not all of it.
    store.observe(date(START + 660))
    assert store.skew == pytest.approx(600.5 + SMOOTHING * 60)
    # An absurd one moves nothing.
    store.observe(date(START + 3 * 86_400))
    assert store.skew == pytest.approx(600.5 + SMOOTHING * 60)


def test_a_skew_within_the_dates_resolution_is_taken_as_none() -> None:
    # Same clocks: each Date is the store's time cut to the second, so the estimate wanders within
    # half a second of 0; adding it would only add error to ages and delays.
    clock = FakeClock(START + 0.8)
    store = StoreClock(clock)
    store.observe(date(START))  # (START + 0.8 on the store's clock, dated START)
    assert store.skew == pytest.approx(-0.3)
    assert store.store_time(START + 10) == START + 10
    assert store.now() == START + 0.8
