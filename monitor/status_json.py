"""/status.json: the status view as a document of plain values (its shape is in the README).

Rows are their dataclasses dumped as they are; moments (epoch seconds) are written as ISO 8601 UTC.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from typing import Any, Final

from monitor.recent_activity import DELAY_WINDOW_SECONDS, PollRecord
from monitor.status import ATTENTION, StatusView

# The fields of the view's rows that hold epoch seconds.
MOMENTS: Final = frozenset(
    {"at", "seen_at", "first_at", "last_at", "since", "failing_since", "last_success"}
    | {"stuck_since", "last_failure_at"}
)
NOT_POLLED: Final = dict.fromkeys(field.name for field in fields(PollRecord))  # (all null)


def iso(moment: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (the API's own style)."""
    if moment is None:
        return None
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def plain(row: Any) -> dict[str, Any]:
    """A row as a dict, nested rows too, each moment in ISO 8601."""
    document = {}
    for field in fields(row):
        value = getattr(row, field.name)
        if is_dataclass(value):
            value = plain(value)
        document[field.name] = iso(value) if field.name in MOMENTS else value
    return document


def to_json(view: StatusView) -> dict[str, Any]:
    """The view as the /status.json document."""
    facts = view.monitor
    p50, p99 = facts.detection_delay or (None, None)
    document: dict[str, Any] = {
        "generated_at": iso(view.now),
        "monitor": {
            "version": facts.version,
            "started_at": iso(facts.started_at),
            "ready": facts.ready,
            "last_successful_poll": iso(view.last_success),
            "requests_per_second": {
                "used": round(facts.requests_per_second, 2),
                "in_force": round(facts.requests_rate_in_force, 2),
                "budget": facts.requests_budget,
            },
            "shard": {"index": facts.shard_index, "count": facts.shard_count},
            "promotions": view.watched,
            "attention": {name: view.attention.get(name, 0) for name in ATTENTION},
            "detection_delay_seconds": {
                "p50": None if p50 is None else round(p50, 2),
                "p99": None if p99 is None else round(p99, 2),
                "window_seconds": DELAY_WINDOW_SECONDS,
            },
        },
        "page": {
            "number": view.page,
            "per_page": view.per_page,
            "pages": view.pages,
            "promotions": view.total,
        },
        "promotions": [
            plain(row) | ({} if row.last_poll else {"last_poll": dict(NOT_POLLED)})
            for row in view.promotions
        ],
        "failures": [plain(f.report) | {"promotion_name": f.promotion_name} for f in view.failures],
        "poll_errors": [
            plain(e.error) | {"promotion_name": e.promotion_name, "still_failing": e.still_failing}
            for e in view.poll_errors
        ],
    }
    if view.jobs is not None:
        document["jobs"] = [plain(job) for job in view.jobs]
    return document
