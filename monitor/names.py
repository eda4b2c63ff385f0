"""Promotion names, so that a person paged reads "Spring sale", not a UUID: from the discovery
lists, else one lookup each (`GET /v2/promotions/:id`, `/v2/rule-promotions/:id`) at start and
every discovery interval. A lookup that fails keeps the last name and never holds up a poll."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from monitor.client import ApiError, ElasticPathClient, JobsTarget
from monitor.models import PromotionKind, single_line

# Names go into a label value and log lines: one line, bounded.
MAX_NAME_CHARS: Final = 200


def promotion_name(promotion: Mapping[str, object]) -> str | None:
    """The usable name of a listed or fetched promotion object, or None."""
    name = promotion.get("name")
    return (single_line(name, MAX_NAME_CHARS) or None) if isinstance(name, str) else None


class PromotionNames:
    """The last known name and kind of each watched promotion."""

    def __init__(self) -> None:
        self._names: dict[str, tuple[PromotionKind, str]] = {}

    def get(self, promotion_id: str) -> str | None:
        known = self._names.get(promotion_id)
        return known[1] if known is not None else None

    def set(self, promotion_id: str, kind: PromotionKind, name: str) -> None:
        self._names[promotion_id] = (kind, name)

    def forget(self, promotion_id: str) -> None:
        self._names.pop(promotion_id, None)

    def __iter__(self) -> Iterator[tuple[str, PromotionKind, str]]:
        return iter([(pid, kind, name) for pid, (kind, name) in self._names.items()])


class NameLookups:
    """Fetches the names no discovery list gave, one request at a time, so that polls waiting
    for the request budget never queue behind a burst of lookups."""

    def __init__(self, client: ElasticPathClient, names: PromotionNames) -> None:
        self._client = client
        self._names = names
        self._listed: set[str] = set()  # in the last discovery run's lists: no lookup needed
        self._failing: set[str] = set()  # warned once, until a lookup works again

    def listed(self, found: Mapping[str, tuple[PromotionKind, str]], ids: Iterable[str]) -> None:
        """What a discovery run read: the names in the lists, and every id listed (a promotion
        listed without a name has none to look up either)."""
        self._listed = set(ids)
        for pid, (kind, name) in found.items():
            self._names.set(pid, kind, name)

    async def look_up(
        self, targets: Iterable[JobsTarget], watched: Callable[[str], bool]
    ) -> list[tuple[str, ApiError]]:
        """Look up the names no list gave (a failed lookup keeps the last); returns the lookups
        that began to fail: each is news once, until one works again."""
        targets = list(targets)
        failed: list[tuple[str, ApiError]] = []
        self._failing &= {target.promotion_id for target in targets}  # (forget the unwatched)
        for target in targets:
            pid = target.promotion_id
            if pid in self._listed:
                continue
            try:
                promotion = await self._client.get_promotion(target.kind, pid)
            except ApiError as exc:
                if pid not in self._failing:
                    self._failing.add(pid)
                    failed.append((pid, exc))
                continue
            self._failing.discard(pid)
            name = promotion_name(promotion)
            if name is not None and watched(pid):  # (it may have gone while we asked)
                self._names.set(pid, target.kind, name)
        return failed
