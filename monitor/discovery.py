"""Which promotions this replica watches: explicit ones, discovered ones, and its shard of both."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from monitor.client import ElasticPathClient, JobsTarget
from monitor.models import PromotionKind, parse_timestamp
from monitor.names import promotion_name
from monitor.settings import DiscoverySettings, Settings


def shard_of(promotion_id: str, shard_count: int) -> int:
    """The shard that owns a promotion; stable across processes, versions and restarts."""
    # A different personalisation from the poll phase hash: otherwise one shard's promotions
    # would all share a narrow band of phases and bunch their polls.
    digest = hashlib.blake2b(promotion_id.encode(), digest_size=8, person=b"shard").digest()
    return int.from_bytes(digest, "big") % shard_count


# A bare date names a calendar day without a zone: it has ended everywhere only once the day is
# over in the last zone to leave it (UTC-12), with a margin to UTC+14's count: date + 1 day + 14 h.
_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BARE_DATE_GRACE_SECONDS = (24 + 14) * 3600.0


def promotion_end(value: object) -> float | None:
    """When a promotion's `end` (a date-time, or a bare date) has passed, in epoch seconds."""
    start_of_day = parse_timestamp(value)
    if start_of_day is None or not isinstance(value, str):
        return None
    if _BARE_DATE.match(value.strip()):
        return start_of_day + _BARE_DATE_GRACE_SECONDS
    return start_of_day


def wanted(promotion: Mapping[str, object], rules: DiscoverySettings, now: float) -> bool:
    """Whether a listed promotion should be watched under the discovery rules."""
    if not rules.include_disabled and promotion.get("enabled") is False:
        return False
    if not rules.include_expired:
        end = promotion_end(promotion.get("end"))
        if end is not None and end + rules.expired_grace_seconds < now:
            return False
    if rules.name_pattern is not None:
        name = promotion.get("name")
        if not isinstance(name, str) or re.search(rules.name_pattern, name) is None:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Watchlist:
    """The promotions one replica polls, keyed by id, and where each came from."""

    targets: Mapping[str, JobsTarget]
    discovered: frozenset[str]
    # The name of every listed promotion this replica owns, explicit ones included.
    names: Mapping[str, tuple[PromotionKind, str]] = field(default_factory=dict)
    # Every id the lists showed this replica, named or not.
    listed: frozenset[str] = frozenset()
    # False when a list could not be read whole: a promotion missing from it may still exist,
    # so it must not be dropped (and its state lost) on this evidence.
    complete: bool = True
    # When each listed promotion was last created or updated (meta.timestamps, where the list
    # gives them): a campaign being set up is where jobs are about to happen.
    touched: Mapping[str, float] = field(default_factory=dict)


class Discovery:
    """Builds the watchlist: explicit entries win (e.g. for their filter), then discovered ones."""

    def __init__(self, client: ElasticPathClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self.shard_count = settings.sharding.shard_count
        self.shard_index = settings.sharding.index

    def owns(self, promotion_id: str) -> bool:
        return shard_of(promotion_id, self.shard_count) == self.shard_index

    def explicit(self) -> dict[str, JobsTarget]:
        return {
            p.id: self._client.target(p.id, p.kind, p.filter)
            for p in self._settings.promotions
            if self.owns(p.id)
        }

    async def discover(self, now: float, active: Callable[[str], bool]) -> Watchlist:
        """List the store's promotions; raises ApiError if any list call fails (keep the old).

        `active`: whether the monitor holds a pending or processing job of a promotion. One that
        stops being wanted (its end passed, it was switched off, renamed) is watched until its
        jobs have finished: a job queued before the end can still fail after it.
        """
        explicit = self.explicit()
        targets = dict(explicit)
        names: dict[str, tuple[PromotionKind, str]] = {}
        listed: set[str] = set()
        touched: dict[str, float] = {}
        complete = True
        rules = self._settings.discovery
        for kind in rules.kinds:
            promotions, listing = await self._client.list_promotions(kind)
            complete = complete and listing.incomplete is None
            for promotion in promotions:
                raw_id = promotion.get("id")
                pid = _canonical(raw_id) if isinstance(raw_id, str) else None
                if pid is None or not self.owns(pid):
                    continue
                known = pid in targets
                if not known and not wanted(promotion, rules, now) and not active(pid):
                    continue
                listed.add(pid)
                updated = last_touched(promotion)
                if updated is not None:
                    touched[pid] = updated
                name = promotion_name(promotion)
                if name is not None:
                    names[pid] = (kind, name)
                if not known:
                    targets[pid] = self._client.target(pid, kind)
        discovered = frozenset(targets.keys() - explicit.keys())
        return Watchlist(targets, discovered, names, frozenset(listed), complete, touched)


def last_touched(promotion: Mapping[str, object]) -> float | None:
    """The later of a listed promotion's meta.timestamps.created_at and updated_at, if any."""
    meta = promotion.get("meta")
    stamps = meta.get("timestamps") if isinstance(meta, Mapping) else None
    if not isinstance(stamps, Mapping):
        return None
    times = [parse_timestamp(stamps.get(key)) for key in ("created_at", "updated_at")]
    return max((t for t in times if t is not None), default=None)


def _canonical(raw: str) -> str | None:
    # Ids from the API go into URL paths too: the same UUID rule as configured ids.
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None
