"""Adaptive polling: intervals, spread, active first under a tight budget; clock injected."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.client import JobsTarget
from monitor.models import PromotionKind
from monitor.planner import (
    REPLAN_SECONDS,
    PollPlan,
    interval_at,
    next_due,
    phase_of,
    water_level,
)

BASE = "https://useast.api.elasticpath.com"


def target(n: int) -> JobsTarget:
    pid = str(uuid.UUID(int=n + 1, version=4))
    return JobsTarget.build(BASE, pid, PromotionKind.PROMOTION, None, 100)


def polled_at_zero(targets: list[JobsTarget], busy: list[JobsTarget]) -> PollPlan:
    """A plan (every 60 s, active every 10 s) that polled `targets` at 0, finding `busy` active."""
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    for t in targets:
        plan.add(t, now=0)
    polled = plan.take_due(0, limit=len(targets))
    assert len(polled) == len(targets)  # every new target is due at once
    for t in polled:
        plan.finished(t.promotion_id, now=0, active=t in busy)
    return plan


@pytest.mark.parametrize(
    ("after", "anchor", "interval", "phase", "expected"),
    [
        (0.0, 0.0, 60.0, 0.0, 60.0),  # on the grid: the next slot, not this one
        (10.0, 0.0, 60.0, 0.5, 30.0),
        (31.0, 0.0, 60.0, 0.5, 90.0),
        (100.0, 100.0, 10.0, 0.25, 102.5),
        (1000.0, 0.0, 60.0, 0.25, 1035.0),  # far behind: the next slot ahead, no catch-up burst
    ],
)
def test_next_due_is_the_next_slot_on_the_promotions_grid(
    after: float, anchor: float, interval: float, phase: float, expected: float
) -> None:
    assert next_due(after, anchor, interval, phase) == pytest.approx(expected)


@given(
    st.floats(0, 1e6),
    st.floats(0, 1e3),
    st.floats(0.1, 3600),
    st.floats(0, 0.999),
)
def test_next_due_is_after_and_within_one_interval(
    after: float, anchor: float, interval: float, phase: float
) -> None:
    due = next_due(after, anchor, interval, phase)
    assert after < due <= after + interval * (1 + 1e-9)


def test_phases_are_stable_and_spread() -> None:
    phases = [phase_of(target(n).promotion_id) for n in range(1000)]
    assert phases == [phase_of(target(n).promotion_id) for n in range(1000)]
    # Evenly spread: every tenth of the interval gets roughly a tenth of the promotions.
    deciles = [sum(1 for p in phases if i / 10 <= p < (i + 1) / 10) for i in range(10)]
    assert min(deciles) > 60
    assert max(deciles) < 140


def test_new_promotions_are_due_at_once_then_on_their_grid() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    targets = [target(n) for n in range(5)]
    for t in targets:
        plan.add(t, now=0)
    assert plan.take_due(0, limit=10) == targets
    assert plan.take_due(0, limit=10) == []  # in flight: not handed out twice
    for t in targets:
        plan.finished(t.promotion_id, now=1, active=False)
    assert plan.take_due(1, limit=10) == []
    # Each comes back once per interval, at its own phase.
    seen: dict[str, float] = {}
    for tick in range(2, 122):
        for t in plan.take_due(float(tick), limit=10):
            seen.setdefault(t.promotion_id, float(tick))
            plan.finished(t.promotion_id, now=float(tick), active=False)
    for t in targets:
        # Never sooner than a quarter of an interval after the previous poll, then on its grid.
        expected = next_due(1 + 15, 0, 60, phase_of(t.promotion_id))
        assert seen[t.promotion_id] == pytest.approx(expected, abs=1.0)
        assert seen[t.promotion_id] >= 16


def test_idle_polls_are_spread_over_the_interval_not_bunched() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    for n in range(600):
        plan.add(target(n), now=0)
    for t in plan.take_due(0, limit=600):
        plan.finished(t.promotion_id, now=0.5, active=False)
    # Left in flight: each promotion is handed out once, at its first due second.
    per_second = [len(plan.take_due(float(second), limit=1000)) for second in range(1, 92)]
    assert sum(per_second) == 600
    assert max(per_second) <= 25  # ~10 a second on average; a burst would be hundreds


def test_active_promotions_use_the_short_interval() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    busy, idle = target(1), target(2)
    plan.add(busy, now=0)
    plan.add(idle, now=0)
    plan.take_due(0, limit=2)
    plan.finished(busy.promotion_id, now=0, active=True)
    plan.finished(idle.promotion_id, now=0, active=False)
    polls = {busy.promotion_id: 0, idle.promotion_id: 0}
    for tick in range(1, 121):
        for t in plan.take_due(float(tick), limit=2):
            polls[t.promotion_id] += 1
            plan.finished(t.promotion_id, now=float(tick), active=t is busy)
    assert polls[busy.promotion_id] == 12
    assert polls[idle.promotion_id] == 2
    assert plan.active_count() == 1


def test_when_slots_are_short_active_promotions_go_first_and_lag_is_visible() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    idle = [target(n) for n in range(20)]
    busy = [target(100 + n) for n in range(3)]
    busy_ids = {t.promotion_id for t in busy}
    for t in idle + busy:
        plan.add(t, now=0)
    for t in plan.take_due(0, limit=100):
        plan.finished(t.promotion_id, now=0, active=t.promotion_id in busy_ids)
    # Much later everything is overdue; only 3 slots free: all three are the active ones.
    chosen = plan.take_due(500, limit=3)
    assert {t.promotion_id for t in chosen} == {t.promotion_id for t in busy}
    assert plan.lag(500) > 400


def test_removed_promotions_are_never_handed_out_and_late_finishes_are_ignored() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    a, b = target(1), target(2)
    plan.add(a, now=0)
    plan.add(b, now=0)
    plan.take_due(0, limit=1)
    plan.remove(a.promotion_id)
    plan.finished(a.promotion_id, now=1, active=False)  # its in-flight poll ends after removal
    assert a.promotion_id not in plan
    assert plan.take_due(1, limit=5) == [b]


def test_re_adding_a_watched_promotion_keeps_its_schedule_and_takes_the_new_target() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    first = target(1)
    plan.add(first, now=0)
    plan.take_due(0, limit=1)
    plan.finished(first.promotion_id, now=0, active=False)
    filtered = JobsTarget.build(
        BASE, first.promotion_id, PromotionKind.PROMOTION, "eq(job_type,code_export)", 100
    )
    plan.add(filtered, now=1)
    assert plan.take_due(1, limit=1) == []  # not due again just because it was re-added
    assert plan.targets == [filtered]


def test_baselines_are_not_starved_by_active_promotions() -> None:
    busy = [target(n) for n in range(3)]
    idle = target(50)
    plan = polled_at_zero([*busy, idle], busy)
    newcomer = target(99)  # watched later (e.g. discovered): no baseline yet
    plan.add(newcomer, now=100)
    # Much later everything is due at once: the idle, already-known promotion comes last,
    # after the active ones and after the one we have never seen.
    ranked = [t.promotion_id for t in plan.take_due(5000, limit=10)]
    assert ranked[-1] == idle.promotion_id
    assert set(ranked[:-1]) == {t.promotion_id for t in [*busy, newcomer]}


def test_active_and_never_polled_go_before_idle_promotions_overdue_for_longer() -> None:
    idle = [target(n) for n in range(5)]
    busy = target(10)
    plan = polled_at_zero([*idle, busy], [busy])
    fresh = target(11)
    plan.add(fresh, now=400)
    # At 500 the idle ones have waited since ~30-90 s, the active one since ~5-15 s and the
    # fresh one only 100 s: still the active and the never-polled come first, oldest due first.
    order = [t.promotion_id for t in plan.take_due(500, limit=10)]
    assert order[:2] == [busy.promotion_id, fresh.promotion_id]
    idle_due = sorted(idle, key=lambda t: next_due(30, 0, 60, phase_of(t.promotion_id)))
    assert order[2:] == [t.promotion_id for t in idle_due]


def test_idle_promotions_are_not_starved_by_plenty_of_active_ones() -> None:
    # 40 active promotions every 10 s (4 polls/s) and 300 idle every 60 s (5 polls/s) with room
    # for 10 polls a second: the actives go first, and every idle one still gets its turn.
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    busy = {target(n).promotion_id for n in range(40)}
    for n in range(340):
        plan.add(target(n), now=0, active=target(n).promotion_id in busy)
    polls: dict[str, list[float]] = {}
    for tick in range(0, 1200):
        now = tick / 2
        for t in plan.take_due(now, limit=5):
            polls.setdefault(t.promotion_id, []).append(now)
            plan.finished(t.promotion_id, now=now, active=t.promotion_id in busy)
    assert len(polls) == 340
    for pid, times in polls.items():
        # After two minutes: the 340 baselines take ~34 s and rank with the actives, and the
        # idle grid settles in the minute after.
        steady = [at for at in times if at >= 120]
        gaps = [b - a for a, b in pairwise(steady)]
        assert max(gaps) <= (10 if pid in busy else 60) + 1
        assert len(steady) >= (45 if pid in busy else 7)


def test_when_idle_promotions_alone_exceed_the_budget_they_take_turns() -> None:
    # 100 idle promotions every 10 s want 10 polls a second; there is room for 4: each is
    # polled every ~25 s, the longest overdue first, and none is left behind.
    plan = PollPlan(interval=10, active_interval=10, anchor=0)
    for n in range(100):
        plan.add(target(n), now=0)
    polls: dict[str, list[float]] = {}
    for now in range(0, 300):
        for t in plan.take_due(float(now), limit=4):
            polls.setdefault(t.promotion_id, []).append(float(now))
            plan.finished(t.promotion_id, now=float(now), active=False)
    assert len(polls) == 100
    gaps = [b - a for times in polls.values() for a, b in pairwise(times)]
    # A turn comes every P / rate = 25 s on average; its grid phase moves it by up to one
    # interval, never more.
    assert sum(gaps) / len(gaps) <= 25.5
    assert max(gaps) <= 25 + 10
    assert plan.lag(300) > 10  # the budget is short, and the lag says so


def test_removal_while_in_flight_then_added_again() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    a, b = target(1), target(2)
    plan.add(a, now=0, active=True)
    plan.add(b, now=0)
    assert plan.take_due(0, limit=1) == [a]
    plan.remove(a.promotion_id)
    assert plan.active_count() == 0
    assert len(plan) == 1
    plan.finished(a.promotion_id, now=1, active=True)  # its poll ends after the removal
    assert a.promotion_id not in plan
    assert plan.active_count() == 0
    # Watched again (e.g. the next discovery lists it): a newcomer, due at once, before b.
    plan.add(a, now=2)
    assert plan.take_due(2, limit=5) == [b, a]
    assert plan.take_due(2, limit=5) == []
    assert plan.lag(2) == 0


def test_lag_is_the_most_overdue_waiting_promotion_not_one_in_flight() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    early, late = target(1), target(2)
    plan.add(early, now=0)
    plan.add(late, now=30)
    assert plan.lag(50) == 50
    plan.take_due(50, limit=1)  # early, now in flight
    assert plan.lag(50) == 20
    plan.remove(late.promotion_id)
    assert plan.lag(50) == 0


@pytest.mark.parametrize(
    ("watched", "wanted", "added", "removed"),
    [
        ([], [1, 2], [1, 2], []),
        ([1, 2], [1, 2], [], []),
        ([1, 2, 3], [2], [], [1, 3]),
        ([1, 2], [3, 2, 4], [3, 4], [1]),
        ([1], [], [], [1]),
    ],
)
def test_reconcile_says_what_was_added_and_removed(
    watched: list[int], wanted: list[int], added: list[int], removed: list[int]
) -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    for n in watched:
        plan.add(target(n), now=0)
    targets = {target(n).promotion_id: target(n) for n in wanted}
    assert plan.reconcile(targets, now=5) == (
        [target(n).promotion_id for n in added],
        [target(n).promotion_id for n in removed],
    )
    assert {t.promotion_id for t in plan.targets} == set(targets)


def test_reconcile_keeps_the_schedule_of_kept_promotions_and_marks_known_active_ones() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    kept, busy = target(1), target(2)
    plan.add(kept, now=0)
    plan.take_due(0, limit=1)
    plan.finished(kept.promotion_id, now=0, active=False)
    filtered = JobsTarget.build(
        BASE, kept.promotion_id, PromotionKind.PROMOTION, "eq(job_type,code_export)", 100
    )
    targets = {kept.promotion_id: filtered, busy.promotion_id: busy}
    added, removed = plan.reconcile(targets, 1, active=lambda pid: pid == busy.promotion_id)
    assert (added, removed) == ([busy.promotion_id], [])
    assert plan.active_count() == 1
    assert plan.take_due(1, limit=5) == [busy]  # the kept one is not due again yet
    assert filtered in plan.targets


@dataclass
class _Row:
    target: JobsTarget
    due: float
    active: bool
    in_flight: bool = False
    polled: bool = False
    anchor: float = 0.0  # its grid: a new interval continues from the slot it was due at
    spacing: float = 0.0


class _Model:
    """The plan recomputed by brute force: scan and sort every promotion on every question."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}

    def add(self, t: JobsTarget, now: float, active: bool) -> None:
        self.rows.setdefault(t.promotion_id, _Row(t, now, active))

    def take_due(self, now: float, limit: int) -> list[JobsTarget]:
        due = [r for r in self.rows.values() if not r.in_flight and r.due <= now]
        due.sort(key=lambda r: (r.polled and not r.active, r.due))
        for row in due[:limit]:
            row.in_flight = True
        return [row.target for row in due[:limit]]

    def finished(self, pid: str, now: float, active: bool) -> None:
        row = self.rows.get(pid)
        if row is not None:
            interval = 10 if active else 60
            if interval != row.spacing:
                if row.spacing:
                    row.anchor = row.due - phase_of(pid) * interval
                row.spacing = interval
            row.in_flight, row.polled, row.active = False, True, active
            row.due = next_due(now + interval / 4, row.anchor, interval, phase_of(pid))

    def lag(self, now: float) -> float:
        return max([0.0, *(now - r.due for r in self.rows.values() if not r.in_flight)])


