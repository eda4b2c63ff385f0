"""Elastic Path's JSON answers and error bodies, shared by the routes, tokens and faults."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

UNAUTHORIZED: dict[str, Any] = {
    "errors": [{"status": 401, "title": "Unable to validate access token"}]
}
FILTER_ERROR: dict[str, Any] = {
    "errors": [
        {"status": "400", "title": "Bad Request", "detail": "Could not parse the supplied filter"}
    ]
}


class ApiError(Exception):
    """Raised by a handler to answer with an Elastic Path error body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    response = raw_json(json.dumps(body).encode(), status)
    if headers:
        response.headers.update({k: v for k, v in headers.items() if k != "Content-Type"})
    return response


def raw_json(body: bytes, status: int = 200) -> web.Response:
    """Bytes labelled as JSON, whether or not they parse (a truncated body does not)."""
    return web.Response(body=body, status=status, content_type="application/json")


def error_body(status: int) -> dict[str, Any]:
    """An Elastic Path error body; the status is a number for some and a string for others."""
    if status == 401:
        return UNAUTHORIZED
    error: dict[str, Any]
    if status >= 500:
        error = {
            "title": HTTPStatus(status).phrase,
            "status": str(status),
            "detail": "there was a problem processing your request",
            "request_id": str(uuid.uuid4()),
        }
    elif status == 400:
        error = {"status": "400", "title": "Bad Request", "detail": "The request was invalid"}
    else:
        details = {
            403: "You do not have permission to access this resource",
            404: "The requested promotion could not be found",
            429: "You have exceeded the rate limit for this store",
        }
        error = {"status": status, "title": _phrase(status)}
        if status in details:
            error["detail"] = details[status]
    return {"errors": [error]}


def bad_request(detail: str) -> dict[str, Any]:
    return {"errors": [{"status": 400, "title": "Bad Request", "detail": detail}]}


def _phrase(status: int) -> str:
    # an injected status need not be a registered one
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
