"""Paging a list by what the server returned: offsets step by the records received, the end is
meta.results.total or an empty page, and a server that ignores the offset is noticed."""

from __future__ import annotations

from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from monitor.client.errors import ApiError

# The API refuses offsets beyond this; stores with more jobs per promotion are read partially.
MAX_OFFSET: Final = 10_000

# Why a listing could not be read whole; None when it was.
Incomplete = Literal["offset_limit", "offset_ignored", "short"]
# The reasons that leave records past some point unread at every poll (not just this one).
UNREACHABLE: Final[frozenset[Incomplete]] = frozenset({"offset_limit", "offset_ignored"})


@dataclass(slots=True)
class Listing:
    """How paging through one list went: pages read, and whether every record was seen."""

    pages: int = 0
    # "offset_limit": more records than the API pages through; "offset_ignored": a page repeated
    # the one before (the server ignores page[offset]); "short": fewer distinct records than
    # meta.results.total (pages overlapped because the store lists in no stable order).
    incomplete: Incomplete | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """What paging needs of one page: its records' id hashes and meta.results.total."""

    ids: array[int]
    total: int | None


def id_hashes(items: Iterable[object]) -> array[int]:
    """hash() of each record's id in page order: enough to count distinct records across pages
    and to see a page repeat, at 8 bytes a record. A record without a usable id counts as -1."""
    ids = (item.get("id") if isinstance(item, Mapping) else None for item in items)
    return array("q", [hash(i) if isinstance(i, str) else -1 for i in ids])


async def read_pages(page_at: Callable[[int], Awaitable[Page]]) -> Listing:
    """Read pages by offset until every record is read; `page_at(offset)` reads one page.

    The offset steps by the records returned, not asked for: neither jobs endpoint declares page
    parameters, and a store's page length is a store setting. Paging ends at meta.results.total
    or an empty page (without a total a short page proves nothing), at a page that repeats the
    one before (a server ignoring page[offset], never taken for the whole list: without a total
    it looks the same as one serving pages of its own length), or at the API's offset limit.
    links.next is ignored on purpose: the real API fills it even on the last page.
    """
    listing = Listing()
    distinct: set[int] = set()
    offset = 0
    total: int | None = None
    previous: array[int] | None = None
    anonymous = 0
    while True:
        if offset > MAX_OFFSET:
            listing.incomplete = "offset_limit"
            return listing
        page = await page_at(offset)
        listing.pages += 1
        if not page.ids:
            break
        if page.ids == previous:
            listing.incomplete = "offset_ignored"
            return listing
        previous = page.ids
        distinct.update(page.ids)
        # Records without an id all hash alike; each still is one record.
        anonymous += page.ids.count(-1)
        total = page.total if page.total is not None else total
        offset += len(page.ids)
        if total is not None and offset >= total:
            break
    distinct.discard(-1)
    if total is not None and len(distinct) + anonymous < total:
        listing.incomplete = "short"
    return listing


def list_page(document: object, endpoint: str) -> tuple[list[object], int | None]:
    """The data array and meta.results.total of a list page; anything else is bad_response.

    An object with neither `meta` nor `links` is the whole list (the jobs list is described with
    `data` only). A bare array (Promotions Builder's SDK description of the rule-promotion list)
    has no total, so paging goes on to an empty page; so does a total whose `total_method` is
    not "exact" (Builder's PaginationMeta): an estimate must not end paging before the last job.
    """
    if isinstance(document, list):
        return document, None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ApiError("bad_response", f"{endpoint}: answer has no data array")
    data = document["data"]
    if "meta" not in document and "links" not in document:
        return data, len(data)  # a store that does not page: this is the whole list
    meta = document.get("meta")
    results = meta.get("results") if isinstance(meta, dict) else None
    if not isinstance(results, dict):
        return data, None
    method = results.get("total_method")
    if isinstance(method, str) and method.strip().lower() != "exact":
        return data, None
    total = results.get("total")
    return data, total if type(total) is int and total >= 0 else None


def promotion_object(item: object) -> Mapping[str, object] | None:
    """A listed promotion; Promotions Builder's SDK description wraps each in `{data: {...}}`."""
    if isinstance(item, Mapping) and "id" not in item and isinstance(item.get("data"), Mapping):
        item = item["data"]
    return item if isinstance(item, Mapping) else None