Op = tuple[str, int, bool]

_operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 15), st.booleans()),
    st.tuples(st.just("remove"), st.integers(0, 15), st.booleans()),
    st.tuples(st.just("finish"), st.integers(0, 15), st.booleans()),
    st.tuples(st.just("take"), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("wait"), st.integers(0, 40), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_operation, max_size=80))
def test_the_plan_answers_as_a_brute_force_scan_would(operations: list[Op]) -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    model = _Model()
    now = 0.0
    for name, n, flag in operations:
        t = target(n)
        if name == "add":
            plan.add(t, now, active=flag)
            model.add(t, now, flag)
        elif name == "remove":
            plan.remove(t.promotion_id)
            model.rows.pop(t.promotion_id, None)
        elif name == "finish":  # also for promotions not in flight, or no longer watched
            plan.finished(t.promotion_id, now, active=flag)
            model.finished(t.promotion_id, now, flag)
        elif name == "take":
            assert plan.take_due(now, n) == model.take_due(now, n)
        else:
            now += n
        assert plan.lag(now) == model.lag(now)
        assert plan.active_count() == sum(r.active for r in model.rows.values())
        assert len(plan) == len(model.rows)
    assert plan.take_due(now + 1000, 100) == model.take_due(now + 1000, 100)


def test_many_removals_leave_the_plan_answering_for_the_promotions_left() -> None:
    # Removed promotions queued behind live ones: the plan must drop them (it rebuilds its
    # queues once they outnumber the live ones) and keep every promotion still watched.
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    kept = [target(n) for n in range(50)]
    gone = [target(1000 + n) for n in range(200)]
    for t in kept:
        plan.add(t, now=0)
    for t in gone:
        plan.add(t, now=10)
    for t in gone:
        plan.remove(t.promotion_id)
    assert plan.lag(20) == 20
    assert plan.take_due(20, limit=1000) == kept
    for t in kept[:10]:
        plan.finished(t.promotion_id, now=20, active=True)
    assert plan.active_count() == 10
    assert {t.promotion_id for t in plan.take_due(100, limit=1000)} == {
        t.promotion_id for t in kept[:10]
    }


