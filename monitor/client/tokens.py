"""Bearer tokens: OAuth2 client_credentials, or a token file kept fresh by someone else.

A token source posts its form through a callable it is given; it never holds the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final, Protocol

from monitor.client.errors import ApiError, Redactions

# Renew a token this long before it expires, so no request races its expiry.
TOKEN_MARGIN_SECONDS: Final = 60.0

PostForm = Callable[[str, Mapping[str, str]], Awaitable[object]]


class TokenSource(Protocol):
    async def token(self, stale: str | None) -> str:
        """A bearer token; `stale` is one the API just rejected, so do not return it again."""
        ...


async def _read(path: Path, what: str) -> str:
    try:
        return (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
    except OSError as exc:
        raise ApiError("auth", f"cannot read {what} {path}: {exc.strerror}") from None


class StaticTokenFile:
    """A bearer token kept in a file by someone else (e.g. a mounted Secret); re-read on 401."""

    def __init__(self, path: Path, redactions: Redactions) -> None:
        self._path = path
        self._redactions = redactions
        self._token: str | None = None

    async def token(self, stale: str | None) -> str:
        if self._token is None or self._token == stale:
            fresh = await _read(self._path, "token file")
            if not fresh or fresh == stale:
                raise ApiError("auth", f"the token in {self._path} was rejected or is empty")
            self._token = self._redactions.remember(fresh)
        return self._token


class ClientCredentials:
    """OAuth2 client_credentials tokens, reused until shortly before they expire. A secret given
    as a Path is re-read for each token: a rotated Kubernetes Secret is picked up at the next."""

    def __init__(
        self,
        post_form: PostForm,
        client_id: str,
        secret: str | Path,
        *,
        redactions: Redactions,
        on_refreshed: Callable[[float], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post_form = post_form
        self._client_id = client_id
        self._secret = secret
        self._redactions = redactions
        self._on_refreshed = on_refreshed
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        # One refresh at a time: fifty polls finding an expired token must cause one POST.
        self._lock = asyncio.Lock()

    async def token(self, stale: str | None) -> str:
        async with self._lock:
            if self._token is not None and self._token != stale and self._clock() < self._renew_at:
                return self._token
            secret = self._secret
            if isinstance(secret, Path):
                secret = await _read(secret, "client secret file")
            form = {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._redactions.remember(secret),
            }
            answer = await self._post_form("/oauth/access_token", form)
            # The authentication description's examples wrap the token in `data`; the SDKs and
            # Elastic Path's own CLI read it flat. Both are answers the API can give.
            body = answer.get("data") if isinstance(answer, dict) and "data" in answer else answer
            if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise ApiError("bad_response", "token answer has no access_token")
            expires_in = body.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
            self._token = self._redactions.remember(body["access_token"])
            self._renew_at = self._clock() + max(lifetime - TOKEN_MARGIN_SECONDS, lifetime / 2)
            self._on_refreshed(lifetime)
            return self._token
