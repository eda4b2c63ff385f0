"""The Elastic Path API as the monitor reads it: jobs of a promotion, the promotion lists, one
promotion. Composes the transport, a token source and the pager; holds no domain state."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from yarl import URL

from monitor.client.budget import RequestBudget
from monitor.client.clock import StoreClock
from monitor.client.endpoints import SEGMENT, JobsTarget
from monitor.client.errors import ApiError, Redactions, decode_json
from monitor.client.pager import Listing, Page, id_hashes, list_page, promotion_object, read_pages
from monitor.client.tokens import ClientCredentials, StaticTokenFile, TokenSource
from monitor.client.transport import ClientEvents, NoEvents, Transport
from monitor.models import Job, ParseResult, PromotionKind, parse_jobs
from monitor.settings import ApiSettings


@dataclass(slots=True)
class FetchResult:
    """All jobs of one promotion, as far as the API let us read them."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    listing: Listing = field(default_factory=Listing)
    # Every failed job was read: the listing was complete, or the failed jobs alone were.
    failures_complete: bool = False

    @property
    def complete(self) -> bool:
        """Every job the API holds was seen, so a job missing from `jobs` is really gone."""
        return self.listing.incomplete is None


class ElasticPathClient:
    """One transport and one token source for every request of the process."""

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
        token_clock: Callable[[], float] = time.monotonic,
        store_clock: StoreClock | None = None,
    ) -> None:
        self.settings = settings
        self._base = URL(settings.base_url)
        events = NoEvents() if events is None else events
        self.redactions = Redactions()
        for password in (self._base.password, self._base.raw_password):  # in its user-info
            self.redactions.remember(password or "")
        self.budget = budget
        self.store_clock = store_clock or StoreClock()
        self.transport = Transport(
            budget=budget,
            events=events,
            redactions=self.redactions,
            timeout_seconds=settings.timeout_seconds,
            user_agent=user_agent,
            max_retries=max_retries,
            retry_wait_initial=retry_wait_initial,
            retry_wait_max=retry_wait_max,
            store_clock=self.store_clock,
        )
        self.tokens: TokenSource
        if settings.token_file is not None:
            self.tokens = StaticTokenFile(settings.token_file, self.redactions)
        else:
            secret = settings.client_secret_file or settings.client_secret
            assert settings.client_id is not None  # guaranteed by ApiSettings validation
            assert secret is not None
            self.tokens = ClientCredentials(
                self.post_form,
                settings.client_id,
                secret if isinstance(secret, Path) else secret.get_secret_value(),
                redactions=self.redactions,
                on_refreshed=events.token_refreshed,
                clock=token_clock,
            )

    async def __aenter__(self) -> ElasticPathClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    def target(
        self, promotion_id: str, kind: PromotionKind, job_filter: str | None = None
    ) -> JobsTarget:
        return JobsTarget.build(
            str(self._base), promotion_id, kind, job_filter, self.settings.page_limit
        )

    async def fetch_jobs(
        self, target: JobsTarget, known: Mapping[str, Job] | None = None
    ) -> FetchResult:
        """Every job of one promotion, as far as the API pages; `known` (the jobs the monitor
        holds) are reused where the API shows them unchanged."""
        pages: list[ParseResult] = []

        async def page_at(offset: int) -> Page:
            params = {**target.params, "page[offset]": str(offset)}
            document = await self._get_json(target.url, target.endpoint, params)
            data, total = list_page(document, target.endpoint)
            pages.append(parse_jobs(data, known))
            return Page(id_hashes(data), total)

        result = FetchResult(listing=await read_pages(page_at))
        if result.listing.incomplete == "offset_ignored":
            pages.pop()  # the repeat of the page before it
        for page in pages:
            result.jobs.extend(page.jobs)
            result.skipped.extend(page.skipped)
        return result

    async def list_promotions(
        self, kind: PromotionKind
    ) -> tuple[list[Mapping[str, object]], Listing]:
        """Every promotion of one kind (GET /v2/promotions or /v2/rule-promotions), and how
        completely the store listed them."""
        endpoint = f"{kind}s"
        url = self._base / "v2" / SEGMENT[kind]
        params = {"page[limit]": str(self.settings.page_limit)}
        found: list[Mapping[str, object]] = []

        async def page_at(offset: int) -> Page:
            document = await self._get_json(url, endpoint, {**params, "page[offset]": str(offset)})
            data, total = list_page(document, endpoint)
            items = [promotion_object(item) for item in data]
            found.extend(item for item in items if item is not None)
            return Page(id_hashes(items), total)

        return found, await read_pages(page_at)

    async def get_promotion(self, kind: PromotionKind, promotion_id: str) -> Mapping[str, object]:
        """One promotion (GET /v2/promotions/:id or /v2/rule-promotions/:id), for its name."""
        url = self._base / "v2" / SEGMENT[kind] / promotion_id
        document = await self._get_json(url, str(kind), {})
        found = promotion_object(document.get("data") if isinstance(document, dict) else None)
        if found is None:
            raise ApiError("bad_response", f"{kind}: answer has no promotion object")
        return found

    async def post_form(self, path: str, form: Mapping[str, str]) -> object:
        """POST form-encoded without a bearer token (the token endpoint itself)."""
        url = self._base.with_path(path)
        read = partial(decode_json, endpoint="token")
        return await self.transport.request("POST", url, "token", read, data=dict(form))

    async def _get_json(self, url: URL, endpoint: str, params: Mapping[str, str]) -> object:
        """An authorized GET; a 401 gets one fresh token, then it is an auth error."""
        read = partial(decode_json, endpoint=endpoint, scrub=self.redactions.scrub)
        stale: str | None = None
        while True:
            token = await self.tokens.token(stale)
            headers = {"Authorization": f"Bearer {token}"}
            try:
                return await self.transport.request(
                    "GET", url, endpoint, read, params=params, headers=headers
                )
            except ApiError as exc:
                if exc.http_status != 401 or stale is not None:
                    raise
                stale = token
