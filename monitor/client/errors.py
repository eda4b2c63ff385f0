"""How a request can fail, as a type: one `Reason` serves the exceptions and the metric labels."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final, Literal, get_args

from monitor.client.clock import http_date
from monitor.models import single_line

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
MAX_RETRY_AFTER_SECONDS: Final = 300.0
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date; capped. `now` is
    the answer's own Date where it has one (RFC 9110 10.2.3): the store's clock, not the pod's."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        at = http_date(value)
        if at is None:
            return None
        seconds = at - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def valid_json(body: bytes, scrub: Callable[[str], str] = str) -> Any:
    """An answer's JSON with its text made valid where it enters: a byte that is not UTF-8, and
    a lone UTF-16 surrogate (a legal JSON escape), become U+FFFD, so that no writer downstream
    (metrics, page, logs, state) can fail on text that UTF-8 cannot encode. `scrub` takes the
    secrets out of the whole text first, before any field of it is cut to length."""
    document = json.loads(scrub(body.decode(json.detect_encoding(body), "replace")))
    # Only a \uD800-\uDFFF escape can make a lone surrogate; most answers hold no backslash.
    return _valid(document) if b"\\" in body and _SURROGATE_ESCAPE.search(body) else document


def _valid(value: object) -> object:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_valid(item) for item in value]
    if isinstance(value, dict):
        return {_valid(key): _valid(item) for key, item in value.items()}
    return value


def error_summary(body: bytes, scrub: Callable[[str], str] = str) -> str:
    """The title/detail of an Elastic Path error body, or a hint of what the body was."""
    try:
        document = valid_json(body, scrub)
        errors = document["errors"]
        # An array of error objects, as declared; one Promotions Standard example writes one
        # object instead.
        first = errors if isinstance(errors, dict) else errors[0]
        parts = [str(first.get(k)) for k in ("title", "detail") if first.get(k)]
        return single_line(": ".join(parts), 200) or "no error detail"
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        kind = "HTML page" if body.lstrip()[:1] == b"<" else f"{len(body)} bytes"
        return f"non-JSON error body ({kind})"


def decode_json(body: bytes, endpoint: str, scrub: Callable[[str], str] = str) -> object:
    """A 2xx answer's JSON; garbage is a transient bad_response (a truncated body retries)."""
    try:
        return valid_json(body, scrub)
    except (ValueError, RecursionError):
        raise ApiError(
            "bad_response", f"{endpoint}: answer is not JSON ({len(body)} bytes)", transient=True
        ) from None


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
