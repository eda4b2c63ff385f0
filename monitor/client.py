"""The Elastic Path HTTP client: tokens, pages, filters, the request budget, retries, typed errors.

Every request the process makes goes through `ElasticPathClient._send`, so the budget, the
request metric and the error classification hold for tokens and jobs alike.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args

import aiohttp
import stamina
from yarl import URL

from monitor.budget import RequestBudget
from monitor.models import Job, PromotionKind, parse_jobs, single_line
from monitor.settings import ApiSettings

Reason = Literal[
    "timeout",
    "network",
    "rate_limited",
    "auth",
    "not_found",
    "http_4xx",
    "http_5xx",
    "bad_response",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
# The API refuses offsets beyond this; stores with more jobs per promotion are read partially.
MAX_OFFSET: Final = 10_000
# A jobs page of 100 is ~100 KB; anything far larger is not an answer we should hold in memory.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
# Renew a token this long before it expires, so no request races its expiry.
TOKEN_MARGIN_SECONDS: Final = 60.0
MAX_RETRY_AFTER_SECONDS: Final = 300.0

JOBS_ENDPOINT: Final = {
    PromotionKind.PROMOTION: ("promotions", "promotion_jobs"),
    PromotionKind.RULE_PROMOTION: ("rule-promotions", "rule_promotion_jobs"),
}


class ApiError(Exception):
    """A request that did not produce a usable answer, classified by `reason`."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.http_status = http_status
        self.retry_after = retry_after
        self.transient = transient


class ClientEvents(Protocol):
    """What the client reports; the app wires this to metrics and logs."""

    def request_done(self, endpoint: str, code: str) -> None: ...
    def token_refreshed(self, expires_in: float) -> None: ...
    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None: ...
    def budget_waited(self, seconds: float) -> None: ...


class NoEvents:
    """A ClientEvents that records nothing (for one-off scripts)."""

    def request_done(self, endpoint: str, code: str) -> None:
        return None

    def token_refreshed(self, expires_in: float) -> None:
        return None

    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None:
        return None

    def budget_waited(self, seconds: float) -> None:
        return None


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
        segment, endpoint = JOBS_ENDPOINT[kind]
        params = {"page[limit]": str(limit)}
        if job_filter:
            params["filter"] = job_filter
        url = URL(base_url) / "v2" / segment / promotion_id / "jobs"
        return cls(promotion_id, kind, url, endpoint, params)


# Why a listing could not be read whole; None when it was.
Incomplete = Literal["offset_limit", "offset_ignored", "short"]


@dataclass(slots=True)
class Listing:
    """How paging through one list went: pages read, and whether every record was seen."""

    pages: int = 0
    # "offset_limit": more records than the API pages through; "offset_ignored": a page repeated
    # the one before (the server ignores page[offset]); "short": fewer distinct records than
    # meta.results.total (pages overlapped because the store lists in no stable order).
    incomplete: Incomplete | None = None


@dataclass(slots=True)
class FetchResult:
    """All jobs of one promotion, as far as the API let us read them."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    listing: Listing = field(default_factory=Listing)
    # True when every page was byte-identical to the last poll's: nothing can have changed.
    unchanged: bool = True

    @property
    def complete(self) -> bool:
        """Every job the API holds was seen, so a job missing from `jobs` is really gone."""
        return self.listing.incomplete is None


# A body's length and in-process hash: equal keys mean the same bytes (hash() is 64-bit SipHash;
# with the length also equal a collision is not a practical concern). Never persisted: the
# hash seed differs per process.
BodyKey = tuple[int, int]
UNCHANGED: Final = object()


def body_key(body: bytes) -> BodyKey:
    return (len(body), hash(body))


@dataclass(frozen=True, slots=True)
class Keyed:
    """A page's answer with its body key; document is UNCHANGED when the bytes were the same."""

    key: BodyKey
    document: Any


@dataclass(frozen=True, slots=True)
class _SeenPage:
    """What one page of a promotion's jobs gave at the last successful poll."""

    key: BodyKey
    total: int | None
    # hash() of each record's id in page order: enough to count distinct records across pages
    # and to see a page repeat, at 8 bytes a record (history past retention included).
    ids: array[int]
    jobs: tuple[Job, ...]
    skipped: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """What paging needs of one page: its records' id hashes and meta.results.total."""

    ids: array[int]
    total: int | None


