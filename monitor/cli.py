"""`promo-monitor run | once | check-config | demo`: a user error (a bad config, a port in use)
ends in one clear line on stderr and exit 2 or 1, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from monitor import __version__
from monitor.app import Monitor, serve
from monitor.settings import (
    CONFIG_ENV,
    DEFAULT_PORT,
    ConfigError,
    Settings,
    check_kubernetes,
    load_settings,
    parse_settings,
    summary,
)
from monitor.sinks.logs import configure_logging
from monitor.table import render_table

EXIT_OK, EXIT_POLL_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promo-monitor",
        description="Watch Elastic Path promotion code jobs; failures become metrics and events.",
    )
    parser.add_argument("--version", action="version", version=f"promo-monitor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", type=Path, help=f"YAML config file (default: ${CONFIG_ENV})")
        return sub

    with_config("run", "Run the daemon: poll on a schedule, serve /metrics.")
    once = with_config("once", "Poll every promotion once and print what changed.")
    once.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json: one event per line (default); table: jobs by promotion and status",
    )
    with_config("check-config", "Validate a config file and print a summary.")
    demo = commands.add_parser(
        "demo", help="Run against a built-in simulated Elastic Path (no credentials needed)."
    )
    demo.add_argument("--duration", type=float, help="stop after S seconds")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT, help="metrics port")
    demo.add_argument("--promotions", type=int, default=4, help="simulated promotions")
    return parser


def _config_path(given: Path | None) -> Path:
    if found := given or os.environ.get(CONFIG_ENV):
        return Path(found)
    raise ConfigError([f"config: pass --config FILE or set {CONFIG_ENV}"])


def _fail(lines: Sequence[str], code: int) -> int:
    for line in lines:
        print(f"promo-monitor: {line}", file=sys.stderr)
    return code


async def _run(settings: Settings) -> int:
    return await serve(Monitor.build(settings))


async def _once(settings: Settings, fmt: str) -> int:
    if fmt == "table":
        # stdout is the table; warnings (failed polls) still reach the user, on stderr.
        configure_logging("warning", "json", stream=sys.stderr)
    else:
        configure_logging(settings.log.level, "json")
    # One poll of every promotion, whoever holds the lease: it takes part in no election.
    monitor = Monitor.build(settings, serve_http=False, coordinated=False)
    outcomes = await monitor.run_once()
    if fmt == "table":
        print(render_table(monitor, outcomes))
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_POLL_FAILED


async def _demo(duration: float | None, port: int, promotions: int) -> int:
    # Imported here: only the demo needs the simulator, and `run` should not load it.
    from monitor.simulator import Simulator, populate_demo  # noqa: PLC0415

    simulator = Simulator(seed=7)
    populate_demo(simulator, promotions=promotions, jobs_per_promotion=12)
    base_url = await simulator.start("127.0.0.1", 0)
    lifecycle = asyncio.create_task(simulator.run_lifecycle(period=3.0))
    with tempfile.TemporaryDirectory(prefix="promo-monitor-demo-") as state_dir:
        document = {
            "api": {
                "base_url": base_url,
                "client_id": "demo-client-id",
                "client_secret": "demo-client-secret",
                "max_requests_per_second": 20,
            },
            "poll": {"interval_seconds": 5, "stuck_after_seconds": 60},
            "promotions": [{"id": p["id"], "kind": p["type"]} for p in simulator.promotions()],
            "server": {"host": "127.0.0.1", "port": port},
            "state": {"path": str(Path(state_dir) / "monitor.db")},
        }
        settings = parse_settings(document)
        configure_logging("info", "console")
        print(
            f"demo: simulated Elastic Path at {base_url}; status page at http://127.0.0.1:{port}/, "
            f"metrics at http://127.0.0.1:{port}/metrics (Ctrl-C to stop)",
            flush=True,
        )
        stop = asyncio.Event()
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        try:
            return await serve(Monitor.build(settings), stop)
        finally:
            lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lifecycle
            await simulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return asyncio.run(_demo(args.duration, args.port, args.promotions))
        settings = load_settings(_config_path(args.config))
        if args.command == "once":
            return asyncio.run(_once(settings, args.format))
        check_kubernetes(settings, os.environ)  # run elects; check-config judges what run runs
        if args.command == "check-config":
            print(f"config OK: {args.config or os.environ.get(CONFIG_ENV)}")
            print(summary(settings))
            return EXIT_OK
        configure_logging(settings.log.level, settings.log.format)
        return asyncio.run(_run(settings))
    except ConfigError as exc:
        return _fail(exc.problems, EXIT_CONFIG)
    except OSError as exc:
        # The usual one: the metrics port is already taken.
        return _fail([f"{exc.strerror or exc}"], EXIT_POLL_FAILED)
    except KeyboardInterrupt:
        return EXIT_OK
