"""The `kind` label of the error counter: an error text with its ids and numbers masked, so one
kind of error is one series whatever it mentions, and a bounded number of them."""

from __future__ import annotations

import re
from typing import Final

MAX_ERROR_KINDS: Final = 50

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# Hex runs with a digit and a letter: request ids, hashes. Plain numbers are left to _NUMBER, so
# 5000 and 250000 normalize alike; words without digits ("deadline") are never masked.
_HEX = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,}\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WHITESPACE = re.compile(r"\s+")


def normalize_error(text: str) -> str:
    """Mask ids and numbers so one kind of error is one label value, whatever it mentions."""
    masked = _UUID.sub("<id>", text)
    masked = _HEX.sub("<id>", masked)
    masked = _NUMBER.sub("<n>", masked)
    masked = _WHITESPACE.sub(" ", masked).strip()
    return masked[:120] or "unknown"


class ErrorKinds:
    """Bounded set of normalized error label values; past the cap, new kinds become `other`."""

    def __init__(self, cap: int = MAX_ERROR_KINDS) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def label(self, error: str | None) -> str:
        kind = normalize_error(error or "")
        if kind not in self._seen and len(self._seen) >= self._cap:
            return "other"
        self._seen.add(kind)
        return kind