def test_an_abandoned_poll_is_due_again_not_lost() -> None:
    # A replica losing the lease cancels its polls in flight; those promotions must be polled
    # again once it leads again (they used to sit in no queue, never due again).
    plan = PollPlan(interval=60.0, active_interval=10.0, anchor=0.0)
    plan.add(target(1), 0.0)
    plan.add(target(2), 0.0)
    taken = plan.take_due(0.0, 2)
    assert len(taken) == 2
    plan.abandoned(taken[0].promotion_id)
    plan.finished(taken[1].promotion_id, 1.0, active=False)
    assert plan.take_due(1.0, 5) == [taken[0]]
    plan.abandoned("not watched")  # a promotion removed meanwhile: nothing to do


def test_due_all_makes_every_waiting_promotion_due_now() -> None:
    # A replica that just became the poller has been silent: it catches up at once.
    plan = PollPlan(interval=60.0, active_interval=10.0, anchor=0.0)
    for n in range(3):
        plan.add(target(n), 0.0)
    for polled in plan.take_due(0.0, 3):
        plan.finished(polled.promotion_id, 1.0, active=False)
    assert plan.take_due(2.0, 5) == []  # next slots are half an interval away or more
    plan.due_all(2.0)
    assert len(plan.take_due(2.0, 5)) == 3


