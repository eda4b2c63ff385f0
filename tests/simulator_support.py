"""What the simulator's tests share: Elastic Path's examples and a minimal API client."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from monitor.simulator import Simulator

# Elastic Path's documented example responses (copied from shared/fixtures, see its README).
FIXTURES = Path(__file__).parent / "fixtures"
FILTER_ERROR = {
    "errors": [
        {"status": "400", "title": "Bad Request", "detail": "Could not parse the supplied filter"}
    ]
}
KNOWN_FAILURES = re.compile(
    r"codes limit exceeded"
    r"|Promotion code generation failed: database timeout after \d+s"
    r"|code generation aborted after \d+ of \d+ codes: duplicate code collision"
    r"|export failed: storage unavailable \(request id [0-9a-f]{16}\)"
    r"|export failed: upload of \d+ codes timed out after \d+s"
)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass
class Api:
    """A minimal client, so each test reads as requests and answers."""

    sim: Simulator
    http: aiohttp.ClientSession
    token: str = ""

    async def post_token(self, form: Mapping[str, str] | None = None) -> tuple[int, Any]:
        form = form or {
            "grant_type": "client_credentials",
            "client_id": "demo-client-id",
            "client_secret": "demo-client-secret",
        }
        async with self.http.post(f"{self.sim.base_url}/oauth/access_token", data=form) as resp:
            return resp.status, await resp.json()

    async def headers(self) -> dict[str, str]:
        if not self.token:
            status, body = await self.post_token()
            assert status == 200
            self.token = body["access_token"]
        return {"Authorization": f"Bearer {self.token}"}

    async def get(
        self, path: str, params: Mapping[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = await self.headers()
        url = f"{self.sim.base_url}{path}"
        async with self.http.get(url, params=params, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()

    async def raw(self, path: str) -> tuple[int, str, bytes]:
        headers = await self.headers()
        async with self.http.get(f"{self.sim.base_url}{path}", headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def jobs_path(promotion_id: str, kind: str = "promotion") -> str:
    prefix = "rule-promotions" if kind == "rule_promotion" else "promotions"
    return f"/v2/{prefix}/{promotion_id}/jobs"
