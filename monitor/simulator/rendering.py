"""How the store's promotions and jobs look in an answer: the API's field names and time formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Kind = Literal["promotion", "rule_promotion"]
# Documented variants of a normal answer (docs/elastic-path-api.md), not faults.
ResultKey = Literal["result", "generate_result"]
# How a job's meta.timestamps are written. Not faults: nothing marks them required or says what
# they must be. "missing": no meta.timestamps; "zero": Go's zero time (a valid date-time);
# "frozen": updated_at stays created_at after a status change, as in Promotions Builder's own
# cancel example.
Timestamps = Literal["kept", "missing", "zero", "frozen"]
ZERO_TIME = "0001-01-01T00:00:00Z"

_CODE_PARAMETERS = {"max_uses_per_code": 1, "code_length": 8, "code_prefix": "promo-"}
# Each API names its own consume units: PS per_cart/per_item, PB per_application/per_checkout.
_CONSUME_UNIT: dict[Kind, str] = {"promotion": "per_cart", "rule_promotion": "per_checkout"}
# A minimal valid Promotions Standard `schema` for a cart fixed discount ($10 off).
_FIXED_DISCOUNT_SCHEMA: dict[str, Any] = {"currencies": [{"amount": 1000, "currency": "USD"}]}
# A minimal Promotions Builder rule set: 10% off carts of $50 or more.
_RULE_SET: dict[str, Any] = {
    "rules": {"strategy": "cart_total", "operator": "gte", "args": [5000]},
    "actions": [{"strategy": "cart_discount", "args": ["percent", 10]}],
}


@dataclass
class Job:
    id: str
    job_type: str
    name: str
    status: str
    number_of_codes: int
    error: str | None
    created_at: float
    updated_at: float
    # Codes a completed code_generate job made; None means all it was asked for.
    generated: int | None = None
    # It ran (reached processing): a cancel before that removes nothing, having made nothing.
    started: bool = False


@dataclass
class Promotion:
    id: str
    kind: Kind
    name: str
    enabled: bool
    start: str
    end: str
    promotion_type: str
    automatic: bool
    created_at: float = 0.0
    updated_at: float = 0.0
    # dict keeps insertion order, which is the order the API answers in
    jobs: dict[str, Job] = field(default_factory=dict)


def render_job(
    promotion: Promotion, job: Job, result_key: ResultKey, timestamps: Timestamps = "kept"
) -> dict[str, Any]:
    rule = promotion.kind == "rule_promotion"
    stamp = iso_nanos if rule else iso_millis
    rendered: dict[str, Any] = {
        "type": "promotion_job",
        "id": job.id,
        "rule_promotion_id" if rule else "promotion_id": promotion.id,
        "job_type": job.job_type,
        "name": job.name,
    }
    if job.job_type == "code_generate":
        rendered["parameters"] = {
            "number_of_codes": job.number_of_codes,
            "consume_unit": _CONSUME_UNIT[promotion.kind],
            **_CODE_PARAMETERS,
        }
        result = _code_result(job)
        if result is not None:
            rendered[result_key] = result
    rendered["status"] = job.status
    if job.error is not None:
        rendered["error"] = job.error
    if timestamps == "missing":
        return rendered
    created, updated = (
        (ZERO_TIME, ZERO_TIME)
        if timestamps == "zero"
        else (
            stamp(job.created_at),
            stamp(job.created_at if timestamps == "frozen" else job.updated_at),
        )
    )
    rendered["meta"] = {"timestamps": {"created_at": created, "updated_at": updated}}
    return rendered


def render_promotion(promotion: Promotion) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "type": promotion.kind,
        "id": promotion.id,
        "name": promotion.name,
        "description": f"{promotion.name} (simulated)",
        "enabled": promotion.enabled,
        "start": promotion.start,
        "end": promotion.end,
        "automatic": promotion.automatic,
    }
    # Promotions Standard requires `schema`; a Builder promotion carries a `rule_set` instead.
    if promotion.kind == "promotion":
        # (promotion_type is Promotions Standard's; Builder describes no such field)
        rendered["promotion_type"] = promotion.promotion_type
        rendered["schema"] = _FIXED_DISCOUNT_SCHEMA
    else:
        rendered["rule_set"] = _RULE_SET
        # PB's RulePromotionBaseAttributes require these; Promotions Standard's list shows none.
        rendered["meta"] = {
            "timestamps": {
                "created_at": iso_millis(promotion.created_at),
                "updated_at": iso_millis(promotion.updated_at),
            }
        }
    return rendered


def _code_result(job: Job) -> dict[str, int] | None:
    """The codes a finished code_generate job made (and a cancel removed)."""
    if job.status == "completed":
        made = job.number_of_codes if job.generated is None else job.generated
        return {"generated": made, "deleted": 0}
    if job.status == "cancelled":
        # a cancel of a running job is taken to reach it halfway, and removes what it had made
        made = job.number_of_codes // 2 if job.started else 0
        return {"generated": made, "deleted": made}
    return None


# Promotions Standard stamps milliseconds, Promotions Builder nanoseconds.


def iso_millis(at: float) -> str:
    seconds, millis = divmod(round(at * 1000), 1000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def iso_nanos(at: float) -> str:
    seconds, nanos = divmod(round(at * 1_000_000_000), 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def checked_time(text: str) -> datetime:
    parsed = parse_time(text)
    if parsed is None:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    return parsed