# √-law intervals: poll where jobs happen, for the requests a uniform schedule spends


@pytest.mark.parametrize(
    ("weights", "costs", "spend", "expected"),
    [
        ([1, 1, 1], [1, 1, 1], 3 / 60, [60, 60, 60]),  # equal: uniform
        ([4, 1], [1, 1], 2 / 60, [37.5, 150]),  # twice the weight: half the interval
        ([100, 1, 1, 1], [1, 1, 1, 1], 4 / 60, [900 / 57, 900, 900, 900]),  # the rest at max
        ([1000, 1], [1, 1], 0.15, [10, 20]),  # the hot one at the minimum, the rest to the cold
        ([0.5, 1], [4, 1], 5 / 60, [72, 36]),  # four pages a poll: half the weight, same rate
        ([1, 1], [1, 1], 1 / 10_000, [900, 900]),  # not enough for the maximum: it, and turns
        ([1, 1], [1, 1], 1, [10, 10]),  # more than enough: the minimum
    ],
)
def test_the_water_level_gives_the_square_root_law_within_the_bounds(
    weights: list[float], costs: list[float], spend: float, expected: list[float]
) -> None:
    level = water_level(weights, costs, spend, 10, 900)
    assert [interval_at(level, w, 10, 900) for w in weights] == pytest.approx(expected)


