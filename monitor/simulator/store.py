"""The simulated store's data: promotions, their jobs, and the lifecycle that moves the jobs on.

Everything random comes from one seeded stream, so `--seed N` always serves the same ids,
lifecycles and failure messages.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, get_args

from monitor.simulator.rendering import (
    Job,
    Kind,
    Promotion,
    ResultKey,
    Timestamps,
    checked_time,
    iso_millis,
    render_job,
    render_promotion,
)

JOB_TYPES = ("code_generate", "code_export")
JOB_STATUSES = ("pending", "processing", "completed", "failed", "cancelling", "cancelled")
# Promotions Builder refuses a code_generate job asking for more (its job schema's maximum).
# Both descriptions cap a code_generate job's number_of_codes at 1000 (PS's job schema
# declares the maximum; PB's too).
MAX_CODES = 1000
RULE_MAX_CODES = MAX_CODES  # (the name tests and callers knew)

# Code counts the lifecycle picks from, within the maximum (one length for both kinds, so
# the seeded draws, and the ids a seed serves, do not move).
_SPAWN_CODES: dict[Kind, tuple[int, ...]] = {
    "promotion": (100, 250, 500, 750, 1000),
    "rule_promotion": (50, 100, 250, 500, 1000),
}
# Templates are weighted so the failure the monitor exists for dominates; the numbers and ids
# in the others make the monitor's error normalisation do real work.
_FAILURES: dict[str, tuple[tuple[str, int], ...]] = {
    "code_generate": (
        ("codes limit exceeded", 5),
        ("Promotion code generation failed: database timeout after {seconds}s", 2),
        ("code generation aborted after {done} of {total} codes: duplicate code collision", 1),
    ),
    "code_export": (
        ("export failed: storage unavailable (request id {request_id})", 3),
        ("export failed: upload of {total} codes timed out after {seconds}s", 1),
    ),
}


class Store:
    """Promotions and jobs held in memory, changed by hand or by the seeded lifecycle."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        result_key: ResultKey = "result",
    ) -> None:
        self.transitions = 0
        self.failure_rate = 0.2
        self.spawn_rate = 0.1
        # Of the code_generate jobs that complete, how many make fewer codes than asked.
        self.shortfall_rate = 0.05
        # PBcf names a job's result `generate_result`: a documented variant, not a fault.
        self.result_key: ResultKey = result_key
        # How jobs' meta.timestamps are written ("missing", "zero", "frozen"): answers the API
        # allows.
        self.timestamps: Timestamps = "kept"
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 -- reproducible lifecycles, not secrets
        self._promotions: dict[str, Promotion] = {}

    def now(self) -> float:
        """The store's clock: job timestamps and token expiry are read from it."""
        return self._clock()

    def failure_message(self, job_type: str, number_of_codes: int) -> str:
        """A realistic failure message for a job, drawn from the store's seeded stream."""
        templates = _FAILURES.get(job_type, _FAILURES["code_generate"])
        rng = self._rng
        template = rng.choices([t for t, _ in templates], [w for _, w in templates])[0]
        return template.format(
            seconds=rng.choice((30, 45, 60, 90)),
            done=rng.randint(0, number_of_codes),
            total=number_of_codes,
            request_id=f"{rng.getrandbits(64):016x}",
        )

    # data

    def add_promotion(
        self,
        kind: Kind = "promotion",
        *,
        promotion_id: str | None = None,
        name: str | None = None,
        enabled: bool = True,
        end: str | None = None,
        created_at: float | None = None,
    ) -> str:
        """Create a promotion and return its id (created now, unless `created_at` says)."""
        if kind not in get_args(Kind):
            raise ValueError(f"unknown promotion kind {kind!r}")
        promotion_id = promotion_id or self._new_id()
        if promotion_id in self._promotions:
            raise ValueError(f"promotion {promotion_id} already exists")
        now = self._clock()
        end = end or iso_millis(now + timedelta(days=365).total_seconds())
        self._promotions[promotion_id] = Promotion(
            id=promotion_id,
            kind=kind,
            name=name or f"Promotion {len(self._promotions) + 1}",
            enabled=enabled,
            start=_start_before(now, end),
            end=end,
            promotion_type="rule_promotion" if kind == "rule_promotion" else "fixed_discount",
            automatic=False,
            created_at=now if created_at is None else created_at,
            updated_at=now if created_at is None else created_at,
        )
        return promotion_id

    def remove_promotion(self, promotion_id: str) -> None:
        """Delete a promotion and its jobs; its jobs endpoint then answers 404."""
        del self._promotions[promotion_id]

    def set_promotion(
        self,
        promotion_id: str,
        *,
        enabled: bool | None = None,
        end: str | None = None,
        name: str | None = None,
    ) -> None:
        promotion = self._promotions[promotion_id]
        promotion.updated_at = self._clock()
        if enabled is not None:
            promotion.enabled = enabled
        if end is not None:
            promotion.start = _start_before(checked_time(promotion.start).timestamp(), end)
            promotion.end = end
        if name is not None:
            promotion.name = name

    def add_job(
        self,
        promotion_id: str,
        *,
        job_type: str = "code_generate",
        status: str = "pending",
        error: str | None = None,
        job_id: str | None = None,
        created_at: float | None = None,
        updated_at: float | None = None,
        number_of_codes: int = 1000,
        name: str = "job",
    ) -> str:
        """Add a job as given, without the real API's one-active-job check, and return its id.

        Like the API, a code_generate job over 1000 codes is refused.
        """
        promotion = self._promotions[promotion_id]
        if job_type == "code_generate" and number_of_codes > MAX_CODES:
            raise ValueError(
                f"number_of_codes {number_of_codes} is above the API's maximum of {MAX_CODES}"
            )
        job_id = job_id or self._new_id()
        if job_id in promotion.jobs:
            raise ValueError(f"job {job_id} already exists")
        created = self._clock() if created_at is None else created_at
        promotion.jobs[job_id] = Job(
            id=job_id,
            job_type=job_type,
            name=name,
            status=status,
            number_of_codes=number_of_codes,
            error=error,
            created_at=created,
            updated_at=created if updated_at is None else updated_at,
            started=status != "pending",
        )
        return job_id

    def add_jobs(
        self,
        promotion_id: str,
        count: int,
        *,
        job_type: str = "code_generate",
        status: str = "pending",
        error: str | None = None,
        created_at: float | None = None,
        number_of_codes: int = 1000,
    ) -> list[str]:
        return [
            self.add_job(
                promotion_id,
                job_type=job_type,
                status=status,
                error=error,
                created_at=created_at,
                number_of_codes=number_of_codes,
            )
            for _ in range(count)
        ]

    def set_job_status(
        self,
        promotion_id: str,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        generated: int | None = None,
    ) -> None:
        """Set a job's status and error; bumps updated_at and counts a transition if it changed.

        `generated`: for a code_generate job completing, how many codes it made (a shortfall
        when fewer than its number_of_codes); by default all of them.
        """
        job = self._promotions[promotion_id].jobs[job_id]
        job.generated = generated
        self._change(job, status, error)

    def remove_job(self, promotion_id: str, job_id: str) -> None:
        del self._promotions[promotion_id].jobs[job_id]

    def jobs(self, promotion_id: str) -> list[dict[str, Any]]:
        """The promotion's jobs as the API renders them, in API order."""
        promotion = self._promotions[promotion_id]
        return [self.render_job(promotion, job) for job in promotion.jobs.values()]

    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion, both kinds, as the list endpoints render them."""
        return [render_promotion(p) for p in self._promotions.values()]

    # what the HTTP routes read

    def find(self, kind: Kind, promotion_id: str) -> Promotion | None:
        """The promotion, if it exists under this kind's endpoints."""
        promotion = self._promotions.get(promotion_id)
        return promotion if promotion is not None and promotion.kind == kind else None

    def listed(self, kind: Kind) -> list[Promotion]:
        """This kind's promotions, in the order they were created."""
        return [p for p in self._promotions.values() if p.kind == kind]

    def render_job(self, promotion: Promotion, job: Job) -> dict[str, Any]:
        return render_job(promotion, job, self.result_key, self.timestamps)

    # autonomous lifecycle

    def step(self) -> int:
        """Advance every promotion's job queue once and return the number of transitions."""
        made = 0
        for promotion in list(self._promotions.values()):
            jobs = list(promotion.jobs.values())
            for job in jobs:
                if job.status == "cancelling":
                    made += self._change(job, "cancelled")
                elif job.status == "processing":
                    if self._rng.random() < self.failure_rate:
                        message = self.failure_message(job.job_type, job.number_of_codes)
                        made += self._change(job, "failed", message)
                    else:
                        if job.job_type == "code_generate" and (
                            self._rng.random() < self.shortfall_rate
                        ):
                            job.generated = self._rng.randrange(job.number_of_codes)
                        made += self._change(job, "completed")
            pending = [job for job in jobs if job.status == "pending"]
            if pending:
                made += self._change(min(pending, key=lambda job: job.created_at), "processing")
            # disabled promotions get jobs too: codes are made before a campaign is switched on
            elif self._rng.random() < self.spawn_rate:
                job_type = self._rng.choice(JOB_TYPES)
                codes = self._rng.choice(_SPAWN_CODES[promotion.kind])
                self.add_job(promotion.id, job_type=job_type, number_of_codes=codes)
        return made

    async def run_lifecycle(self, period: float) -> None:
        """Call step() every period seconds until cancelled."""
        while True:
            await asyncio.sleep(period)
            self.step()

    def _change(self, job: Job, status: str, error: str | None = None) -> int:
        changed = job.status != status
        job.started = job.started or status == "processing"
        job.status = status
        job.error = error
        job.updated_at = self._clock()
        self.transitions += changed
        return int(changed)

    def _new_id(self) -> str:
        # From the seeded stream, so `--seed N` always serves the same promotion ids.
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


def _start_before(now: float, end: str) -> str:
    """Now, or a month before `end` when that has passed: a promotion starts before it ends."""
    ends = checked_time(end).timestamp()
    return iso_millis(min(now, ends - timedelta(days=30).total_seconds()))
