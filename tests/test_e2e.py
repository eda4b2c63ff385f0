"""End to end: simulator -> promo-monitor -> real Prometheus -> real Alertmanager -> a webhook.

Each test gets its own chain (tests/e2e_support.py), so scenarios neither depend on nor disturb
each other. Prometheus evaluates the shipped deploy/prometheus/alerts.yaml with `for:` and
`keep_firing_for:` shortened (a minute lasts a second); Alertmanager routes, groups and inhibits as
the shipped deploy/alertmanager/alertmanager.yaml does, with 1 s group timers. Every scenario is
judged by what reaches the webhook, and by Prometheus's own view of the alerts where the webhook
alone could not tell (an inhibited alert, a flap that was never delivered).

Run with `-s` to see the measured times (failure -> delivered alert, and the others).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.simulator import Fault, Simulator
from tests.e2e_support import (
    EVALUATION_INTERVAL,
    JOB_NAME,
    Received,
    Stack,
    Tools,
    eventually,
    parse_time,
    running_stack,
    settings_summary,
)
from tests.support import long_ago, require_tool

pytestmark = pytest.mark.e2e

JOB_FAILED = "PromoMonitorJobFailed"
DOWN = "PromoMonitorDown"
ABSENT = "PromoMonitorAbsent"
POLLING_FAILING = "PromoMonitorPollingFailing"
SHORTFALL = "PromoMonitorCodesShortfall"
LISTING = "PromoMonitorListingIncomplete"
ERROR = "codes limit exceeded"
OLD_ERROR = "Promotion code generation failed: database timeout after 30s"
# Receivers of the shipped Alertmanager config, by severity, and the URL path of their webhook.
PAGER = ("promo-monitor-pager", "/pager")
CHAT = ("promo-monitor-chat", "/chat")


@dataclass
class Store:
    sim: Simulator
    quiet: str  # only jobs that failed before the monitor started
    watched: str  # one job failed before the start, one processing that a test fails
    old_failure: str  # the failed job of `watched`
    running: str  # the processing job of `watched`
    flaky: str  # a Promotions Builder promotion whose polls a test makes fail

    def promotions(self) -> list[dict[str, Any]]:
        return [
            {"id": self.quiet, "kind": "promotion"},
            {"id": self.watched, "kind": "promotion"},
            {"id": self.flaky, "kind": "rule_promotion"},
        ]


@pytest.fixture
def tools() -> Tools:
    return Tools(
        prometheus=require_tool("prometheus"),
        alertmanager=require_tool("prometheus-alertmanager"),
        promtool=require_tool("promtool"),
        amtool=require_tool("amtool"),
    )


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    sim = Simulator(seed=4)
    quiet = sim.add_promotion("promotion", name="Quiet")
    # Failures long before the monitor started (past its baseline lookback): history, not news.
    sim.add_jobs(quiet, 2, status="failed", error=ERROR, created_at=long_ago())
    sim.add_job(
        quiet, job_type="code_export", status="failed", error="export failed", created_at=long_ago()
    )
    sim.add_jobs(quiet, 2, status="completed")
    watched = sim.add_promotion("promotion", name="Watched")
    old_failure = sim.add_job(watched, status="failed", error=OLD_ERROR, created_at=long_ago())
    sim.add_job(watched, job_type="code_export", status="completed")
    running = sim.add_job(watched, status="processing")
    flaky = sim.add_promotion("rule_promotion", name="Flaky")
    sim.add_job(flaky, status="completed")
    await sim.start()
    try:
        yield Store(sim, quiet, watched, old_failure, running, flaky)
    finally:
        await sim.stop()


@pytest.fixture
async def stack(tools: Tools, store: Store, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, store.sim, store.promotions(), tools) as stack:
        yield stack


def assert_delivered(received: Received, to: tuple[str, str], **labels: str) -> None:
    """The alert came with exactly `labels`, to the (receiver, webhook path) `to`."""
    assert received.labels == labels
    assert (received.delivery.payload["receiver"], received.delivery.path) == to


def assert_paged_for_the_watched_job(received: Received, store: Store) -> None:
    """The watched promotion's code_generate job failed, and paged."""
    assert_delivered(
        received,
        PAGER,
        alertname=JOB_FAILED,
        severity="critical",
        promotion_id=store.watched,
        job_type="code_generate",
    )