def run_plan(plan: PollPlan, start: float, end: float, polls: dict[str, list[float]]) -> None:
    """Every second from `start` to `end`, poll whatever is due (no request budget)."""
    for tick in range(int(start), int(end)):
        for t in plan.take_due(float(tick), limit=1000):
            polls.setdefault(t.promotion_id, []).append(float(tick))
            plan.finished(t.promotion_id, float(tick), active=False)


def test_a_hot_promotion_is_polled_more_often_for_the_requests_of_the_uniform_schedule() -> None:
    targets = [target(n) for n in range(10)]
    hot = targets[0].promotion_id
    rates = {t.promotion_id: 1.0 for t in targets} | {hot: 100.0}
    plan = PollPlan(interval=60, active_interval=10, anchor=0, rate=rates.__getitem__)
    for t in targets:
        plan.add(t, now=0)
    polls: dict[str, list[float]] = {}
    run_plan(plan, 0, 3600, polls)
    # √100 = 10 times the poll rate of each other: 19 k = 10/60 gives 11.4 s and 114 s.
    assert plan.poll_interval(hot) == pytest.approx(60 * 19 / 100)
    assert plan.poll_interval(targets[1].promotion_id) == pytest.approx(60 * 19 / 10)
    assert len(polls[hot]) > 5 * len(polls[targets[1].promotion_id])
    # The same requests as every 60 s, give or take the baselines and the grid's edges.
    assert sum(map(len, polls.values())) <= 10 * 3600 / 60 + 2 * 10


