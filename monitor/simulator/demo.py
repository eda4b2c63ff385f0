"""A realistic store for the demo and `python -m monitor.simulator`: every kind, type and status."""

from __future__ import annotations

from monitor.simulator.rendering import Kind, iso_millis
from monitor.simulator.store import JOB_TYPES, Store

_NAMES = (
    "Summer sale 10% off",
    "Free shipping over $50",
    "Welcome code",
    "Black Friday 25%",
    "Loyalty reward",
    "Clearance bundle",
    "Holiday gift card bonus",
)
# Within the API's maximum of 1000 codes a job.
_DEMO_CODES: dict[Kind, tuple[int, ...]] = {
    "promotion": (100, 500, 750, 1000),
    "rule_promotion": (100, 250, 500, 1000),
}
_TERMINAL = ("completed", "failed", "cancelled")
_ACTIVE = ("pending", "processing", "cancelling")


def populate_demo(store: Store, promotions: int, jobs_per_promotion: int) -> list[str]:
    """Fill the store with a realistic mix of promotions and jobs; returns the promotion ids.

    Ids and failure messages come from the store's seeded stream, in a fixed order, so a seed
    always serves the same promotions (config/demo.yaml names those of seed 1).
    """
    now = store.now()
    ids: list[str] = []
    finished = 0  # counts terminal jobs across promotions, so every type/status pair appears
    for i in range(promotions):
        # every third is a rule promotion, and the last one too if none came before it
        kind: Kind = (
            "rule_promotion" if i % 3 == 2 or (i == promotions - 1 and i < 2) else "promotion"
        )
        ended = i % 7 == 5
        end = iso_millis(now - 86_400 if ended else now + 90 * 86_400)
        pid = store.add_promotion(kind, name=_NAMES[i % len(_NAMES)], enabled=i % 5 != 4, end=end)
        ids.append(pid)
        for j in range(jobs_per_promotion):
            # the last job of each promotion is its active one, as the real API allows only one
            if j == jobs_per_promotion - 1:
                status, job_type = _ACTIVE[i % 3], JOB_TYPES[i % 2]
            else:
                status, job_type = _TERMINAL[finished % 3], JOB_TYPES[(finished // 3) % 2]
                finished += 1
            codes = _DEMO_CODES[kind][(i + j) % 4]
            created = now - (jobs_per_promotion - j) * 3600.0 - i * 60.0
            error = store.failure_message(job_type, codes) if status == "failed" else None
            store.add_job(
                pid,
                job_type=job_type,
                status=status,
                error=error,
                created_at=created,
                updated_at=created if status == "pending" else created + 90.0,
                number_of_codes=codes,
                name="job" if job_type == "code_generate" else "Export codes",
            )
    return ids
