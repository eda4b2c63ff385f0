"""How often each promotion gets new jobs: its jobs' created_at, counted with exponential decay.

The planner polls where jobs happen (monitor.planner); this is its evidence. It is derived from
the jobs the state holds (kept for the retention period), so it survives restarts without a
record of its own. Pure: every time is passed in.
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
# get none for months), added to every estimate, so none is bet to get nothing.
PRIOR: Final = 1 / (90 * DAY)
# A promotion discovery lists as just created or updated (a campaign being set up) starts as if it
# got a job an hour, and cools as any other.
WARM: Final = 24 / DAY


class JobRates:
    """Jobs per second of each promotion, from the created_at of the jobs it holds."""

    def __init__(
        self,
        *,
        window: float,
        time_constant: float = TIME_CONSTANT,
        prior: float = PRIOR,
        warm: float = WARM,
    ) -> None:
        self.prior = prior
        self._tau = time_constant
        self._window = window
        # Jobs older than the window (the state's retention) are gone, so the count covers
        # tau * (1 - e^(-window/tau)) seconds of history, not tau: a short retention still
        # gives an unbiased rate.
        self._exposure = time_constant * -math.expm1(-window / time_constant)
        self._warm = warm * self._exposure  # as a number of jobs at the moment of the update
        # promotion -> (decayed count of its jobs and warmth, the time that count is as of)
        self._evidence: dict[str, tuple[float, float]] = {}
        self._warmed: dict[str, float] = {}  # promotion -> the update time already counted

    def held(self, snapshot: PromotionSnapshot, now: float) -> None:
        """The jobs the state now holds of a promotion."""
        self.observe(snapshot.promotion_id, (j.created_at for j in snapshot.jobs.values()), now)

    def observe(self, promotion_id: str, created: Iterable[float | None], now: float) -> None:
        """Jobs of a promotion by their created_at (an unknown one counts none)."""
        horizon = now - self._window
        count = math.fsum(
            math.exp(-max(0.0, now - at) / self._tau)
            for at in created
            if at is not None and at >= horizon
        )
        warmed = self._warmed.get(promotion_id)
        if warmed is not None:
            count += self._warm * math.exp(-max(0.0, now - warmed) / self._tau)
        self._evidence[promotion_id] = (count, now)

    def warm(self, promotion_id: str, updated_at: float, now: float) -> None:
        """Discovery saw the promotion created or updated at `updated_at`: it starts warm.

        The same update told again (each discovery lists it) counts once; warmth from an update
        long past has decayed to nothing."""
        previous = self._warmed.get(promotion_id)
        if previous is not None and updated_at <= previous:
            return
        self._warmed[promotion_id] = updated_at
        count = self._count(promotion_id, now)
        if previous is not None:  # the newer update replaces the older one's warmth
            count -= self._warm * math.exp(-max(0.0, now - previous) / self._tau)
        count += self._warm * math.exp(-max(0.0, now - updated_at) / self._tau)
        self._evidence[promotion_id] = (max(0.0, count), now)

    def rate(self, promotion_id: str, now: float) -> float:
        """Estimated new jobs per second now, the prior included."""
        return self.prior + self._count(promotion_id, now) / self._exposure

    def _count(self, promotion_id: str, now: float) -> float:
        count, at = self._evidence.get(promotion_id, (0.0, now))
        return count * math.exp(-max(0.0, now - at) / self._tau)

    def forget(self, promotion_id: str) -> None:
        self._evidence.pop(promotion_id, None)
        self._warmed.pop(promotion_id, None)