def test_the_plan_spends_no_more_than_the_budget_after_the_active_promotions() -> None:
    plan = PollPlan(interval=10, active_interval=10, anchor=0, budget=2.0, max_interval=3600)
    for n in range(100):
        plan.add(target(n), now=0, active=n < 10)
    plan.take_due(0, limit=0)  # (plans)
    # 10 active promotions every 10 s spend 1 request/s; the other request/s goes to 90 idle
    # ones, which the uniform schedule would poll every 10 s (9 requests/s).
    assert plan.poll_interval(target(50).promotion_id) == pytest.approx(90)
    assert plan.poll_interval(target(5).promotion_id) == 10


def test_a_cost_of_several_pages_lowers_a_promotions_poll_rate() -> None:
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    big, small = target(1), target(2)
    for t in (big, small):
        plan.add(t, now=0)
    plan.take_due(0, limit=2)
    plan.finished(big.promotion_id, 0, active=False, requests=4)
    plan.finished(small.promotion_id, 0, active=False, requests=1)
    plan.plan(1)
    # Equal rates: f ∝ √(1/c), so 4 pages poll half as often; 5 requests a minute in all.
    assert plan.poll_interval(big.promotion_id) == pytest.approx(
        2 * plan.poll_interval(small.promotion_id)
    )
    spend = 4 / plan.poll_interval(big.promotion_id) + 1 / plan.poll_interval(small.promotion_id)
    assert spend == pytest.approx(5 / 60)


def test_a_rate_change_moves_next_polls_at_once_without_a_burst() -> None:
    targets = [target(n) for n in range(100)]
    rates = {t.promotion_id: (100.0 if n < 10 else 1.0) for n, t in enumerate(targets)}
    plan = PollPlan(
        interval=600, active_interval=10, anchor=0, max_interval=3600, rate=rates.__getitem__
    )
    for t in targets:
        plan.add(t, now=0)
    polls: dict[str, list[float]] = {}
    run_plan(plan, 0, 2000, polls)
    woken = [t.promotion_id for t in targets[10:55]]
    before = plan.poll_interval(woken[0])
    assert before == pytest.approx(1140)
    for pid in woken:
        rates[pid] = 100.0
    after: dict[str, list[float]] = {}
    run_plan(plan, 2000, 2600, after)
    new = plan.poll_interval(woken[0])
    assert new < before / 3
    # Each is polled within the re-plan delay and one new interval, not after its old wait...
    first = [after[pid][0] for pid in woken]
    assert max(first) <= 2000 + REPLAN_SECONDS + new
    # ...and spread by its phase, not all at the moment of the change.
    per_second = Counter(first)
    assert max(per_second.values()) <= 3


# properties of the √-law plan

_weights = st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    _weights,
    st.data(),
    st.floats(0.001, 100),
    st.floats(1, 60),
    st.floats(1, 100),
)
def test_the_water_level_spends_what_it_is_given_within_the_bounds(
    weights: list[float], data: st.DataObject, spend: float, lo: float, span: float
) -> None:
    costs = data.draw(st.lists(st.integers(1, 20), min_size=len(weights), max_size=len(weights)))
    hi = lo * span
    level = water_level(weights, costs, spend, lo, hi)
    intervals = [interval_at(level, w, lo, hi) for w in weights]
    assert all(lo <= t <= hi for t in intervals)
    spent = sum(c / t for c, t in zip(costs, intervals, strict=True))
    floor, ceiling = sum(costs) / hi, sum(costs) / lo
    if spend <= floor:  # not enough for everyone's maximum: the maximum, and turns
        assert intervals == [hi] * len(weights)
    elif spend >= ceiling:
        assert intervals == [lo] * len(weights)
    else:
        assert spent == pytest.approx(spend, rel=1e-6)
    # The heavier a promotion's weight, the shorter its interval.
    for (wa, ta), (wb, tb) in pairwise(sorted(zip(weights, intervals, strict=True))):
        assert wa > wb or ta >= tb


