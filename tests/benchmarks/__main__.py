"""`make bench`: run every benchmark side by side, print a table, write JSON, PNG and summary.md.

    .venv/bin/python -m tests.benchmarks            # all of them (a few minutes)
    .venv/bin/python -m tests.benchmarks scale      # only some, by name
    .venv/bin/python -m tests.benchmarks --strict   # exit 1 when a target is missed

Results go to tests/benchmarks/results/: <name>.json (every number, targets, pass/fail),
<name>.png (plots) and summary.md (a markdown table for the docs). The exit code is 0 when
every benchmark ran (missed targets are reported, not fatal, unless --strict), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from tests.benchmarks import (
    budget,
    client_cost,
    detection,
    handover,
    polling,
    polling_whole,
    scale,
    whole,
)
from tests.benchmarks.common import RESULTS, Result, code_version, fmt, machine

BENCHMARKS: dict[str, tuple[str, Callable[[], Awaitable[Result]]]] = {
    budget.NAME: (budget.TITLE, budget.run),
    client_cost.NAME: (client_cost.TITLE, client_cost.run),
    scale.NAME: (scale.TITLE, scale.run),
    detection.NAME: (detection.TITLE, detection.run),
    polling.NAME: (polling.TITLE, polling.run),
    polling_whole.NAME: (polling_whole.TITLE, polling_whole.run),
    whole.NAME: (whole.TITLE, whole.run),
    handover.NAME: (handover.TITLE, handover.run),
}


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['implementation']} {info['python']}, Linux {info['kernel']}, "
        f"load average at start {' / '.join(str(x) for x in info['load_average_at_start'])}"
    )


def table_rows(results: Sequence[Result]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for result in results:
        for check in result.checks:
            value = fmt(check.value) + (f" {check.unit}" if check.unit else "")
            rows.append((result.name, check.metric, value, check.target, check.verdict))
    return rows


def print_table(results: Sequence[Result]) -> None:
    header = ("benchmark", "metric", "value", "target", "result")
    rows = [header, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def code_line(code: dict[str, Any]) -> str:
    modified = " + uncommitted changes to monitor/" if code["monitor_modified"] else ""
    return f"commit {code['commit']}{modified} (monitor/ sha256 {code['monitor_sha256']})"


def summary_markdown(
    results: Sequence[Result],
    info: dict[str, Any],
    code: dict[str, Any],
    started: datetime,
    seconds: float,
    changed: bool = False,
) -> str:
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {machine_line(info)}, "
        f"{code_line(code)}; the whole run took {seconds:.0f} s.",
        "",
        *(
            ["**monitor/ changed during this run: the numbers may mix two versions.**", ""]
            if changed
            else []
        ),
        "| benchmark | metric | value | target | result |",
        "|---|---|---|---|---|",
    ]
    for name, metric, value, target, verdict in table_rows(results):
        shown = "**FAIL**" if verdict == "FAIL" else verdict
        lines.append(f"| {name} | {metric} | {value} | {target} | {shown} |")
    lines.append("")
    plots = [r for r in results if r.plot]
    if plots:
        lines += [f"![{r.title}](tests/benchmarks/results/{r.plot})" for r in plots]
        lines.append("")
    return "\n".join(lines)


async def run_all(names: Sequence[str], code: dict[str, Any]) -> tuple[list[Result], list[str]]:
    results: list[Result] = []
    errors: list[str] = []
    for name in names:
        title, run = BENCHMARKS[name]
        print(f"== {name}: {title}", flush=True)
        started = time.perf_counter()
        try:
            result = await run()
        except Exception:
            detail = traceback.format_exc()
            print(detail, file=sys.stderr, flush=True)
            errors.append(name)
            result = Result(name, title, data={"error": detail})
            result.seconds = time.perf_counter() - started
        for check in result.checks:
            unit = f" {check.unit}" if check.unit else ""
            target = f"  (target {check.target})" if check.target else ""
            print(f"   {check.metric}: {fmt(check.value)}{unit}{target}  {check.verdict}")
        print(f"   {result.seconds:.1f} s", flush=True)
        (RESULTS / f"{name}.json").write_text(
            json.dumps(result.to_json() | {"machine": machine(), "code": code}, indent=2) + "\n",
            encoding="utf-8",
        )
        results.append(result)
    return results, errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    code = code_version()
    started = datetime.now(UTC)
    clock = time.perf_counter()
    print(f"machine: {machine_line(info)}", flush=True)
    print(f"code: {code_line(code)}", flush=True)
    results, errors = asyncio.run(run_all(names, code))
    seconds = time.perf_counter() - clock
    changed = code_version()["monitor_sha256"] != code["monitor_sha256"]
    print()
    print_table(results)
    print(f"\nmachine: {machine_line(info)}")
    print(f"code: {code_line(code)}")
    if changed:
        print(
            "WARNING: monitor/ changed during the run; benchmarks may have measured different "
            "code (in-process ones the code at the start). Run again for comparable numbers.",
            file=sys.stderr,
        )
    print(f"total: {seconds:.0f} s; results in {RESULTS}")
    if set(names) == set(BENCHMARKS):
        (RESULTS / "summary.md").write_text(
            summary_markdown(results, info, code, started, seconds, changed), encoding="utf-8"
        )
    missed = [c.metric for r in results for c in r.checks if c.passed is False]
    if errors:
        print(f"benchmarks that did not run to the end: {', '.join(errors)}", file=sys.stderr)
        return 1
    if missed and args.strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