def _id_hashes(items: Iterable[object]) -> array[int]:
    # A record without a usable id still counts (its position hashes as -1).
    return array(
        "q",
        [
            hash(item["id"])
            if isinstance(item, Mapping) and isinstance(item.get("id"), str)
            else -1
            for item in items
        ],
    )


def promotion_object(item: object) -> Mapping[str, Any] | None:
    """A listed promotion; Promotions Builder's SDK description wraps each in `{data: {...}}`."""
    if isinstance(item, Mapping) and "id" not in item and isinstance(item.get("data"), Mapping):
        item = item["data"]
    return item if isinstance(item, Mapping) else None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date; capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def error_summary(body: bytes) -> str:
    """The title/detail of an Elastic Path error body, or a hint of what the body was."""
    try:
        document = json.loads(body)
        first = document["errors"][0]
        parts = [str(first.get(k)) for k in ("title", "detail") if first.get(k)]
        return single_line(": ".join(parts), 200) or "no error detail"
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        kind = "HTML page" if body.lstrip()[:1] == b"<" else f"{len(body)} bytes"
        return f"non-JSON error body ({kind})"


def classify_status(status: int) -> Reason:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "http_5xx"
    return "http_4xx"


class Redactions:
    """Every secret value the process has handled (client secret, tokens), to scrub from text.

    Error bodies are the API's words, not ours: one that quotes the request's credentials back
    must not carry them into a log line or an exception.
    """

    MARK: Final = "[redacted]"

    def __init__(self) -> None:
        self._values: set[str] = set()

    def remember(self, value: str) -> str:
        if len(value) >= 4:  # shorter values would scrub innocent text and protect nothing
            self._values.add(value)
        return value

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, self.MARK)
        return text


class TokenSource(Protocol):
    async def token(self, stale: str | None) -> str:
        """A bearer token; `stale` is one the API just rejected, so do not return it again."""
        ...


class StaticTokenFile:
    """A bearer token kept in a file by someone else (e.g. a mounted Secret); re-read on 401."""

    def __init__(self, path: Path, redactions: Redactions) -> None:
        self._path = path
        self._redactions = redactions
        self._token: str | None = None

    async def token(self, stale: str | None) -> str:
        if self._token is None or self._token == stale:
            try:
                text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
            except OSError as exc:
                raise ApiError(
                    "auth", f"cannot read token file {self._path}: {exc.strerror}"
                ) from None
            fresh = text.strip()
            if not fresh or fresh == stale:
                raise ApiError("auth", f"the token in {self._path} was rejected or is empty")
            self._token = self._redactions.remember(fresh)
        return self._token