async def warned_in_chat(stack: Stack, alert: str, promotion: str, *, since: float) -> Received:
    """The warning `alert` for `promotion`, delivered to chat within its `for:` and 30 s."""
    waits = stack.for_seconds[alert]
    received = await stack.webhook.wait_for(
        alert, promotion_id=promotion, since=since, timeout=waits + 30
    )
    print(
        f"\n{alert} delivered after {received.delivery.at - since:.1f} s "
        f"(for: {waits:g}s; {settings_summary()})"
    )
    assert_delivered(received, CHAT, alertname=alert, severity="warning", promotion_id=promotion)
    return received


def only_one(found: list[Received], what: str) -> Received:
    assert len(found) == 1, f"{what}: expected one, got\n" + "\n".join(map(str, found))
    return found[0]


async def fail_watched_job(stack: Stack, store: Store) -> tuple[Received, float, float]:
    """Turn the running job `failed`; the delivered alert, and when the status changed."""
    changed, changed_wall = time.monotonic(), time.time()
    store.sim.set_job_status(store.watched, store.running, "failed", error=ERROR)
    received = await stack.webhook.wait_for(
        JOB_FAILED, promotion_id=store.watched, since=changed, timeout=20
    )
    return received, changed, changed_wall


async def alerts_history(stack: Stack, selector: str, start: float) -> list[dict[str, Any]]:
    """Every ALERTS series (pending or firing) matching `selector` since `start` (Unix time)."""
    return await stack.api.query_range(f"ALERTS{{{selector}}}", start, time.time(), 0.5)


async def test_failures_from_before_the_start_fire_nothing(stack: Stack, store: Store) -> None:
    async with stack.diagnostics():
        await stack.wait_evaluations(5)

        # What the rules see: the failed jobs are there, none of them counted as a failure.
        failed = await stack.api.query(
            f'epcc_promotion_jobs{{promotion_id="{store.quiet}",status="failed"}}'
        )
        assert sum(float(s["value"][1]) for s in failed) == 3
        info = await stack.api.query("epcc_promotion_job_failed_info")
        assert {s["metric"]["job_id"] for s in info} >= {store.old_failure}
        assert len(info) == 4
        counters = await stack.api.query("epcc_promotion_job_failures_total")
        assert len(counters) == 6  # 3 promotions x 2 job types, pre-set
        assert {s["value"][1] for s in counters} == {"0"}
        # Every shipped rule evaluates cleanly against the real series.
        unhealthy = [
            (rule["name"], rule["health"], rule.get("lastError"))
            for rule in await stack.api.rules()
            if rule["health"] != "ok"
        ]
        assert unhealthy == []

        # Not even pending at any evaluation since Prometheus started; nothing fired at all.
        assert (
            await alerts_history(stack, f'alertname="{JOB_FAILED}"', stack.prometheus_started) == []
        )
        assert await alerts_history(stack, 'alertstate="firing"', stack.prometheus_started) == []
        assert stack.webhook.deliveries == []


