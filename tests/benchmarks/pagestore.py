"""A store for the whole-process benchmark: the simulator, with its jobs pages served from memory.

`python -m tests.benchmarks.pagestore --promotions P --jobs J` fills a Simulator with P
promotions of J finished jobs (one in ten failed, each failure with its own error text), serves
it on 127.0.0.1 and prints one JSON line: ``{"base_url", "client_id", "client_secret",
"promotions": [[id, kind], ...]}``, then serves until killed.

Each jobs page is rendered once and kept as bytes until it changes, so the store's own CPU
stays small beside the client it is measuring (the two share a 2-core machine). Two control
routes for the benchmark: `GET /_bench/pages` counts the jobs pages served so far, and
`POST /_bench/news?on=1` makes every jobs page served from then on bring news to the next
one: a new job (every tenth a failure) and the oldest job dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from monitor.simulator import Kind, Simulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAILED_EVERY = 10
CODES = 500  # under Promotions Builder's limit for rule promotions


def _error(pid: str, n: int) -> str:
    # Every failure its own text, as the real store's (request ids, counts) make them.
    done = n * 37 % CODES
    return f"code generation stopped after {done} of {CODES} codes (request {pid[:8]}-{n:06d})"


class PageStore:
    """The simulator's data, its jobs pages cached as bytes, and the news switch."""

    def __init__(self, promotions: int, jobs: int, *, seed: int) -> None:
        self.sim = Simulator(seed=seed, token_ttl=86_400)
        self.pages = 0
        self.news = False
        self._cache: dict[str, tuple[int, bytes]] = {}
        self._version: dict[str, int] = {}
        self._jobs: dict[str, deque[str]] = {}
        self._added: dict[str, int] = {}
        self.kinds: dict[str, Kind] = {}
        now = time.time()
        for i in range(promotions):
            kind: Kind = "rule_promotion" if i % 3 == 2 else "promotion"
            pid = self.sim.add_promotion(kind)
            self.kinds[pid] = kind
            self._jobs[pid] = deque()
            self._added[pid] = 0
            for j in range(jobs):
                self._add_job(pid, at=now - (jobs - j) * 600.0)
        app = self.sim.app
        # Control outermost (the simulator would ask for a token), the page cache innermost.
        app.middlewares.insert(0, self._control)
        app.middlewares.append(self._cached)

    def _add_job(self, pid: str, at: float) -> None:
        n = self._added[pid]
        self._added[pid] = n + 1
        failed = n % FAILED_EVERY == 0
        job_id = self.sim.add_job(
            pid,
            status="failed" if failed else "completed",
            error=_error(pid, n) if failed else None,
            created_at=at,
            updated_at=at + 90.0,
            number_of_codes=CODES,
        )
        self._jobs[pid].append(job_id)

    def _change(self, pid: str) -> None:
        """One new job and the oldest one gone: the next page of this promotion has news."""
        self._add_job(pid, at=time.time() - 90.0)
        self.sim.remove_job(pid, self._jobs[pid].popleft())
        self._version[pid] = self._version.get(pid, 0) + 1

    @web.middleware
    async def _cached(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        parts = request.path.split("/")
        if request.method != "GET" or len(parts) != 5 or parts[4] != "jobs":
            return await handler(request)
        pid = parts[3]
        self.pages += 1
        version = self._version.get(pid, 0)
        hit = self._cache.get(request.path_qs)
        response: web.StreamResponse
        if hit is not None and hit[0] == version:
            response = web.Response(body=hit[1], content_type="application/json")
        else:
            response = await handler(request)
            body = response.body if isinstance(response, web.Response) else None
            if response.status == 200 and isinstance(body, bytes):
                self._cache[request.path_qs] = (version, body)
        if self.news and pid in self._jobs:
            self._change(pid)
        return response

    @web.middleware
    async def _control(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/_bench/pages":
            return web.json_response({"pages": self.pages})
        if request.path == "/_bench/news" and request.method == "POST":
            self.news = request.query.get("on") == "1"
            return web.json_response({"news": self.news})
        return await handler(request)


async def serve(promotions: int, jobs: int, seed: int) -> None:
    store = PageStore(promotions, jobs, seed=seed)
    base_url = await store.sim.start("127.0.0.1", 0)
    hello = {
        "base_url": base_url,
        "client_id": store.sim.client_id,
        "client_secret": store.sim.client_secret,
        "promotions": [[pid, kind] for pid, kind in store.kinds.items()],
    }
    sys.stdout.write(json.dumps(hello) + "\n")
    sys.stdout.flush()
    try:
        while True:
            await asyncio.sleep(5)
            # The request log would grow without bound. (Clearing it under a request that is
            # being recorded is safe here: a jobs page is answered without yielding.)
            store.sim.requests.clear()
    finally:
        await store.sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pagestore")
    parser.add_argument("--promotions", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.promotions, args.jobs, args.seed))


if __name__ == "__main__":
    main()
