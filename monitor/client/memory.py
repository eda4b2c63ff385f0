"""What each promotion's job pages looked like at its last successful poll.

Most polls of most promotions see nothing new: a page whose bytes are the same as last time is
not decoded at all, and its jobs are taken from here. The poller owns this memory (it decides
what a promotion's history is); the client only reads and fills it.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass

from monitor.models import Job

# A body's length and in-process hash: equal keys mean the same bytes (hash() is 64-bit SipHash;
# with the length also equal a collision is not a practical concern). Never persisted: the
# hash seed differs per process.
BodyKey = tuple[int, int]


def body_key(body: bytes) -> BodyKey:
    return (len(body), hash(body))


@dataclass(frozen=True, slots=True)
class SeenPage:
    """What one page of a promotion's jobs gave at the last successful poll."""

    key: BodyKey
    total: int | None
    ids: array[int]
    jobs: tuple[Job, ...]
    skipped: tuple[str, ...]


class PageMemory:
    """The pages of each promotion's last successful poll, by offset."""

    def __init__(self) -> None:
        self._pages: dict[str, dict[int, SeenPage]] = {}

    def of(self, promotion_id: str) -> Mapping[int, SeenPage]:
        return self._pages.get(promotion_id, {})

    def remember(self, promotion_id: str, pages: dict[int, SeenPage]) -> None:
        # Only a poll that read every page calls this (a failure raised before it).
        self._pages[promotion_id] = pages

    def forget(self, promotion_id: str) -> None:
        self._pages.pop(promotion_id, None)
