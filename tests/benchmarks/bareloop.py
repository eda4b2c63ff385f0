"""The floor for the whole-process benchmark: a bare aiohttp loop that GETs and decodes jobs pages.

`python -m tests.benchmarks.bareloop CONFIG.json` reads ``{"base_url", "client_id",
"client_secret", "promotions": [[id, kind], ...], "rate", "concurrency"}``, takes a token, then
GETs every promotion's first jobs page in turn (the daemon's URL and query) and `json.loads`
it, `concurrency` requests at a time, spaced 1/rate apart, until killed. It runs as a process of
its own so its CPU is read from /proc exactly as the daemon's is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

SEGMENT = {"promotion": "promotions", "rule_promotion": "rule-promotions"}


class Pace:
    """Grants one request slot every 1/rate seconds, never a burst of overdue ones."""

    def __init__(self, rate: float) -> None:
        self.gap = 1 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


async def token(session: aiohttp.ClientSession, config: dict[str, Any]) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": config["client_id"],
        "client_secret": config["client_secret"],
    }
    async with session.post(config["base_url"] + "/oauth/access_token", data=form) as response:
        response.raise_for_status()
        return str((await response.json())["access_token"])


async def loop(config: dict[str, Any]) -> None:
    base = config["base_url"]
    urls = [f"{base}/v2/{SEGMENT[kind]}/{pid}/jobs" for pid, kind in config["promotions"]]
    params = {"page[limit]": "100", "page[offset]": "0"}
    pace = Pace(float(config["rate"]))
    concurrency = int(config["concurrency"])
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {await token(session, config)}"}

        async def worker(first: int) -> None:
            for n in itertools.count(first, concurrency):
                await pace.wait()
                async with session.get(urls[n % len(urls)], params=params, headers=headers) as r:
                    page = json.loads(await r.read())
                    if r.status != 200 or "data" not in page:
                        raise RuntimeError(f"jobs page answered {r.status}")

        await asyncio.gather(*(worker(k) for k in range(concurrency)))


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    asyncio.run(loop(config))


if __name__ == "__main__":
    main()
