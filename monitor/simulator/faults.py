"""Injected faults: which request a fault hits, and the broken answer it gives instead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aiohttp import web

from monitor.simulator.answers import error_body, json_response, raw_json
from monitor.simulator.tokens import TOKEN_PATH

FaultKind = Literal[
    "status",
    "timeout",
    "reset",
    "truncated",
    "html",
    "wrong_shape",
    "huge",
    "slow",
    "empty",
    "raw_bytes",
]

HUGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_DELAY = 30.0

_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

# The answer the request would get without a fault.
NormalAnswer = Callable[[], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """One injected fault; matched against requests in injection order.

    A timeout with delay 0 hangs for DEFAULT_TIMEOUT_DELAY, so that the client gives up first.
    """

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    path_contains: str | None = None
    times: int | None = 1
    delay: float = 0.0
    # Only requests to exactly this path (a promotion, not its jobs below it).
    path: str | None = None


@dataclass
class _ArmedFault:
    fault: Fault
    remaining: int | None


class Faults:
    """The armed faults, in injection order, and the requests they hold."""

    def __init__(self) -> None:
        self._armed: list[_ArmedFault] = []
        self._stopping = asyncio.Event()

    def inject(self, fault: Fault) -> None:
        if fault.kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be at least 1, or None for until cleared")
        self._armed.append(_ArmedFault(fault, fault.times))

    def clear(self) -> None:
        self._armed.clear()

    def release(self) -> None:
        """Let every request held by a slow or timeout fault go on, for good (the server stops)."""
        self._stopping.set()

    def take(self, path: str) -> Fault | None:
        """The first armed fault matching the path, used up once."""
        for armed in self._armed:
            fault = armed.fault
            if fault.path is not None and fault.path != path:
                continue
            if fault.path_contains is None or fault.path_contains in path:
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if armed.remaining == 0:
                        self._armed.remove(armed)
                return armed.fault
        return None

    async def answer(
        self, fault: Fault, request: web.Request, normal: NormalAnswer
    ) -> tuple[web.StreamResponse, int]:
        """The faulty answer and the status recorded for it (0: nothing was sent)."""
        if fault.kind in ("slow", "timeout"):
            default = DEFAULT_TIMEOUT_DELAY if fault.kind == "timeout" else 0.0
            await self._pause(fault.delay or default)
            response = await normal()
            return response, response.status
        match fault.kind:
            case "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                return json_response(fault.status, error_body(fault.status), headers), fault.status
            case "reset":
                _reset(request)
                # never sent: the write fails on the closed transport and aiohttp drops it quietly
                return web.Response(status=500), 0
            case "raw_bytes":
                return await _raw_bytes(normal), 200
            case "truncated":
                full_answer = await normal()
                full = full_answer.body if isinstance(full_answer, web.Response) else None
                data = full if isinstance(full, bytes) else b'{"data": []}'
                return raw_json(data[: len(data) // 2]), 200
            case "html":
                return web.Response(
                    status=502, text=_BAD_GATEWAY_HTML, content_type="text/html"
                ), 502
            case "wrong_shape":
                shape: Any = (
                    [{"token": "not an object"}]
                    if request.path == TOKEN_PATH
                    else {"data": {"not": "a list"}}
                )
                return json_response(200, shape), 200
            case "huge":
                return await _stream_huge(request), 200
            case "empty":
                # Legal and hostile: a whole list with nothing in it, as a store mid-migration
                # or a replica lagging behind might answer once.
                return json_response(200, {"data": [], "meta": {"results": {"total": 0}}}), 200
        raise AssertionError(fault.kind)  # pragma: no cover

    async def _pause(self, seconds: float) -> None:
        # waiting on the stop event rather than sleeping lets stop() release held requests
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


# A lone low surrogate U+DC80..U+DCFF is how Python's "surrogateescape" holds one raw byte.
_ESCAPED_BYTE = re.compile(rb"\\u[dD][cC]([89a-fA-F][0-9a-fA-F])")


async def _raw_bytes(normal: NormalAnswer) -> web.Response:
    """The normal answer with each escaped U+DC80..U+DCFF in it written as the byte it stands
    for: a store's text `"caf\\udce9"` goes out as the Latin-1 bytes b"caf\\xe9", not UTF-8."""
    answer = await normal()
    body = answer.body if isinstance(answer, web.Response) else None
    data = body if isinstance(body, bytes) else b""
    return raw_json(_ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), data), answer.status)


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # linger 0 makes close() send RST, which is what a reset looks like to the client
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _stream_huge(request: web.Request) -> web.StreamResponse:
    """A valid ~64 MiB job list, written in blocks so it is never in memory at once."""
    item = json.dumps(
        {
            "type": "promotion_job",
            "id": "00000000-0000-4000-8000-000000000000",
            "promotion_id": "00000000-0000-4000-8000-000000000001",
            "job_type": "code_export",
            "name": "job",
            "status": "completed",
            "meta": {
                "timestamps": {
                    "created_at": "2024-01-01T00:00:00.000Z",
                    "updated_at": "2024-01-01T00:00:00.000Z",
                }
            },
        }
    ).encode()
    head, tail = b'{"data": [', b"]}"
    count = HUGE_BYTES // (len(item) + 1) + 1
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(head) + count * (len(item) + 1) - 1 + len(tail)
    await response.prepare(request)
    per_block = 2048
    # a client that stops reading closes the connection, which is the point of this fault
    with contextlib.suppress(ConnectionError):
        await response.write(head)
        for first in range(0, count, per_block):
            block = b",".join([item] * min(per_block, count - first))
            await response.write(block if first == 0 else b"," + block)
        await response.write(tail)
    return response
