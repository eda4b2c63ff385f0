"""`python -m monitor.simulator`: serve a populated simulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

from monitor.simulator.demo import populate_demo
from monitor.simulator.server import Simulator


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a populated simulator until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m monitor.simulator", description="Serve a fake Elastic Path store."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--promotions", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5, help="jobs per promotion")
    parser.add_argument(
        "--lifecycle-period", type=float, default=2.0, help="seconds between steps; 0 = frozen"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client-id", default="demo-client-id")
    parser.add_argument("--client-secret", default="demo-client-secret")
    parser.add_argument("--token-ttl", type=float, default=3600.0)
    parser.add_argument(
        "--page-cap", type=_positive, default=None, help="serve at most this many records per page"
    )
    parser.add_argument(
        "--ignore-offset", action="store_true", help="ignore page[offset]: always the first page"
    )
    parser.add_argument(
        "--unordered", action="store_true", help="list jobs in a fresh random order each request"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # (a Ctrl-C before the handlers are in place)
        asyncio.run(_serve(args))


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


async def _serve(args: argparse.Namespace) -> None:
    # Handlers of our own, as the daemon's: a background job of a non-interactive shell starts
    # with SIGINT ignored, and Python's default for SIGTERM is to die without stopping the server.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sim = Simulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        seed=args.seed,
        page_cap=args.page_cap,
        ignore_offset=args.ignore_offset,
        unordered=args.unordered,
    )
    populate_demo(sim, args.promotions, args.jobs)
    base_url = await sim.start(args.host, args.port)
    # the variable names Elastic Path's own CLI reads, so the line can be pasted into a shell
    print(
        f"EPCC_API_BASE_URL={base_url} EPCC_CLIENT_ID={sim.client_id} "
        f"EPCC_CLIENT_SECRET={sim.client_secret}",
        flush=True,
    )
    try:
        async with asyncio.TaskGroup() as tasks:  # (a lifecycle step that raises ends it too)
            period = args.lifecycle_period
            lifecycle = tasks.create_task(sim.run_lifecycle(period)) if period > 0 else None
            await stop.wait()
            if lifecycle is not None:
                lifecycle.cancel()
    finally:
        await sim.stop()