_rates = st.lists(st.floats(1e-9, 1.0), min_size=2, max_size=30)


def planned(rates: list[float], costs: list[int], **bounds: float) -> PollPlan:
    """A plan whose promotions were polled once at 0, each with its rate and pages."""
    targets = [target(n) for n in range(len(rates))]
    by_id = {t.promotion_id: r for t, r in zip(targets, rates, strict=True)}
    plan = PollPlan(active_interval=10, anchor=0, rate=by_id.__getitem__, **bounds)
    for t in targets:
        plan.add(t, now=0)
    for t, cost in zip(plan.take_due(0, limit=len(targets)), costs, strict=True):
        plan.finished(t.promotion_id, 1, active=False, requests=cost)
    plan.plan(2)
    return plan


@settings(max_examples=200, deadline=None)
@given(
    _rates,
    st.data(),
    st.floats(10, 600),
    st.floats(0.01, 50),
    st.floats(1, 10),
)
def test_the_plan_never_spends_above_its_cap_nor_waits_past_its_maximum(
    rates: list[float], data: st.DataObject, interval: float, budget: float, span: float
) -> None:
    costs = data.draw(st.lists(st.integers(1, 8), min_size=len(rates), max_size=len(rates)))
    maximum = interval * span
    plan = planned(rates, costs, interval=interval, budget=budget, max_interval=maximum)
    intervals = [plan.poll_interval(target(n).promotion_id) for n in range(len(rates))]
    assert all(10 <= t <= maximum for t in intervals)
    spent = sum(c / t for c, t in zip(costs, intervals, strict=True))
    cap = min(sum(costs) / interval, budget)
    if cap >= sum(costs) / maximum:  # (otherwise every one at its maximum, taking turns)
        assert spent <= cap * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-9, 1.0), st.integers(2, 30), st.integers(1, 5), st.floats(10, 600))
def test_equal_rates_give_the_uniform_schedule(
    rate: float, promotions: int, cost: int, interval: float
) -> None:
    plan = planned([rate] * promotions, [cost] * promotions, interval=interval)
    assert {plan.poll_interval(target(n).promotion_id) for n in range(promotions)} == {interval}
    # With a budget short of it: every one as often as the budget allows, as before.
    budget = promotions * cost / interval / 2
    short = planned([rate] * promotions, [cost] * promotions, interval=interval, budget=budget)
    intervals = [short.poll_interval(target(n).promotion_id) for n in range(promotions)]
    longest = max(900, interval)  # (the default maximum: the budget wins over it, in turns)
    assert intervals == pytest.approx([min(2 * interval, longest)] * promotions)


@settings(max_examples=200, deadline=None)
@given(_rates, st.floats(10, 600))
def test_a_hot_promotion_gets_a_shorter_interval_than_a_cold_one(
    rates: list[float], interval: float
) -> None:
    plan = planned(rates, [1] * len(rates), interval=interval, max_interval=100 * interval)
    intervals = [plan.poll_interval(target(n).promotion_id) for n in range(len(rates))]
    hottest, coldest = rates.index(max(rates)), rates.index(min(rates))
    assert intervals[hottest] <= intervals[coldest]
    if max(rates) > 4 * min(rates) and intervals[coldest] < 100 * interval:
        # (√4 = twice the poll rate, unless the hot one is held at the minimum)
        assert intervals[hottest] < intervals[coldest] or intervals[hottest] == pytest.approx(10)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-8, 1e-2), min_size=2, max_size=12), st.randoms())
