"""The simulator in a process of its own, so its CPU and memory never count against the client.

`python -m tests.benchmarks.simserver --promotions N --jobs J [--mutate M]` fills a Simulator
with `populate_demo`, serves it on 127.0.0.1 (a free port) and prints one JSON line:
``{"base_url", "client_id", "client_secret", "promotions": [[id, kind], ...]}``, then serves
until killed. With `--mutate M`, every jobs page served for one of the first M promotions
changes one terminal job of that promotion (completed → failed → cancelled → completed …, a
failure every third time), so each poll of those finds a little news, as a busy store shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence

from aiohttp import web

from monitor.simulator import Simulator, populate_demo

_NEXT = {"completed": "failed", "failed": "cancelled", "cancelled": "completed"}
_ERROR = "codes limit exceeded"


class Mutator:
    """After each jobs page is sent, moves one terminal job of that promotion to its next status."""

    def __init__(self, sim: Simulator, job_ids: dict[str, list[str]]) -> None:
        self._sim = sim
        self._job_ids = job_ids
        self._turn: dict[str, int] = dict.fromkeys(job_ids, 0)
        self._status: dict[str, str] = {}
        for pid in job_ids:
            for job in sim.jobs(pid):
                self._status[job["id"]] = job["status"]

    async def on_prepare(self, request: web.Request, _: web.StreamResponse) -> None:
        parts = request.path.split("/")
        if len(parts) != 5 or parts[4] != "jobs":
            return
        pid = parts[3]
        ids = self._job_ids.get(pid)
        if not ids:
            return
        for _attempt in range(len(ids)):
            turn = self._turn[pid]
            self._turn[pid] = turn + 1
            job_id = ids[turn % len(ids)]
            status = self._status[job_id]
            if status in _NEXT:
                new = _NEXT[status]
                self._sim.set_job_status(
                    pid, job_id, new, error=_ERROR if new == "failed" else None
                )
                self._status[job_id] = new
                return


async def serve(promotions: int, jobs: int, *, mutate: int, seed: int) -> None:
    sim = Simulator(seed=seed)
    ids = populate_demo(sim, promotions, jobs)
    kinds = {p["id"]: p["type"] for p in sim.promotions()}
    if mutate:
        job_ids = {pid: [job["id"] for job in sim.jobs(pid)] for pid in ids[:mutate]}
        sim.app.on_response_prepare.append(Mutator(sim, job_ids).on_prepare)
    base_url = await sim.start("127.0.0.1", 0)
    hello = {
        "base_url": base_url,
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "promotions": [[pid, kinds[pid]] for pid in ids],
    }
    sys.stdout.write(json.dumps(hello) + "\n")
    sys.stdout.flush()
    try:
        while True:
            await asyncio.sleep(5)
            # The request log would grow without bound in a long benchmark; nobody reads it.
            sim.requests.clear()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.simserver")
    parser.add_argument("--promotions", type=int, required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument(
        "--mutate", type=int, default=0, help="the first M promotions change on every page"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.promotions, args.jobs, mutate=args.mutate, seed=args.seed))


if __name__ == "__main__":
    main()
