"""In-process fake of Elastic Path's promotion job API, for the demo, tests and benchmarks.

It answers like the real API (tokens, paged job lists, filters, error bodies, including the
quirks described in docs/elastic-path-api.md) and lets a test inject faults and drive job
lifecycles deterministically.

Modules, one concern each: `store` (promotions, jobs, lifecycle), `rendering` (their API
shape), `tokens`, `faults`, `query` (paging and filters), `answers` (JSON and error bodies),
`routes` (the aiohttp app), `server` (the Simulator that composes them), `demo`, `cli`.
"""

from monitor.simulator.cli import main
from monitor.simulator.demo import populate_demo
from monitor.simulator.faults import DEFAULT_TIMEOUT_DELAY, HUGE_BYTES, Fault, FaultKind
from monitor.simulator.query import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET
from monitor.simulator.rendering import Kind, ResultKey
from monitor.simulator.routes import RecordedRequest, RuleListShape
from monitor.simulator.server import Simulator
from monitor.simulator.store import JOB_STATUSES, JOB_TYPES, RULE_MAX_CODES
from monitor.simulator.tokens import TOKEN_PATH, TokenShape

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_TIMEOUT_DELAY",
    "HUGE_BYTES",
    "JOB_STATUSES",
    "JOB_TYPES",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "RULE_MAX_CODES",
    "TOKEN_PATH",
    "Fault",
    "FaultKind",
    "Kind",
    "RecordedRequest",
    "ResultKey",
    "RuleListShape",
    "Simulator",
    "TokenShape",
    "main",
    "populate_demo",
]
