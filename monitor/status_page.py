"""The status view as an HTML page: server-rendered, autoescaped, no script, no external asset."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Final
from urllib.parse import urlencode

import jinja2

from monitor.status import ATTENTION, PER_PAGE, StatusQuery, StatusView
from monitor.status_json import iso

LABELS: Final = {
    "poll_failing": "Poll failing",
    "stuck": "Stuck",
    "failed": "Failed jobs",
    "no_baseline": "Not polled yet",
    "active": "Running",
    "ok": "OK",
}
# Job statuses in the order a reader scans them: trouble, work in progress, then history.
_STATUS_ORDER: Final = ("failed", "cancelling", "processing", "pending", "completed", "cancelled")
_STATUS_RANK: Final = {status: rank for rank, status in enumerate(_STATUS_ORDER)}

# Scripts may not run at all, whatever a text from the API smuggles in; styles are inline only.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@cache
def _template() -> jinja2.Template:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("monitor", "templates"),
        autoescape=True,  # every value is text; markup comes only from the template
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    ).get_template("status.html")


def ago(now: float, moment: float | None, *, suffix: bool = True) -> str:
    """A short age such as "12 s ago" or, without suffix, "12 s"."""
    if moment is None:
        return "—"
    seconds = max(0.0, now - moment)
    if seconds < 1 and suffix:
        return "just now"
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 36 * 3600:
        text = f"{seconds / 3600:.0f} h"
    else:
        text = f"{seconds / 86400:.0f} d"
    return f"{text} ago" if suffix else text


def utc(moment: float | None) -> str:
    if moment is None:
        return ""
    return f"{datetime.fromtimestamp(moment, UTC):%Y-%m-%d %H:%M:%S} UTC"


def job_chips(jobs: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(
        jobs.items(), key=lambda chip: (_STATUS_RANK.get(chip[0], len(_STATUS_RANK)), chip[0])
    )


# What a partial listing means to the person reading the page (reasons: monitor.client.Incomplete).
INCOMPLETE_NOTES: Final = {
    "offset_ignored": "jobs read in part: the store ignores page[offset] (failures are read "
    "through the status filter)",
    "offset_limit": "jobs read in part: more than the API pages through (failures are read "
    "through the status filter)",
    "short": "jobs read in part this time: the store lists them in no stable order",
}


def status_class(status: str) -> str:
    return f"s-{status}" if status in _STATUS_RANK else "s-other"


def render_page(view: StatusView, query: StatusQuery) -> str:
    """The whole page; every text from the API is escaped by the template engine."""
    current: dict[str, object] = {
        "promotion": query.promotion,
        "page": query.page if query.page != 1 else None,
        "per_page": query.per_page if query.per_page != PER_PAGE else None,
        "refresh": query.refresh,
    }

    def qs(**changes: object) -> str:
        kept = {k: v for k, v in (current | changes).items() if v is not None}
        return "?" + urlencode(kept) if kept else ""

    def link(**changes: object) -> str:
        # An empty href would keep the current query string; "./" is this page without one.
        return qs(**changes) or "./"

    return _template().render(
        view=view,
        labels=LABELS,
        attention_order=ATTENTION,
        ago=lambda moment, suffix=True: ago(view.now, moment, suffix=suffix),
        utc=utc,
        iso=iso,
        job_chips=job_chips,
        status_class=status_class,
        incomplete_notes=INCOMPLETE_NOTES,
        qs=qs,
        link=link,
    )
