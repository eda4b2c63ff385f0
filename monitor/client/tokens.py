"""Bearer tokens: OAuth2 client_credentials, or a token file kept fresh by someone else.

A token source posts its form through a callable it is given; it never holds the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
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


@dataclass(repr=False, slots=True)  # (no repr: it would show the token)
class StaticTokenFile:
    """A bearer token kept in a file by someone else (e.g. a mounted Secret); re-read on 401."""

    path: Path
    redactions: Redactions
    _token: str | None = field(default=None, init=False)

    async def token(self, stale: str | None) -> str:
        if self._token is None or self._token == stale:
            fresh = await _read(self.path, "token file")
            if not fresh or fresh == stale:
                raise ApiError("auth", f"the token in {self.path} was rejected or is empty")
            self._token = self.redactions.remember(fresh)
        return self._token


@dataclass(repr=False, slots=True)  # (no repr: it would show the secret and the token)
class ClientCredentials:
    """OAuth2 client_credentials tokens, reused until shortly before they expire. A secret given
    as a Path is re-read for each token: a rotated Kubernetes Secret is picked up at the next."""

    post_form: PostForm
    client_id: str
    secret: str | Path
    _: KW_ONLY
    redactions: Redactions
    on_refreshed: Callable[[float], None]
    clock: Callable[[], float]
    _token: str | None = field(default=None, init=False)
    _renew_at: float = field(default=0.0, init=False)
    # One refresh at a time: fifty polls finding an expired token must cause one POST.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def token(self, stale: str | None) -> str:
        async with self._lock:
            if self._token is not None and self._token != stale and self.clock() < self._renew_at:
                return self._token
            secret = self.secret
            if isinstance(secret, Path):
                secret = await _read(secret, "client secret file")
            form = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.redactions.remember(secret),
            }
            answer = await self.post_form("/oauth/access_token", form)
            # The authentication description's examples wrap the token in `data`; the SDKs and
            # Elastic Path's own CLI read it flat. Both are answers the API can give.
            body = answer.get("data") if isinstance(answer, dict) and "data" in answer else answer
            if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise ApiError("bad_response", "token answer has no access_token")
            expires_in = body.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
            self._token = self.redactions.remember(body["access_token"])
            self._renew_at = self.clock() + max(lifetime - TOKEN_MARGIN_SECONDS, lifetime / 2)
            self.on_refreshed(lifetime)
            return self._token
