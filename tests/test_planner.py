"""Adaptive polling: intervals, spread, active first under a tight budget; clock injected."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.client import JobsTarget
from monitor.models import PromotionKind
from monitor.planner import PollPlan, next_due, phase_of

BASE = "https://useast.api.elasticpath.com"


def target(n: int) -> JobsTarget:
    pid = str(uuid.UUID(int=n + 1, version=4))
    return JobsTarget.build(BASE, pid, PromotionKind.PROMOTION, None, 100)


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
        # Never sooner than half an interval after the previous poll, then on its grid.
        expected = next_due(1 + 30, 0, 60, phase_of(t.promotion_id))
        assert seen[t.promotion_id] == pytest.approx(expected, abs=1.0)
        assert seen[t.promotion_id] >= 31


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
    plan = PollPlan(interval=60, active_interval=10, anchor=0)
    busy = [target(n) for n in range(3)]
    idle = target(50)
    for t in [*busy, idle]:
        plan.add(t, now=0)
    for t in plan.take_due(0, limit=10):
        plan.finished(t.promotion_id, now=0, active=t in busy)
    newcomer = target(99)  # watched later (e.g. discovered): no baseline yet
    plan.add(newcomer, now=100)
    # Much later everything is due at once: the idle, already-known promotion comes last,
    # after the active ones and after the one we have never seen.
    ranked = [t.promotion_id for t in plan.take_due(5000, limit=10)]
    assert ranked[-1] == idle.promotion_id
    assert set(ranked[:-1]) == {t.promotion_id for t in [*busy, newcomer]}
