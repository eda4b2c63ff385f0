"""The names of watched promotions, so that a person paged reads "Spring sale", not a UUID.

Names come from the discovery lists, or, for configured promotions, from one lookup each
(`GET /v2/promotions/:id`, `/v2/rule-promotions/:id`) at start and at the discovery interval.
A name is a convenience: a lookup that fails keeps the last name and never holds up a poll.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from monitor.models import PromotionKind, single_line

# Names go into a label value and log lines: one line, bounded.
MAX_NAME_CHARS: Final = 200


def promotion_name(promotion: Mapping[str, object]) -> str | None:
    """The usable name of a listed or fetched promotion object, or None."""
    name = promotion.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    return single_line(name, MAX_NAME_CHARS)


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

    def __contains__(self, promotion_id: object) -> bool:
        return promotion_id in self._names

    def __iter__(self) -> Iterator[tuple[str, PromotionKind, str]]:
        return iter([(pid, kind, name) for pid, (kind, name) in self._names.items()])