async def test_a_job_turning_failed_is_delivered_with_its_error(
    stack: Stack, store: Store, tmp_path: Path
) -> None:
    async with stack.diagnostics():
        received, changed, changed_wall = await fail_watched_job(stack, store)
        delivered = received.delivery.at - changed

        event = await stack.daemon.wait_for("job_failed")
        alert = await stack.prometheus_alert(JOB_FAILED, promotion_id=store.watched)
        assert alert is not None
        timing = {
            "settings": settings_summary(),
            "detected_by_monitor_seconds": parse_time(event["timestamp"]) - changed_wall,
            "firing_in_prometheus_seconds": parse_time(alert["activeAt"]) - changed_wall,
            "delivered_to_webhook_seconds": delivered,
        }
        (tmp_path / "e2e-timing.json").write_text(json.dumps(timing, indent=2), encoding="utf-8")
        print(
            f"\nfailure -> delivered alert: {delivered:.1f} s "
            f"(monitor saw it after {timing['detected_by_monitor_seconds']:.1f} s, "
            f"Prometheus fired after {timing['firing_in_prometheus_seconds']:.1f} s; "
            f"{settings_summary()})"
        )

        assert received.status == "firing"
        assert_paged_for_the_watched_job(received, store)
        assert received.delivery.payload["groupLabels"] == {
            "alertname": JOB_FAILED,
            "promotion_id": store.watched,
        }
        annotations = received.annotations
        # The person paged reads the promotion's name first (its id beside it, to act on).
        assert annotations["summary"] == (
            f'A code_generate job of promotion "Watched" ({store.watched}) failed'
        )
        # The new failure with its error, and not the one from before the monitor started (the
        # template lists the failed jobs that are new within its window).
        description = annotations["description"]
        assert f"Failed job(s): {store.running}: {ERROR}." in description
        assert store.old_failure not in description
        assert annotations["runbook_url"].endswith("runbook.md#promomonitorjobfailed")

        # One failure, one alert: a few more evaluations add nothing.
        await stack.wait_evaluations(3)
        only_one(stack.webhook.alerts(), "notifications")


