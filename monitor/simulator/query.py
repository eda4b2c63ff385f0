"""What a list request asks for (a page window, filters) and the paged answer it gets."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from monitor.simulator.answers import FILTER_ERROR, ApiError, bad_request
from monitor.simulator.rendering import Kind, Promotion, checked_time, parse_time

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_OFFSET = 10_000

# The reference's examples put a space after the comma (`eq(status, complete)`).
_CLAUSE = re.compile(r"(eq|ne|gt|ge|lt|le|like|ilike|in)\(([A-Za-z_.]+), ?([^()]*)\)")
# The jobs filter example says `complete`; every status enum says `completed`.
_STATUS_ALIASES = {"complete": "completed"}
_ORDERINGS: dict[str, Callable[[datetime, datetime], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}

PromotionTest = Callable[[Promotion], bool]


def page_window(query: Mapping[str, str]) -> tuple[int, int]:
    """The (limit, offset) asked for, or ApiError(400) when out of the API's range."""
    limit = _int_param(query, "page[limit]", DEFAULT_LIMIT)
    offset = _int_param(query, "page[offset]", 0)
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, bad_request(f"page[limit] must be between 1 and {MAX_LIMIT}"))
    if not 0 <= offset <= MAX_OFFSET:
        raise ApiError(400, bad_request(f"page[offset] must be between 0 and {MAX_OFFSET}"))
    return limit, offset


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise ApiError(400, bad_request(f"{name} must be an integer")) from None


def paged(
    request: web.Request, page: list[dict[str, Any]], total: int, limit: int, offset: int
) -> dict[str, Any]:
    pages = math.ceil(total / limit)
    # An empty list yields a negative last offset and next always has a value, even on the last
    # page: both are what the real API has been seen to answer, so clients must not trust links.
    last = (pages - 1) * limit
    next_offset = offset + limit if offset + limit < total else last
    base = f"{request.url.origin()}{request.path}"
    extra = (
        f"&filter={quote(request.query['filter'], safe='(),:')}"
        if "filter" in request.query
        else ""
    )

    def link(at: int) -> str:
        return f"{base}?page[offset]={at}&page[limit]={limit}{extra}"

    # Promotions Builder's PaginationMeta also names how the total was counted.
    builder = request.path.startswith("/v2/rule-promotions")
    results: dict[str, Any] = {"total": total, **({"total_method": "exact"} if builder else {})}

    return {
        "data": page,
        "links": {
            "current": link(offset),
            "first": link(0),
            "last": link(last),
            "prev": link(max(offset - limit, 0)),
            "next": link(next_offset),
        },
        "meta": {
            "page": {
                "limit": limit,
                "offset": offset,
                "current": offset // limit + 1,
                "total": pages,
            },
            "results": results,
        },
    }


def job_filter(text: str | None) -> list[tuple[str, str]]:
    """The (field, value) pairs a jobs filter asks to equal; ApiError(400) for anything else."""
    wanted: list[tuple[str, str]] = []
    for op, name, value in _parse_filter(text):
        if op != "eq" or name not in ("job_type", "status"):
            raise ApiError(400, FILTER_ERROR)
        wanted.append((name, _STATUS_ALIASES.get(value, value) if name == "status" else value))
    return wanted


def promotion_filter(kind: Kind, text: str | None) -> list[PromotionTest]:
    """One test per clause of a promotion list filter; ApiError(400) for one this kind lacks."""
    tests: list[PromotionTest] = []
    for op, name, value in _parse_filter(text):
        test = _promotion_test(kind, op, name, value)
        if test is None:
            raise ApiError(400, FILTER_ERROR)
        tests.append(test)
    return tests


def _parse_filter(text: str | None) -> list[tuple[str, str, str]]:
    """Split `op(field,value):op(field,value)`; values may contain ':' (timestamps)."""
    if text is None:
        return []
    clauses: list[tuple[str, str, str]] = []
    position = 0
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            raise ApiError(400, FILTER_ERROR)
        op, name, value = match.groups()
        clauses.append((op, name, value))
        position = match.end()
        if position == len(text):
            return clauses
        if text[position] != ":":
            raise ApiError(400, FILTER_ERROR)
        position += 1


def _promotion_test(kind: Kind, op: str, name: str, value: str) -> PromotionTest | None:
    if kind == "promotion":
        # Promotions Standard filters only by code server-side; codes are not modelled here.
        return (lambda _: True) if (op, name) == ("eq", "code") else None
    # Promotions Builder's list filters: eq(enabled), lt/le/eq/gt/ge(start|end), like/ilike(name),
    # eq(code); anything else is a parse error, as the API answers.
    if name == "enabled":
        if op != "eq" or value not in ("true", "false"):
            return None
        wanted = value == "true"
        return lambda p: p.enabled is wanted
    if name in ("start", "end"):
        when = parse_time(value)
        compare = _ORDERINGS.get(op)
        if when is None or compare is None:
            return None
        return lambda p: compare(checked_time(getattr(p, name)), when)
    if name == "name" and op in ("like", "ilike"):
        # `*` is the wildcard; ilike ignores case.
        flags = re.IGNORECASE if op == "ilike" else 0
        pattern = re.compile(".*".join(map(re.escape, value.split("*"))), flags)
        return lambda p: pattern.fullmatch(p.name) is not None
    if (op, name) == ("eq", "code"):
        return lambda _: True  # codes are not modelled (as for Promotions Standard)
    return None