class ClientCredentials:
    """OAuth2 client_credentials tokens, reused until shortly before they expire."""

    def __init__(
        self,
        client: ElasticPathClient,
        client_id: str,
        secret: Callable[[], Awaitable[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._client_id = client_id
        self._secret = secret
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        # One refresh at a time: fifty polls finding an expired token must cause one POST.
        self._lock = asyncio.Lock()

    async def token(self, stale: str | None) -> str:
        async with self._lock:
            if self._token is not None and self._token != stale and self._clock() < self._renew_at:
                return self._token
            form = {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client.redactions.remember(await self._secret()),
            }
            answer = await self._client.post_form("/oauth/access_token", form, endpoint="token")
            # The authentication description's examples wrap the token in `data`; the SDKs and
            # Elastic Path's own CLI read it flat. Both are answers the API can give.
            body = answer.get("data") if isinstance(answer, dict) and "data" in answer else answer
            if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise ApiError("bad_response", "token answer has no access_token")
            expires_in = body.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
            self._token = self._client.redactions.remember(body["access_token"])
            self._renew_at = self._clock() + max(lifetime - TOKEN_MARGIN_SECONDS, lifetime / 2)
            self._client.events.token_refreshed(lifetime)
            return self._token


def _read_secret_file(path: Path) -> Callable[[], Awaitable[str]]:
    async def read() -> str:
        # Re-read each time: a rotated Kubernetes Secret is picked up at the next token.
        try:
            return (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
        except OSError as exc:
            raise ApiError(
                "auth", f"cannot read client secret file {path}: {exc.strerror}"
            ) from None

    return read


def _constant(value: str) -> Callable[[], Awaitable[str]]:
    async def read() -> str:
        return value

    return read


class ElasticPathClient:
    """One aiohttp session, one budget, one token source for every request of the process."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        budget: RequestBudget,
        events: ClientEvents | None = None,
        max_retries: int = 3,
        retry_wait_initial: float = 0.5,
        retry_wait_max: float = 10.0,
        user_agent: str = "promo-monitor",
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.events: ClientEvents = NoEvents() if events is None else events
        self._base = URL(settings.base_url)
        self._max_retries = max_retries
        self._wait_initial = retry_wait_initial
        self._wait_max = retry_wait_max
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._pages_seen: dict[str, dict[int, _SeenPage]] = {}
        self.redactions = Redactions()
        self.tokens: TokenSource
        if settings.token_file is not None:
            self.tokens = StaticTokenFile(settings.token_file, self.redactions)
        else:
            assert settings.client_id is not None  # guaranteed by ApiSettings validation
            if settings.client_secret_file is not None:
                secret = _read_secret_file(settings.client_secret_file)
            else:
                assert settings.client_secret is not None
                secret = _constant(settings.client_secret.get_secret_value())
            self.tokens = ClientCredentials(self, settings.client_id, secret)

    async def __aenter__(self) -> ElasticPathClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created lazily: a session must be made inside the running event loop.
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, raise_for_status=False
            )
            # aiohttp silently re-sends a GET once when a kept-alive connection was reset; that
            # request would bypass the budget and the request metric. Our retries cover it.
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def target(
        self, promotion_id: str, kind: PromotionKind, job_filter: str | None = None
    ) -> JobsTarget:
        return JobsTarget.build(
            str(self._base), promotion_id, kind, job_filter, self.settings.page_limit
        )

    async def fetch_jobs(
        self,
        target: JobsTarget,
        known: Mapping[str, Job] | None = None,
        keep: Callable[[Job], bool] | None = None,
    ) -> FetchResult:
        """Every job of one promotion, as far as the API pages.

        `known`: the jobs the monitor already holds, reused where the API shows them unchanged.
        `keep`: which parsed jobs matter (the rest, e.g. history past retention, are dropped and
        never held in the page memory, so it costs the retention window, not the API history).
        A page whose bytes are identical to the last poll's is not even decoded: most polls of
        most promotions see nothing new, and they should cost little more than the request.
        """
        result = FetchResult()
        before = self._pages_seen.get(target.promotion_id, {}) if known is not None else {}
        seen: dict[int, _SeenPage] = {}

        async def page_at(offset: int) -> Page:
            last = before.get(offset)
            answer: Keyed = await self._get_json(
                target.url,
                {**target.params, "page[offset]": str(offset)},
                target.endpoint,
                keyed=True,
                unchanged_if=last.key if last is not None else None,
            )
            if answer.document is UNCHANGED and last is not None:
                page = last
            else:
                data, total = _list_page(answer.document, target.endpoint)
                parsed = parse_jobs(data, known)
                kept = parsed.jobs if keep is None else filter(keep, parsed.jobs)
                jobs, skipped = tuple(kept), tuple(parsed.skipped)
                page = _SeenPage(answer.key, total, _id_hashes(data), jobs, skipped)
                result.unchanged = False
            seen[offset] = page
            return Page(page.ids, page.total)

        result.listing = await self._paged(page_at)
        pages = list(seen.values())
        if result.listing.incomplete == "offset_ignored":
            pages.pop()  # the repeat of the page before it
        for page in pages:
            result.jobs.extend(page.jobs)
            result.skipped.extend(page.skipped)
        result.unchanged = result.unchanged and len(seen) == len(before)
        # Only a poll that read every page replaces the memory (a failure raised before here).
        self._pages_seen[target.promotion_id] = seen
        return result

    def forget(self, promotion_id: str) -> None:
        """Drop what the client remembers of a promotion's pages."""
        self._pages_seen.pop(promotion_id, None)

    async def list_promotions(self, kind: PromotionKind) -> tuple[list[Mapping[str, Any]], Listing]:
        """Every promotion of one kind (GET /v2/promotions or /v2/rule-promotions), and how
        completely the store listed them."""
        segment, _ = JOBS_ENDPOINT[kind]
        endpoint = "promotions" if kind is PromotionKind.PROMOTION else "rule_promotions"
        url = self._base / "v2" / segment
        params = {"page[limit]": str(self.settings.page_limit)}
        found: list[Mapping[str, Any]] = []

        async def page_at(offset: int) -> Page:
            body = await self._get_json(url, {**params, "page[offset]": str(offset)}, endpoint)
            data, total = _list_page(body, endpoint)
            items = [promotion_object(item) for item in data]
            found.extend(item for item in items if item is not None)
            return Page(_id_hashes(items), total)

        listing = await self._paged(page_at)
        return found, listing

    async def get_promotion(self, kind: PromotionKind, promotion_id: str) -> Mapping[str, Any]:
        """One promotion (GET /v2/promotions/:id or /v2/rule-promotions/:id), for its name."""
        segment, _ = JOBS_ENDPOINT[kind]
        endpoint = "promotion" if kind is PromotionKind.PROMOTION else "rule_promotion"
        body = await self._get_json(self._base / "v2" / segment / promotion_id, {}, endpoint)
        found = promotion_object(body.get("data") if isinstance(body, dict) else None)
        if found is None:
            raise ApiError("bad_response", f"{endpoint}: answer has no promotion object")
        return found

    async def _paged(self, page_at: Callable[[int], Awaitable[Page]]) -> Listing:
        """Read pages by offset until every record is read; `page_at(offset)` reads one page.

        The offset steps by the records the server returned, not by what was asked: neither jobs
        endpoint declares page parameters, and a store's page length is a store setting. Paging
        ends at meta.results.total or an empty page (without a total a short page proves
        nothing), at a page that repeats the one before (a server ignoring page[offset] would
        otherwise be read forever), or at the API's offset limit. links.next is ignored on
        purpose: the real API fills it even on the last page.
        """
        listing = Listing()
        distinct: set[int] = set()
        offset = 0
        total: int | None = None
        previous: array[int] | None = None
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
            total = page.total if page.total is not None else total
            offset += len(page.ids)
            if total is not None and offset >= total:
                break
        if total is not None and len(distinct) < total:
            listing.incomplete = "short"
        return listing

    async def post_form(self, path: str, form: Mapping[str, str], *, endpoint: str) -> Any:
        """POST form-encoded without a bearer token (the token endpoint itself)."""
        url = self._base.with_path(path)

        async def attempt() -> Any:
            return await self._send("POST", url, endpoint, data=dict(form), authorize=False)

        return await self._with_retries(endpoint, attempt)

    async def _get_json(
        self,
        url: URL,
        params: Mapping[str, str],
        endpoint: str,
        *,
        keyed: bool = False,
        unchanged_if: BodyKey | None = None,
    ) -> Any:
        async def attempt() -> Any:
            return await self._send(
                "GET",
                url,
                endpoint,
                params=params,
                authorize=True,
                keyed=keyed,
                unchanged_if=unchanged_if,
            )

        return await self._with_retries(endpoint, attempt)

    async def _with_retries(self, endpoint: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        tries = 0

        def backoff(exc: Exception) -> bool | float:
            nonlocal tries
            if not isinstance(exc, ApiError):
                return False
            tries += 1
            # Once per 429 answer: a token request's 429 reaches this hook twice (its own retry
            # loop, then re-raised as non-transient around the jobs request), so only count it
            # while it is still transient.
            if exc.reason == "rate_limited" and exc.transient:
                self.budget.slow_down()
            if not exc.transient or tries > self._max_retries:
                return False
            self.events.retry_scheduled(endpoint, exc, tries)
            if exc.reason == "rate_limited" and exc.retry_after is not None:
                return exc.retry_after
            return True

        async for retry in stamina.retry_context(
            on=backoff,
            attempts=self._max_retries + 1,
            timeout=None,
            wait_initial=self._wait_initial,
            wait_max=self._wait_max,
            wait_jitter=self._wait_initial,
        ):
            with retry:
                return await attempt()
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _send(
        self,
        method: str,
        url: URL,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        authorize: bool,
        keyed: bool = False,
        unchanged_if: BodyKey | None = None,
    ) -> Any:
        """The decoded JSON answer; with `keyed`, a Keyed answer whose document is UNCHANGED
        when the body is the one `unchanged_if` describes."""
        stale: str | None = None
        # Two rounds at most: a 401 on the first gets one fresh token, then it is an auth error.
        for round_ in (1, 2):
            headers: dict[str, str] = {}
            token = ""
            if authorize:
                try:
                    token = await self.tokens.token(stale)
                except ApiError as exc:
                    # The token request had its own retries; retrying the request around it
                    # too would square the attempts against an endpoint that is failing.
                    exc.transient = False
                    raise
                headers["Authorization"] = f"Bearer {token}"
            waited = await self.budget.acquire()
            if waited > 0:
                self.events.budget_waited(waited)
            status, body, retry_after = await self._exchange(
                method, url, endpoint, params=params, data=data, headers=headers
            )
            if status == 401 and authorize and round_ == 1:
                stale = token
                continue
            if 200 <= status < 300:
                self.budget.recover()
                key = body_key(body) if keyed else None
                if key is not None and key == unchanged_if:
                    return Keyed(key, UNCHANGED)
                try:
                    document = json.loads(body)
                except (ValueError, RecursionError):
                    raise ApiError(
                        "bad_response",
                        f"{endpoint}: answer is not JSON ({len(body)} bytes)",
                        http_status=status,
                        transient=True,
                    ) from None
                return document if key is None else Keyed(key, document)
            reason = classify_status(status)
            raise ApiError(
                reason,
                self.redactions.scrub(f"{endpoint}: HTTP {status}: {error_summary(body)}"),
                http_status=status,
                retry_after=retry_after,
                transient=reason in ("http_5xx", "rate_limited"),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self,
        method: str,
        url: URL,
        endpoint: str,
        *,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> tuple[int, bytes, float | None]:
        """One HTTP exchange; returns status, body and Retry-After, or raises a typed ApiError."""
        code = "error"
        try:
            async with self.session.request(
                method, url, params=params, data=data, headers=headers, allow_redirects=False
            ) as response:
                code = str(response.status)
                body = await _read_capped(response, endpoint)
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                return response.status, body, retry_after
        except TimeoutError:
            raise ApiError(
                "timeout",
                f"{endpoint}: no answer within {self.settings.timeout_seconds:g}s",
                transient=True,
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise ApiError(
                "bad_response", f"{endpoint}: truncated answer ({exc})", transient=True
            ) from None
        except aiohttp.ClientError as exc:
            raise ApiError(
                "network",
                self.redactions.scrub(f"{endpoint}: {type(exc).__name__}: {exc}"),
                transient=True,
            ) from None
        finally:
            self.events.request_done(endpoint, code)


async def _read_capped(response: aiohttp.ClientResponse, endpoint: str) -> bytes:
    declared = response.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise ApiError("bad_response", f"{endpoint}: answer of {declared} bytes is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError("bad_response", f"{endpoint}: answer larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _list_page(body: Any, endpoint: str) -> tuple[list[Any], int | None]:
    """The data array and meta.results.total of a list page; anything else is bad_response.

    A bare array is a page too: Promotions Builder's SDK description declares the
    rule-promotion list that way. It carries no total, so paging goes on to an empty page.
    """
    if isinstance(body, list):
        return body, None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ApiError("bad_response", f"{endpoint}: answer has no data array")
    total: int | None = None
    meta = body.get("meta")
    results = meta.get("results") if isinstance(meta, dict) else None
    raw_total = results.get("total") if isinstance(results, dict) else None
    if isinstance(raw_total, int) and not isinstance(raw_total, bool) and raw_total >= 0:
        total = raw_total
    return body["data"], total
