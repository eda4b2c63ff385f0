"""One request budget for the whole process, shared with every other client of the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RequestBudget:
    """Spaces requests evenly at `rate` per second and slows down while the store says 429.

    Elastic Path's limit is shared by every client of the store, so no burst (a leaky bucket's
    allowance): in any one-second window at most `rate` requests start. Slots are granted one at
    a time (FIFO), measured from the grant, so a loop that stalls cannot release a bunch at once.
    """

    # Grants are spaced this much wider than 1/rate, so the few milliseconds of jitter between
    # a grant and the request reaching the store cannot push any one-second window over `rate`.
    SAFETY = 1.02

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        floor_fraction: float = 0.05,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.max_rate = rate
        self._rate = rate
        self._floor = rate * floor_fraction
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._turn = asyncio.Lock()

    @property
    def rate(self) -> float:
        """The rate in force now (below max_rate after 429s)."""
        return self._rate

    async def acquire(self) -> float:
        """Wait for the next free slot; returns the seconds waited."""
        started = self._clock()
        async with self._turn:
            wait = self._next_slot - self._clock()
            if wait > 0:
                await self._sleep(wait)
            granted = self._clock()
            self._next_slot = granted + self.SAFETY / self._rate
        return granted - started

    def slow_down(self) -> None:
        """Halve the rate after a 429: the store is over its limit and we must not keep it there."""
        self._rate = max(self._floor, self._rate / 2)

    def recover(self) -> None:
        """Creep back towards max_rate after a success; a few percent a request, not all at once."""
        if self._rate < self.max_rate:
            self._rate = min(self.max_rate, self._rate + self.max_rate * 0.02)
