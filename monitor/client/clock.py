"""The store's clock, estimated from the `Date` of its answers: the store's timestamps are
judged by it, never by the pod's (the two may be minutes apart)."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Final

# A Date further off than this is a broken header (or a cache's), not a clock.
ABSURD_SKEW: Final = 86_400.0
# A Date is cut to the second: a skew estimated below this is noise, not a clock.
RESOLUTION: Final = 1.0
# Each answer's Date moves the estimate this far toward it: one answer cannot jerk it about.
SMOOTHING: Final = 0.2


def http_date(value: str | None) -> float | None:
    """An HTTP-date as epoch seconds; None when absent or not a date."""
    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class StoreClock:
    """How far the store's clock is ahead of the pod's (seconds; 0 until a Date is seen)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.skew: float | None = None

    def observe(self, date: str | None) -> float | None:
        """Take one answer's Date into the estimate; returns it, or None when absent or absurd."""
        stamp = http_date(date)
        # Date is cut to the second: the store's time was half a second past it, on average.
        sample = None if stamp is None else stamp + 0.5 - self._clock()
        if sample is None or abs(sample) > ABSURD_SKEW:
            return None
        self.skew = sample if self.skew is None else self.skew + SMOOTHING * (sample - self.skew)
        return stamp

    def store_time(self, pod_time: float) -> float:
        """A moment of the pod's clock, read on the store's. A skew within the Date's resolution
        (a second) cannot be told from none: taken as none, so clocks that agree add no error."""
        skew = self.skew or 0.0
        return pod_time + (skew if abs(skew) >= RESOLUTION else 0.0)

    def now(self) -> float:
        """The store's time now, as estimated."""
        return self.store_time(self._clock())
