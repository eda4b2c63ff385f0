"""The job-rate estimate: from created_at histories, decayed, with a prior; time passed in."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.rates import DAY, PRIOR, TIME_CONSTANT, WARM, JobRates
from monitor.simulator import Simulator
from tests.support import in_process_monitor, until

WEEK = 7 * DAY


def test_a_promotion_without_history_gets_the_prior() -> None:
    rates = JobRates(window=WEEK)
    assert rates.rate("never-seen", 1e9) == pytest.approx(PRIOR)
    rates.observe("empty", [], 1e9)
    assert rates.rate("empty", 1e9) == rates.prior()
    assert rates.prior() == pytest.approx(PRIOR, rel=0.02)  # (one promotion says little)


@pytest.mark.parametrize("single", [0, 300])
def test_the_prior_is_what_the_watched_promotions_show(single: int) -> None:
    # Robbins: a promotion with no job in the window expects as many as N1 / N0 (promotions with
    # one job, with none) in the next; 900 promotions say more than the default bet.
    rates = JobRates(window=WEEK)
    for n in range(900):
        rates.observe(f"p{n}", [1e9 - DAY] if n < single else [], 1e9)
    if single:
        assert rates.prior() * WEEK == pytest.approx(single / (900 - single), rel=0.15)
    else:
        assert rates.prior() < PRIOR / 5  # none of 900 got a job: they are polled less
    assert rates.rate("p899", 1e9) == rates.prior()


def test_a_steady_history_gives_its_rate() -> None:
    # A job every 10 minutes for the week the state keeps: 144 a day.
    now = 1e9
    created = [now - k * 600.0 for k in range(int(WEEK / 600))]
    rates = JobRates(window=WEEK)
    rates.observe("steady", created, now)
    assert rates.rate("steady", now) * DAY == pytest.approx(144 + PRIOR * DAY, rel=0.01)


def test_a_short_retention_still_gives_the_rate() -> None:
    # Only two hours of jobs held (state.retention_days 1/12): the count covers two hours.
    now = 1e9
    window = 2 * 3600.0
    created = [now - k * 60.0 for k in range(120)]
    rates = JobRates(window=window)
    rates.observe("recent", created, now)
    assert rates.rate("recent", now) * DAY == pytest.approx(1440, rel=0.02)


def test_a_poisson_history_is_estimated_within_its_noise() -> None:
    rng = random.Random(7)
    now = 1e9
    rate = 50 / DAY
    created, at = [], now - WEEK
    while (at := at + rng.expovariate(rate)) < now:
        created.append(at)
    rates = JobRates(window=WEEK)
    rates.observe("p", created, now)
    # About 50 jobs a day weigh in: the estimate is within a few standard errors of the truth.
    assert rates.rate("p", now) == pytest.approx(rate, rel=0.5)


def test_a_promotion_that_goes_quiet_cools_within_days() -> None:
    now = 1e9
    rates = JobRates(window=WEEK)
    rates.observe("quiet", [now - k * 60.0 for k in range(1440)], now)  # a busy day, then none
    busy = rates.rate("quiet", now) - rates.prior()
    assert rates.rate("quiet", now + TIME_CONSTANT) - rates.prior() == pytest.approx(busy / math.e)
    assert rates.rate("quiet", now + WEEK) - rates.prior() < busy / 10


def test_jobs_past_the_window_and_unknown_times_count_nothing() -> None:
    now = 1e9
    rates = JobRates(window=WEEK)
    rates.observe("old", [now - 8 * DAY, None, None], now)
    assert rates.rate("old", now) == rates.prior()


def test_a_job_created_in_the_future_counts_as_new_not_more() -> None:
    # The store's clock can run ahead of ours: a job "created" in a minute is a job now.
    rates, twin = JobRates(window=WEEK), JobRates(window=WEEK)
    rates.observe("ahead", [1e9 + 60], 1e9)
    twin.observe("now", [1e9], 1e9)
    assert rates.rate("ahead", 1e9) == twin.rate("now", 1e9)


def test_one_job_among_quiet_promotions_is_mostly_chance_and_three_are_not() -> None:
    # 900 dormant promotions, 70 of them with a stray job in the week, 100 with one a day: a
    # single job is what a dormant promotion shows now and then; three are not. Where every
    # promotion gets jobs, one job is taken at its word.
    now = 1e9
    exposure = TIME_CONSTANT * -math.expm1(-WEEK / TIME_CONSTANT)
    rates, busy = JobRates(window=WEEK), JobRates(window=WEEK)
    for n in range(900):
        rates.observe(f"quiet-{n}", [now - 3 * DAY] if n < 70 else [], now)
    for n in range(100):
        for population in (rates, busy):
            population.observe(f"daily-{n}", [now - k * DAY for k in range(7)], now)
    for population in (rates, busy):
        population.observe("one", [now], now)
    rates.observe("three", [now, now - 1, now - 2], now)
    assert rates.rate("one", now) - rates.prior() < 0.5 / exposure
    assert rates.rate("three", now) - rates.prior() > 0.95 * 3 / exposure
    assert busy.rate("one", now) == pytest.approx(busy.prior() + 1 / exposure)


def test_a_newly_created_promotion_starts_warm_and_cools() -> None:
    now = 1e9
    rates = JobRates(window=WEEK)
    rates.warm("fresh", updated_at=now - 60)
    assert rates.rate("fresh", now) - rates.prior() == pytest.approx(
        WARM * math.exp(-60 / TIME_CONSTANT)
    )
    # Listed again by the next discovery: the same update counts once.
    rates.warm("fresh", updated_at=now - 60)
    assert rates.rate("fresh", now + 300) - rates.prior() == pytest.approx(
        WARM * math.exp(-360 / TIME_CONSTANT)
    )
    # Its first poll's jobs keep the warmth: the update is evidence besides them.
    rates.observe("fresh", [now + 400], now + 400)
    exposure = TIME_CONSTANT * -math.expm1(-WEEK / TIME_CONSTANT)
    expected = WARM * math.exp(-460 / TIME_CONSTANT) + 1 / exposure
    assert rates.rate("fresh", now + 400) - rates.prior() == pytest.approx(expected)
    # An update long past is no reason to poll it more.
    rates.warm("stale", updated_at=now - 60 * DAY)
    assert rates.rate("stale", now) - rates.prior() < WARM * 1e-8


def test_a_newer_update_replaces_the_warmth_of_the_older() -> None:
    now = 1e9
    rates = JobRates(window=WEEK)
    rates.warm("p", updated_at=now - DAY)
    rates.warm("p", updated_at=now)
    assert rates.rate("p", now) - rates.prior() == pytest.approx(WARM)


def test_forget_drops_the_estimate() -> None:
    rates = JobRates(window=WEEK)
    rates.observe("p", [1e9], 1e9)
    rates.forget("p")
    assert rates.rate("p", 1e9) == rates.prior()


# properties, with time passed in

NOW = 1e9
_ages = st.lists(st.floats(0, WEEK), max_size=60)


@settings(max_examples=200)
@given(_ages, st.floats(0, 30 * DAY))
def test_without_new_jobs_the_estimate_decays_to_the_prior(ages: list[float], later: float) -> None:
    rates = JobRates(window=WEEK)
    rates.observe("p", [NOW - age for age in ages], NOW)
    now = rates.rate("p", NOW) - rates.prior()
    assert rates.rate("p", NOW + later) - rates.prior() == pytest.approx(
        now * math.exp(-later / TIME_CONSTANT), rel=1e-6, abs=1e-15
    )
    assert rates.rate("p", NOW + later) >= rates.prior()


@settings(max_examples=200)
@given(_ages, _ages)
def test_jobs_add_up_and_more_jobs_never_mean_a_lower_rate(
    first: list[float], second: list[float]
) -> None:
    one, other, both = JobRates(window=WEEK), JobRates(window=WEEK), JobRates(window=WEEK)
    one.observe("p", [NOW - age for age in first], NOW)
    other.observe("p", [NOW - age for age in second], NOW)
    both.observe("p", [NOW - age for age in first + second], NOW)
    assert both.rate("p", NOW) - both.prior() == pytest.approx(
        one.rate("p", NOW) - one.prior() + other.rate("p", NOW) - other.prior(),
        rel=1e-6,
        abs=1e-15,
    )
    assert both.rate("p", NOW) >= max(one.rate("p", NOW), other.rate("p", NOW))


@settings(max_examples=200)
@given(_ages, st.floats(0, DAY))
def test_observing_the_same_jobs_later_agrees_with_the_decayed_estimate(
    ages: list[float], later: float
) -> None:
    # (jobs within the window at both times: the window's edge drops the older ones)
    kept = [NOW - age for age in ages if age + later <= WEEK]
    early, late = JobRates(window=WEEK), JobRates(window=WEEK)
    early.observe("p", kept, NOW)
    late.observe("p", kept, NOW + later)
    assert late.rate("p", NOW + later) == pytest.approx(early.rate("p", NOW + later), rel=1e-9)


@settings(max_examples=100)
@given(st.floats(1 / DAY, 100 / 3600), st.integers(0, 2**32))
def test_a_steady_promotion_is_estimated_near_its_rate(rate: float, seed: int) -> None:
    rng = random.Random(seed)
    created, at = [], NOW - WEEK
    while (at := at + rng.expovariate(rate)) < NOW:
        created.append(at)
    rates = JobRates(window=WEEK)
    rates.observe("p", created, NOW)
    # The count over the window's weighted three days is Poisson: within 5 standard deviations.
    expected = rate * TIME_CONSTANT * -math.expm1(-WEEK / TIME_CONSTANT)
    sd = math.sqrt(rate * TIME_CONSTANT / 2)
    exposure = TIME_CONSTANT * -math.expm1(-WEEK / TIME_CONSTANT)
    count = (rates.rate("p", NOW) - rates.prior()) * exposure
    assert abs(count - expected) <= 5 * sd + 1


# the daemon derives them from its state: at load, and after each poll that changes it


async def test_the_monitor_derives_rates_from_the_state_at_load_and_after_polls(
    sim: Simulator, tmp_path: Path
) -> None:
    pid = sim.add_promotion(name="busy")
    for n in range(48):  # two an hour for the last day
        sim.add_job(pid, status="completed", created_at=time.time() - 1800 * (n + 1))
    first = in_process_monitor(tmp_path, sim, [{"id": pid}])
    assert first.rates.rate(pid, time.time()) == first.rates.prior()  # (nothing held yet)
    await first.run_once()  # (writes the state; its report derives the rates as any poll's)
    assert 12 < first.rates.rate(pid, time.time()) * DAY < 17

    monitor = in_process_monitor(tmp_path, sim, [{"id": pid}])
    await monitor.startup()
    try:
        # Before any poll: 48 jobs over the last day, seen through a three-day memory.
        loaded = monitor.rates.rate(pid, time.time()) * DAY
        assert 12 < loaded < 17
        new = sim.add_job(pid, status="pending")
        await until(lambda: new in getattr(monitor.store.get(pid), "jobs", {}), "the new job")
        await until(lambda: monitor.rates.rate(pid, time.time()) * DAY > loaded + 0.3, "a rise")
    finally:
        await monitor.shutdown()
