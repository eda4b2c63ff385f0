"""The token endpoint's side of the simulator: client credentials in, expiring bearer tokens out."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any, Literal

from monitor.simulator.answers import ApiError

TOKEN_PATH = "/oauth/access_token"  # noqa: S105 -- a URL path, not a password
# AUTHcf's token wrapped in `data`: a documented answer variant, not a fault.
TokenShape = Literal["flat", "wrapped"]


class Tokens:
    """Grants tokens for one client's credentials and checks them until they expire."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_ttl: float,
        token_shape: TokenShape,
        clock: Callable[[], float],
    ) -> None:
        # Public and settable, so a test can rotate the secret or shorten the lifetime mid-run.
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.token_shape: TokenShape = token_shape
        self.tokens_issued = 0
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._issued: list[str] = []  # every token ever issued, for leak checks in tests

    def grant(self, form: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to a token request, or ApiError(401) for a wrong grant or credentials."""
        if form.get("grant_type") != "client_credentials":
            raise ApiError(401, _refused("Unsupported grant type"))
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            raise ApiError(401, _refused("Invalid client credentials"))
        token = secrets.token_hex(20)
        now = self._clock()
        ttl = self.token_ttl
        self._expiry[token] = now + ttl
        self._issued.append(token)
        self.tokens_issued += 1
        answer = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "expires": int(now + ttl),
            "identifier": "client_credentials",
        }
        wrapped = self.token_shape == "wrapped"  # noqa: S105 -- an answer shape, not a password
        return {"data": answer} if wrapped else answer

    def authorises(self, authorization: str) -> bool:
        """Whether an Authorization header carries a bearer token that is live now."""
        scheme, _, token = authorization.partition(" ")
        expires = self._expiry.get(token.strip())
        return scheme.lower() == "bearer" and expires is not None and self._clock() < expires

    def revoke(self) -> None:
        self._expiry.clear()

    def issued(self) -> list[str]:
        """Every access token handed out so far, revoked or not."""
        return list(self._issued)


def _refused(detail: str) -> dict[str, Any]:
    # the authentication descriptions (AUTHcf's Error schema and examples) give status as a string
    return {"errors": [{"status": "401", "title": "Unauthorized", "detail": detail}]}