@pytest.mark.parametrize("how", ["hung", "killed"])
async def test_monitor_down_fires_and_job_alerts_do_not_flap(
    stack: Stack, store: Store, how: str
) -> None:
    """`hung`: SIGSTOP, the port accepts but nothing answers (scrapes time out); SIGCONT after.
    `killed`: SIGKILL, the port refuses; then the monitor is started again on its saved state."""
    async with stack.diagnostics():
        job_alert, _, _ = await fail_watched_job(stack, store)
        before = await stack.prometheus_alert(JOB_FAILED, promotion_id=store.watched)
        assert before is not None
        assert before["state"] == "firing"

        stopped, stopped_wall = time.monotonic(), time.time()
        daemon = stack.daemon
        if how == "hung":
            daemon.process.send_signal(signal.SIGSTOP)
        else:
            assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        down_for = stack.for_seconds[DOWN]
        down = await stack.webhook.wait_for(DOWN, since=stopped, timeout=down_for + 20)
        print(
            f"\nmonitor {how} -> {DOWN} delivered: {down.delivery.at - stopped:.1f} s "
            f"(for: {down_for:g}s; {settings_summary()})"
        )
        assert_delivered(
            down,
            PAGER,
            alertname=DOWN,
            severity="critical",
            job=JOB_NAME,
            instance=f"127.0.0.1:{stack.daemon_port}",
        )

        # Meanwhile the job alert goes on firing in Prometheus, and Alertmanager holds it back
        # as a symptom of the monitor being down (the shipped inhibit rule).
        during = await stack.prometheus_alert(JOB_FAILED, promotion_id=store.watched)
        assert during is not None
        assert (during["state"], during["activeAt"]) == ("firing", before["activeAt"])

        async def job_alert_state(state: str) -> bool | None:
            alerts = [
                a
                for a in await stack.alertmanager_alerts(JOB_FAILED)
                if a["labels"].get("promotion_id") == store.watched
            ]
            return True if alerts and alerts[0]["status"]["state"] == state else None

        await eventually(
            lambda: job_alert_state("suppressed"), timeout=10, what=f"{JOB_FAILED} inhibited"
        )

        resumed = time.monotonic()
        if how == "hung":
            daemon.process.send_signal(signal.SIGCONT)
        else:
            restarted = await stack.start_daemon(len(store.promotions()))
            # The saved state: no new baseline, the failure is not reported again.
            assert restarted.named("baseline_loaded") == []
            assert restarted.named("job_failed") == []
        await stack.webhook.wait_for(DOWN, "resolved", since=resumed, timeout=20)
        await eventually(
            lambda: job_alert_state("active"), timeout=10, what=f"{JOB_FAILED} active again"
        )
        # Time for a flap to show: several evaluations and Alertmanager group intervals.
        await stack.wait_evaluations(4)

        after = await stack.prometheus_alert(JOB_FAILED, promotion_id=store.watched)
        assert after is not None
        assert (after["state"], after["activeAt"]) == ("firing", before["activeAt"])
        # Firing at every evaluation from its start until now: no resolved -> firing in between.
        since, until, step = parse_time(before["activeAt"]) + EVALUATION_INTERVAL, time.time(), 0.5
        history = await stack.api.query_range(
            f'ALERTS{{alertname="{JOB_FAILED}",alertstate="firing"}}', since, until, step
        )
        assert len(history) == 1
        points = len(history[0]["values"])
        expected = int((until - since) // step) + 1
        assert points == expected, f"firing at {points} of {expected} points since it fired"
        # Delivered once, as firing: no resolved notification, no second page.
        delivered = only_one(stack.webhook.alerts(JOB_FAILED), f"{JOB_FAILED} notifications")
        assert delivered.alert["startsAt"] == job_alert.alert["startsAt"]
        assert delivered.status == "firing"
        # The monitor-down cases are exclusive: Absent stays silent while Down covers it.
        assert await alerts_history(stack, f'alertname="{ABSENT}"', stopped_wall - 1) == []
        assert {r.name for r in stack.webhook.alerts()} == {JOB_FAILED, DOWN}


async def test_a_failure_while_the_pod_is_replaced_pages_once(stack: Stack, store: Store) -> None:
    """A sidecar keeps its snapshot in an emptyDir: a rollout takes the pod and its state. A job
    that fails between the old pod's end and the new pod's first poll must still page, once; the
    new pod is another instance, so its failure counter is a new series that starts at 1."""
    async with stack.diagnostics():
        await stack.wait_evaluations(3)
        old = stack.daemon
        assert await old.stop(signal.SIGKILL) == -signal.SIGKILL
        stack.scrape()  # the old pod's target leaves service discovery with the pod
        failed = time.monotonic()
        store.sim.set_job_status(store.watched, store.running, "failed", error=ERROR)

        new = await stack.replace_pod()

        # The baseline lookback reports it; the failure from two hours ago stays history.
        event = await new.wait_for("job_failed")
        assert (event["job_id"], event["during_baseline"]) == (store.running, True)
        assert new.named("job_failed") == [event]
        received = await stack.webhook.wait_for(
            JOB_FAILED, promotion_id=store.watched, since=failed, timeout=30
        )
        print(
            f"\nfailure during a pod replacement -> delivered: "
            f"{received.delivery.at - failed:.1f} s"
        )
        assert_paged_for_the_watched_job(received, store)
        assert f"{store.running}: {ERROR}" in received.annotations["description"]
        # What made it page: a new series that started at 1, which increase() cannot see.
        counter = await stack.api.query(
            f'epcc_promotion_job_failures_total{{promotion_id="{store.watched}",'
            f'job_type="code_generate",instance="127.0.0.1:{stack.daemon_port}"}}'
        )
        assert [s["value"][1] for s in counter] == ["1"]

        # Several more evaluations: still one notification, nothing else fired.
        await stack.wait_evaluations(5)
        only_one(stack.webhook.alerts(JOB_FAILED), f"{JOB_FAILED} notifications")
        assert {r.name for r in stack.webhook.alerts()} == {JOB_FAILED}


async def test_a_shortfall_is_delivered_naming_the_promotion(stack: Stack, store: Store) -> None:
    """A code_generate job that completes with fewer codes than asked is not a failure, but a
    person must hear of it: a warning to chat, with the promotion's name, not only its id."""
    async with stack.diagnostics():
        changed = time.monotonic()
        store.sim.set_job_status(store.watched, store.running, "completed", generated=640)
        received = await stack.webhook.wait_for(
            SHORTFALL, promotion_id=store.watched, since=changed, timeout=30
        )
        print(f"\nshortfall -> delivered: {received.delivery.at - changed:.1f} s")
        assert received.status == "firing"
        assert_delivered(
            received, CHAT, alertname=SHORTFALL, severity="warning", promotion_id=store.watched
        )
        text = received.annotations["summary"] + " " + received.annotations["description"]
        assert "Watched" in text  # the name Elastic Path has for it
        event = await stack.daemon.wait_for("job_incomplete")
        assert (event["codes_requested"], event["codes_generated"]) == (1000, 640)
        # Not a failure: no job alert, and one notification however long it fires.
        await stack.wait_evaluations(3)
        only_one(stack.webhook.alerts(SHORTFALL), f"{SHORTFALL} notifications")
        assert {r.name for r in stack.webhook.alerts()} == {SHORTFALL}


async def test_a_store_that_cannot_be_paged_warns_and_its_failures_still_page(
    stack: Stack, store: Store
) -> None:
    """The store starts to serve two jobs a page and to ignore page[offset]: the monitor can
    no longer read the watched promotion's third job. A person hears that (a warning naming the
    reason), and that job's failure still pages, read through the status filter."""
    async with stack.diagnostics():
        changed = time.monotonic()
        store.sim.page_cap = 2
        store.sim.ignore_offset = True
        received = await warned_in_chat(stack, LISTING, store.watched, since=changed)
        assert "page[offset]" in received.annotations["description"]
        assert "Watched" in received.annotations["summary"]

        failed, failed_at, _ = await fail_watched_job(stack, store)
        assert_paged_for_the_watched_job(failed, store)
        print(f"failure past the pages read -> delivered: {failed.delivery.at - failed_at:.1f} s")
        assert ERROR in failed.annotations["description"]


async def test_failing_polls_of_one_promotion_alert_for_it_only(
    stack: Stack, store: Store, tools: Tools
) -> None:
    async with stack.diagnostics():
        injected, injected_wall = time.monotonic(), time.time()
        store.sim.inject(Fault("status", status=503, times=None, path_contains=store.flaky))
        received = await warned_in_chat(stack, POLLING_FAILING, store.flaky, since=injected)
        assert "by reason: http_5xx." in received.annotations["description"]
        up = await stack.api.query("epcc_monitor_up")
        assert {s["metric"]["promotion_id"]: s["value"][1] for s in up} == {
            store.quiet: "1",
            store.watched: "1",
            store.flaky: "0",
        }

        # The exposition with poll errors and retries in it still passes promtool.
        status, text = await stack.daemon.get("/metrics")
        assert status == 200
        check = subprocess.run(
            [tools.promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert (check.returncode, check.stdout + check.stderr) == (0, "")

        cleared = time.monotonic()
        store.sim.clear_faults()
        await stack.webhook.wait_for(
            POLLING_FAILING, "resolved", promotion_id=store.flaky, since=cleared, timeout=30
        )
        await stack.wait_evaluations(2)

        # That promotion only, at every step: in Prometheus and at the webhook.
        history = await alerts_history(stack, f'alertname="{POLLING_FAILING}"', injected_wall - 1)
        assert {s["metric"]["promotion_id"] for s in history} == {store.flaky}
        assert {r.labels["promotion_id"] for r in stack.webhook.alerts(POLLING_FAILING)} == {
            store.flaky
        }
        assert {r.name for r in stack.webhook.alerts()} == {POLLING_FAILING}