def test_no_promotion_waits_past_its_maximum_however_its_rate_moves(
    rates: list[float], rng: random.Random
) -> None:
    by_id = {target(n).promotion_id: r for n, r in enumerate(rates)}
    plan = PollPlan(
        interval=60, active_interval=10, anchor=0, max_interval=600, rate=by_id.__getitem__
    )
    for n in range(len(rates)):
        plan.add(target(n), now=0)
    polls: dict[str, list[float]] = {}
    for tick in range(3600):
        if tick % 97 == 0:  # rates move: jobs come and go
            for pid, rate in by_id.items():
                by_id[pid] = rate * rng.choice([0.01, 1, 100])
        for t in plan.take_due(float(tick), limit=100):
            polls.setdefault(t.promotion_id, []).append(float(tick))
            plan.finished(t.promotion_id, float(tick), active=False, requests=rng.randint(1, 3))
    for times in polls.values():
        assert max(b - a for a, b in pairwise([*times, 3599.0])) <= 600 + 1


def test_once_every_baseline_is_in_the_intervals_are_planned_from_what_they_found() -> None:
    # A start without state knows no rate until each promotion's first poll has read its jobs.
    targets = [target(n) for n in range(10)]
    rates = {t.promotion_id: 1.0 for t in targets}
    plan = PollPlan(interval=60, active_interval=10, anchor=0, rate=rates.__getitem__)
    for t in targets:
        plan.add(t, now=0)
    polled = plan.take_due(0, limit=10)
    hot = targets[0].promotion_id
    rates[hot] = 100.0  # what its first poll found
    for t in polled:
        plan.finished(t.promotion_id, now=1, active=False)
    plan.take_due(2, limit=10)  # long before the next periodic plan
    assert plan.poll_interval(hot) == pytest.approx(60 * 19 / 100)
    assert plan.poll_interval(targets[1].promotion_id) == pytest.approx(60 * 19 / 10)


def test_a_promotion_that_cools_gives_its_slot_back_at_once() -> None:
    quiet, busy = target(1), target(2)
    rates = {quiet.promotion_id: 1.0, busy.promotion_id: 1.0}
    plan = PollPlan(
        interval=60, active_interval=10, anchor=0, max_interval=3600, rate=rates.__getitem__
    )
    polls: dict[str, list[float]] = {}
    for t in (quiet, busy):
        plan.add(t, now=0)
    run_plan(plan, 0, 1000, polls)
    assert plan.poll_interval(quiet.promotion_id) == 60
    rates[busy.promotion_id] = 10_000.0  # all the jobs go there now
    plan.plan(1000)  # (the next periodic plan)
    later: dict[str, list[float]] = {}
    run_plan(plan, 1000, 1800, later)
    # √10,000 = 100 times the other's poll rate: 101 k = 2/60 gives 30.3 s and 3,030 s. The
    # quiet one's next poll moves out (a quarter of its new interval at least), rather than
    # spending the slot it had at 1,019 s.
    assert plan.poll_interval(quiet.promotion_id) == pytest.approx(3030)
    assert later.get(quiet.promotion_id) is None
    assert len(later[busy.promotion_id]) >= 800 / 30.3 - 2


def test_a_poll_that_ran_late_keeps_its_next_slot() -> None:
    # Under a busy budget polls start late; one that ends 6 s after its slot, every 10 s, must
    # not lose the next slot (half an interval of margin made it skip to the one after).
    plan = PollPlan(interval=10, active_interval=10, anchor=0)
    t = target(1)
    plan.add(t, now=0)
    plan.take_due(0, limit=1)
    plan.finished(t.promotion_id, now=0, active=False)
    slot = next_due(2.5, 0, 10, phase_of(t.promotion_id))
    assert plan.take_due(slot, limit=1) == [t]
    plan.finished(t.promotion_id, now=slot + 6, active=False)
    assert plan.take_due(slot + 9.99, limit=1) == []
    assert plan.take_due(slot + 10, limit=1) == [t]
