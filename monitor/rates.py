"""How often each promotion gets new jobs: its jobs' created_at, counted with exponential decay.

The planner's evidence (monitor.planner), derived from the jobs the state holds, so it survives
restarts without a record of its own. Pure: every time is passed in. Most promotions are dormant:
a stray job now and then, at the rate the watched promotions without jobs show (prior). So a
promotion's jobs count as far as they tell it from a dormant one: by the odds of "active at the
rate its jobs show" against "dormant", the prior odds from the share of promotions with no job
that dormancy does not explain. One job among thousands of quiet promotions is mostly chance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from monitor.models import PromotionSnapshot

DAY: Final = 86_400.0
# A job three days old weighs 1/e of one just created: a promotion that goes quiet falls to a
# third of its rate in three days, a tenth in a week. A shorter memory cools faster but guesses
# worse where jobs are few (tests/benchmarks/polling.py: 2 days lost 2% of the detection delay).
TIME_CONSTANT: Final = 3 * DAY
# What a promotion without jobs in the retention window is assumed to get (a job a quarter: most
# get none for months), added to every estimate, so none is bet to get nothing; until the watched
# promotions say otherwise, with the weight of SHRINK of them (prior).
PRIOR: Final = 1 / (90 * DAY)
SHRINK: Final = 100
# A promotion discovery lists as just created or updated (a campaign being set up) starts as if it
# got a job an hour, and cools as any other.
WARM: Final = 24 / DAY


class JobRates:
    """Jobs per second of each promotion, from the created_at of the jobs it holds."""

    def __init__(self, *, window: float) -> None:
        self._window = window
        # Jobs older than the window (the state's retention) are gone, so the count covers
        # τ(1 - e^(-window/τ)) seconds of history (τ the time constant), not τ: a short
        # retention still gives an unbiased rate.
        self._exposure = TIME_CONSTANT * -math.expm1(-window / TIME_CONSTANT)
        self._warm = WARM * self._exposure  # as a number of jobs at the moment of the update
        # promotion -> (decayed count of its jobs, the time that count is as of, jobs counted)
        self._evidence: dict[str, tuple[float, float, int]] = {}
        self._quiet = self._single = 0  # promotions whose last count found no job, one job
        self._warmed: dict[str, float] = {}  # promotion -> its latest update discovery listed

    def held(self, snapshot: PromotionSnapshot, now: float) -> None:
        """The jobs the state now holds of a promotion."""
        self.observe(snapshot.promotion_id, (j.created_at for j in snapshot.jobs.values()), now)

    def observe(self, promotion_id: str, created: Iterable[float | None], now: float) -> None:
        """Jobs of a promotion by their created_at (an unknown one counts none)."""
        horizon = now - self._window
        ages = [max(0.0, now - at) for at in created if at is not None and at >= horizon]
        previous = self._evidence.get(promotion_id)
        self._quiet += (not ages) - (previous is not None and not previous[2])
        self._single += (len(ages) == 1) - (previous is not None and previous[2] == 1)
        count = math.fsum(math.exp(-age / TIME_CONSTANT) for age in ages)
        self._evidence[promotion_id] = (count, now, len(ages))

    def warm(self, promotion_id: str, updated_at: float) -> None:
        """Discovery saw the promotion created or updated at `updated_at`: it starts warm.

        The same update told again (each discovery lists it) counts once, a newer one replaces
        it; warmth from an update long past has decayed to nothing."""
        self._warmed[promotion_id] = max(updated_at, self._warmed.get(promotion_id, updated_at))

    def rate(self, promotion_id: str, now: float) -> float:
        """Estimated new jobs per second now, the prior included."""
        count, at, jobs = self._evidence.get(promotion_id, (0.0, now, 0))
        count *= self._belief(jobs) * math.exp(-max(0.0, now - at) / TIME_CONSTANT)
        warmed = self._warmed.get(promotion_id)
        if warmed is not None:
            count += self._warm * math.exp(-max(0.0, now - warmed) / TIME_CONSTANT)
        return self.prior() + count / self._exposure

    def prior(self) -> float:
        """What a promotion without jobs in the window gets: Robbins' empirical Bayes, N1 / N0
        jobs a window (promotions with one job, with none), shrunk towards PRIOR."""
        return (
            (self._single + SHRINK * PRIOR * self._window) / (self._quiet + SHRINK) / self._window
        )

    def _belief(self, jobs: int) -> float:
        """The probability that a promotion with `jobs` in the window is not dormant."""
        if not jobs:
            return 0.0
        # The share of promotions active: those with no job, less the dormant ones expected to
        # have none, against all; at least one promotion's share, so evidence can still tell.
        counted, dormant = len(self._evidence), self.prior() * self._window
        active = max(1 - self._quiet * math.exp(dormant) / counted, 1 / (counted + 1))
        # log of Poisson(jobs; jobs) / Poisson(jobs; dormant), never below 0: active at its own
        # rate or not.
        evidence = jobs * math.log(jobs / dormant) - jobs + dormant
        return 1 / (1 + (1 - active) / active * math.exp(-evidence))

    def forget(self, promotion_id: str) -> None:
        gone = self._evidence.pop(promotion_id, None)
        self._quiet -= gone is not None and not gone[2]
        self._single -= gone is not None and gone[2] == 1
        self._warmed.pop(promotion_id, None)
