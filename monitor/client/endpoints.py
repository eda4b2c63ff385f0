"""The Elastic Path endpoints the monitor reads, and one promotion's jobs URL built once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from yarl import URL

from monitor.models import PromotionKind

# Each kind's path segment. The endpoint labels that name its requests in metrics are the kind
# itself (one promotion), `<kind>s` (the list) and `<kind>_jobs`.
SEGMENT: Final = {
    PromotionKind.PROMOTION: "promotions",
    PromotionKind.RULE_PROMOTION: "rule-promotions",
}


@dataclass(frozen=True, slots=True)
class JobsTarget:
    """One promotion to poll, with its URL and query built once."""

    promotion_id: str
    kind: PromotionKind
    url: URL
    endpoint: str
    params: Mapping[str, str]

    @classmethod
    def build(
        cls,
        base_url: str,
        promotion_id: str,
        kind: PromotionKind,
        job_filter: str | None,
        limit: int,
    ) -> JobsTarget:
        params = {"page[limit]": str(limit)}
        if job_filter:
            params["filter"] = job_filter
        url = URL(base_url) / "v2" / SEGMENT[kind] / promotion_id / "jobs"
        return cls(promotion_id, kind, url, f"{kind}_jobs", params)

    def narrowed(self, job_filter: str) -> JobsTarget:
        """The same jobs list, filtered by `job_filter` too (conditions joined by ":" all hold)."""
        wanted = self.params.get("filter")
        combined = f"{wanted}:{job_filter}" if wanted else job_filter
        return replace(self, params={**self.params, "filter": combined})
