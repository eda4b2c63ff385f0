"""One HTTP exchange at a time, the same way for every request of the process:
budget → request → classify → retry. It knows nothing of tokens, pages or jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import aiohttp
import stamina
from yarl import URL

from monitor.client.budget import RequestBudget
from monitor.client.clock import StoreClock
from monitor.client.errors import (
    ApiError,
    Reason,
    Redactions,
    classify_status,
    error_summary,
    parse_retry_after,
)

# A jobs page of 100 is ~100 KB; anything far larger is not an answer we should hold in memory.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024

T = TypeVar("T")


class ClientEvents(Protocol):
    """What the client reports; the app renders it into metrics and events."""

    def request_done(self, endpoint: str, code: str) -> None: ...
    def token_refreshed(self, expires_in: float) -> None: ...
    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None: ...
    def budget_waited(self, seconds: float) -> None: ...
    def store_clock_skew(self, seconds: float) -> None: ...


class NoEvents:
    """A ClientEvents that records nothing (for one-off scripts)."""

    def request_done(self, endpoint: str, code: str) -> None: ...
    def token_refreshed(self, expires_in: float) -> None: ...
    def retry_scheduled(self, endpoint: str, error: ApiError, attempt: int) -> None: ...
    def budget_waited(self, seconds: float) -> None: ...
    def store_clock_skew(self, seconds: float) -> None: ...


@dataclass(kw_only=True, slots=True)
class Transport:
    """One aiohttp session and one request budget; bounded retries of transient faults."""

    budget: RequestBudget
    events: ClientEvents
    redactions: Redactions
    store_clock: StoreClock
    timeout_seconds: float
    user_agent: str
    max_retries: int
    retry_wait_initial: float
    retry_wait_max: float
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created lazily: a session must be made inside the running event loop.
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/json", "User-Agent": self.user_agent},
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                raise_for_status=False,
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

    async def request(
        self,
        method: str,
        url: URL,
        endpoint: str,
        read: Callable[[bytes], T],
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        """A 2xx answer's body as `read` turns it into a value (inside the retries, so an
        answer `read` refuses as transient is asked again); anything else raises ApiError."""
        tries = 0

        def backoff(exc: Exception) -> bool | float:
            nonlocal tries
            if not isinstance(exc, ApiError):
                return False
            tries += 1
            if exc.reason == "rate_limited":
                self.budget.slow_down()
            if not exc.transient or tries > self.max_retries:
                return False
            self.events.retry_scheduled(endpoint, exc, tries)
            if exc.reason == "rate_limited" and exc.retry_after is not None:
                return exc.retry_after
            return True

        async for retry in stamina.retry_context(
            on=backoff,
            attempts=self.max_retries + 1,
            timeout=None,
            wait_initial=self.retry_wait_initial,
            wait_max=self.retry_wait_max,
            wait_jitter=self.retry_wait_initial,
        ):
            with retry:
                status, body = await self._exchange(
                    method, url, endpoint, params=params, data=data, headers=headers
                )
                try:
                    return read(body)
                except ApiError as exc:
                    exc.http_status = exc.http_status or status
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _exchange(
        self,
        method: str,
        url: URL,
        endpoint: str,
        *,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, bytes]:
        """One exchange within the budget: a 2xx answer's status and body, or a typed ApiError."""
        waited = await self.budget.acquire()
        if waited > 0:
            self.events.budget_waited(waited)
        code = "error"
        try:
            async with self.session.request(
                method, url, params=params, data=data, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                code = str(status)
                body = await _read_capped(response, endpoint)
                date = self.store_clock.observe(response.headers.get("Date"))
                if date is not None and self.store_clock.skew is not None:
                    self.events.store_clock_skew(self.store_clock.skew)
                if not 200 <= status < 300:
                    reason = classify_status(status)
                    raise ApiError(
                        reason,
                        f"{endpoint}: HTTP {status}: {error_summary(body, self.redactions.scrub)}",
                        http_status=status,
                        # (an HTTP-date is read against this answer's Date: the store's clock)
                        retry_after=parse_retry_after(
                            response.headers.get("Retry-After"), date or time.time()
                        ),
                        transient=reason in ("http_5xx", "rate_limited"),
                    )
        except TimeoutError:
            fault: tuple[Reason, str] = ("timeout", f"no answer within {self.timeout_seconds:g}s")
        except aiohttp.ClientPayloadError as exc:
            fault = ("bad_response", f"truncated answer ({exc})")
        except aiohttp.ClientError as exc:
            fault = ("network", f"{type(exc).__name__}: {exc}")
        else:
            self.budget.recover()
            return status, body
        finally:
            self.events.request_done(endpoint, code)
        reason, detail = fault
        raise ApiError(reason, self.redactions.scrub(f"{endpoint}: {detail}"), transient=True)


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
