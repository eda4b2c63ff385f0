"""Discovery and sharding: watch a store's promotions without listing them; split replicas."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.app import Monitor
from monitor.discovery import shard_of, wanted
from monitor.events import BaselineLoaded
from monitor.settings import (
    DiscoverySettings,
    ShardingSettings,
    parse_settings,
    shard_index_from_env,
)
from monitor.simulator import Fault, Simulator
from tests.support import (
    Daemon,
    Recorder,
    long_ago,
    run_cli,
    running_daemon,
    series,
    value,
    write_config,
)

PAST = "2020-01-01T00:00:00.000Z"
FUTURE = "2099-01-01T00:00:00.000Z"


def ago(seconds: float) -> str:
    """An `end` date-time this long before now."""
    return datetime.fromtimestamp(time.time() - seconds, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def seed() -> int:
    return 11


def discovery(**overrides: Any) -> dict[str, Any]:
    return {"enabled": True, "interval_seconds": 0.5, **overrides}


def watched(samples: dict, kind: str) -> float | None:  # type: ignore[type-arg]
    return value(samples, "epcc_monitor_promotions", kind=kind)


def polled_ids(samples: dict) -> set[str]:  # type: ignore[type-arg]
    return {dict(labels)["promotion_id"] for labels in series(samples, "epcc_monitor_up")}


async def test_discovers_both_kinds_and_skips_disabled_expired_and_unmatched(
    sim: Simulator, tmp_path: Path
) -> None:
    live = sim.add_promotion("promotion", name="Summer sale", end=FUTURE)
    rule = sim.add_promotion("rule_promotion", name="Summer builder", end=FUTURE)
    sim.add_promotion("promotion", name="Summer off", enabled=False)
    sim.add_promotion("rule_promotion", name="Summer past", end=PAST)
    sim.add_promotion("promotion", name="Winter sale")
    for pid in (live, rule):
        sim.add_job(pid, status="completed")
    config = write_config(
        tmp_path, sim, [], discovery=discovery(name_pattern="^Summer", include_disabled=False)
    )
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded", count=2)
        samples = await daemon.metrics()
        assert polled_ids(samples) == {live, rule}
        assert watched(samples, "promotion") == 1
        assert watched(samples, "rule_promotion") == 1
        assert {e["promotion_id"] for e in daemon.named("promotion_added")} == {live, rule}
        # The rule promotion is polled on its own endpoint.
        assert any(r.path == f"/v2/rule-promotions/{rule}/jobs" for r in sim.requests)


async def test_a_disabled_promotion_is_watched_by_default(sim: Simulator, tmp_path: Path) -> None:
    # Codes are generated before a campaign is switched on: "codes limit exceeded" hits then.
    draft = sim.add_promotion("promotion", name="Launch next week", enabled=False)
    job = sim.add_job(draft, status="processing")
    async with running_daemon(write_config(tmp_path, sim, [], discovery=discovery())) as daemon:
        await daemon.wait_for("baseline_loaded")
        sim.set_job_status(draft, job, "failed", error="codes limit exceeded")
        failed = await daemon.wait_for("job_failed")
        assert failed["promotion_id"] == draft
        assert failed["error"] == "codes limit exceeded"


async def test_promotions_come_and_go_at_run_time(sim: Simulator, tmp_path: Path) -> None:
    first = sim.add_promotion("promotion", name="first")
    sim.add_job(first, status="failed", error="codes limit exceeded", created_at=long_ago())
    config = write_config(tmp_path, sim, [], discovery=discovery())
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded")
        second = sim.add_promotion("rule_promotion", name="second")
        sim.add_job(second, status="pending")
        added = await daemon.wait_for(
            "promotion_added", lambda e: e["promotion_id"] == second, timeout=10
        )
        assert added["kind"] == "rule_promotion"
        await daemon.wait_for("baseline_loaded", lambda e: e["promotion_id"] == second)

        sim.set_promotion(first, end=PAST)  # expired: no longer watched
        await daemon.wait_for("promotion_removed", lambda e: e["promotion_id"] == first)
        samples = await daemon.wait_for_metric(lambda s: first not in polled_ids(s))
        # Every series of a removed promotion leaves /metrics, gauges and counters alike.
        leftovers = [
            (name, dict(labels))
            for (name, labels) in samples
            if dict(labels).get("promotion_id") == first
        ]
        assert leftovers == []
        assert watched(samples, "promotion") == 0
        assert watched(samples, "rule_promotion") == 1


async def test_a_promotion_that_ends_is_watched_until_its_jobs_have_finished(
    sim: Simulator, tmp_path: Path
) -> None:
    # A code_generate job queued before the promotion's end can fail after it: the failure must
    # still page. Once nothing is pending or processing, the promotion goes as any expired one.
    ending = sim.add_promotion("promotion", name="Ends tonight", end=FUTURE)
    running = sim.add_job(ending, status="processing")
    config = write_config(tmp_path, sim, [], discovery=discovery())
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded")
        sim.set_promotion(ending, end=PAST)
        runs = len(daemon.named("discovery_completed"))
        await daemon.wait_for("discovery_completed", count=runs + 2)
        assert daemon.named("promotion_removed") == []

        sim.set_job_status(ending, running, "failed", error="codes limit exceeded")
        failed = await daemon.wait_for("job_failed")
        assert failed["promotion_id"] == ending
        removed = await daemon.wait_for("promotion_removed")
        assert removed["promotion_id"] == ending


async def test_once_with_discovery_polls_each_promotion_once(
    sim: Simulator, tmp_path: Path
) -> None:
    # `once` polls every promotion itself: discovery must not start polls of its own beside it
    # (each promotion was polled twice and every event logged twice).
    pids = [sim.add_promotion(name=f"sale {n}") for n in range(3)]
    for pid in pids:
        sim.add_job(pid, status="failed", error="codes limit exceeded")
    settings = parse_settings(
        {
            "api": {
                "base_url": sim.base_url,
                "client_id": sim.client_id,
                "client_secret": sim.client_secret,
            },
            "discovery": discovery(),
            "state": {"path": str(tmp_path / "state.json")},
        }
    )
    events = Recorder()
    monitor = Monitor.build(settings, registry=CollectorRegistry(), serve_http=False, events=events)

    outcomes = await monitor.run_once()
    await asyncio.sleep(0.3)  # (a poll started beside `once` would land by now)

    assert sorted(o.promotion_id for o in outcomes) == sorted(pids)
    jobs_requests = Counter(r.path for r in sim.requests if r.path.endswith("/jobs"))
    assert sorted(jobs_requests.values()) == [1, 1, 1]
    baselines = [e for e in events.events if isinstance(e, BaselineLoaded)]
    assert sorted(e.promotion_id for e in baselines) == sorted(pids)


async def test_explicit_entries_win_and_a_failing_discovery_keeps_the_last_list(
    sim: Simulator, tmp_path: Path
) -> None:
    explicit = sim.add_promotion("promotion", name="explicit")
    sim.add_job(explicit, job_type="code_generate", status="completed")
    sim.add_job(explicit, job_type="code_export", status="completed")
    found = sim.add_promotion("promotion", name="found")
    sim.add_job(found, status="completed")
    config = write_config(
        tmp_path,
        sim,
        [{"id": explicit, "filter": "eq(job_type,code_export)"}],
        discovery=discovery(),
    )
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded", count=2)
        samples = await daemon.metrics()
        # The explicit filter is kept, although discovery lists the same promotion.
        counted = series(samples, "epcc_promotion_jobs")
        types = {dict(k)["job_type"] for k in counted if dict(k)["promotion_id"] == explicit}
        assert types == {"code_export"}
        assert [e["promotion_id"] for e in daemon.named("promotion_added")] == [found]

        sim.inject(Fault("status", status=503, times=None, path_contains="/v2/promotions"))
        sim.inject(Fault("status", status=503, times=None, path_contains="/v2/rule-promotions"))
        failed = await daemon.wait_for("discovery_failed", timeout=15)
        assert failed["reason"] == "http_5xx"
        samples = await daemon.wait_for_metric(
            lambda s: (value(s, "epcc_monitor_discovery_errors_total", reason="http_5xx") or 0) >= 1
        )
        assert daemon.named("promotion_removed") == []
        assert watched(samples, "promotion") == 2
    finally:
        await daemon.stop()


async def test_three_shards_watch_each_promotion_exactly_once(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = {sim.add_promotion("promotion", name=f"p{n}") for n in range(24)}
    ids |= {sim.add_promotion("rule_promotion", name=f"r{n}") for n in range(6)}
    daemons = []
    try:
        for index in range(3):
            directory = tmp_path / f"shard-{index}"
            directory.mkdir()
            config = write_config(
                directory,
                sim,
                [],
                discovery=discovery(),
                sharding={"shard_count": 3},
            )
            # The ordinal comes from the pod name, as in the StatefulSet.
            daemons.append(await Daemon.start(config, env={"POD_NAME": f"promo-monitor-{index}"}))
        owned: list[set[str]] = []
        deadline = time.monotonic() + 20
        for daemon in daemons:
            while True:
                samples = await daemon.metrics()
                mine = polled_ids(samples)
                expected = sum(1 for pid in ids if shard_of(pid, 3) == daemons.index(daemon))
                if len(mine) == expected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            owned.append(mine)
        assert set.union(*owned) == ids
        assert sum(len(s) for s in owned) == len(ids)
        for index, mine in enumerate(owned):
            assert all(shard_of(pid, 3) == index for pid in mine)
            started = daemons[index].named("monitor_started")[0]
            assert started["shard"] == f"{index}/3"
            # Each replica takes a third of the store's budget.
            assert started["requests_per_second"] == pytest.approx(200 / 3)
    finally:
        for daemon in daemons:
            await daemon.stop()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SHARD_INDEX": "2"}, 2),
        ({"POD_NAME": "promo-monitor-1"}, 1),
        ({"HOSTNAME": "promo-monitor-0"}, 0),
        ({"SHARD_INDEX": "1", "POD_NAME": "promo-monitor-2"}, 1),
    ],
)
def test_shard_index_comes_from_the_environment(env: dict[str, str], expected: int) -> None:
    assert shard_index_from_env(env) == expected


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"POD_NAME": "promo-monitor"},
        {"SHARD_INDEX": "7"},
        {"POD_NAME": "x-3"},
        # a SHARD_INDEX that is no index is refused, not replaced by the pod's ordinal
        {"SHARD_INDEX": "abc", "POD_NAME": "x-1"},
        {"SHARD_INDEX": "-1", "POD_NAME": "x-1"},
    ],
)
def test_a_missing_or_impossible_shard_index_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="shard_index"):
        ShardingSettings.model_validate(
            {"shard_count": 3, "shard_index": shard_index_from_env(env)}
        )


def test_an_unsharded_monitor_ignores_the_pod_ordinal(sim: Simulator, tmp_path: Path) -> None:
    # A lone sidecar in a StatefulSet pod named shop-2 has nothing to shard: it must start.
    config = write_config(tmp_path, sim, [{"id": sim.add_promotion()}])
    env = {"PATH": "/usr/bin:/bin", "HOSTNAME": "shop-2", "POD_NAME": "shop-2"}
    result = run_cli("check-config", "--config", str(config), env=env, inherit=False)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("command", ["check-config", "once", "run"])
def test_every_command_refuses_a_shard_count_without_an_index(
    sim: Simulator, tmp_path: Path, command: str
) -> None:
    # check-config used to say OK to what `once` and `run` refused: one verdict for all now.
    config = write_config(tmp_path, sim, [], discovery=discovery(), sharding={"shard_count": 2})
    env = {"PATH": "/usr/bin:/bin", "HOSTNAME": "no-ordinal"}
    result = run_cli(command, "--config", str(config), env=env, inherit=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("promo-monitor: sharding.shard_index: shard_count > 1")
    assert "Traceback" not in result.stderr


def test_shards_split_evenly() -> None:
    counts = [0, 0, 0]
    for n in range(3000):
        counts[shard_of(str(uuid.UUID(int=n * 7919 + 1, version=4)), 3)] += 1
    assert min(counts) > 900


@pytest.mark.parametrize(
    ("promotion", "rules", "expected"),
    [
        ({"enabled": True}, {}, True),
        # Elastic Path creates promotions disabled; their codes are generated before launch.
        ({"enabled": False}, {}, True),
        ({"enabled": False}, {"include_disabled": False}, False),
        ({"enabled": False}, {"include_disabled": True}, True),
        ({"end": PAST}, {}, False),
        ({"end": PAST}, {"include_expired": True}, True),
        # A day's grace after the end (a code job queued before it can fail after it).
        ({"end": ago(3600)}, {}, True),
        ({"end": ago(25 * 3600)}, {}, False),
        ({"end": ago(3600)}, {"expired_grace_seconds": 0}, False),
        ({"end": ago(3600)}, {"expired_grace_seconds": 7200}, True),
        ({"end": FUTURE}, {}, True),
        ({"end": None}, {}, True),
        ({"end": "not a date"}, {}, True),
        ({"name": "Summer sale"}, {"name_pattern": "sale$"}, True),
        ({"name": "Summer sale"}, {"name_pattern": "^Winter"}, False),
        ({}, {"name_pattern": "x"}, False),
    ],
)
def test_discovery_rules(promotion: dict[str, Any], rules: dict[str, Any], expected: bool) -> None:
    assert wanted(promotion, DiscoverySettings(**rules), now=time.time()) is expected


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("end", "now", "expired"),
    [
        # A bare date (the Promotions Standard example writes `2100-01-01`) is a whole day that
        # ends last in UTC-12; it is expired only after date + 1 day + 14 h UTC.
        ("2026-03-01", "2026-03-01T00:00:01+00:00", False),
        ("2026-03-01", "2026-03-01T23:59:59+00:00", False),
        ("2026-03-01", "2026-03-02T13:59:59+00:00", False),
        ("2026-03-01", "2026-03-02T14:00:01+00:00", True),
        # A date-time is exact.
        ("2026-03-01T00:00:00Z", "2026-03-01T00:00:01+00:00", True),
        ("2026-03-01T12:00:00.000Z", "2026-03-01T11:59:59+00:00", False),
    ],
)
def test_a_bare_end_date_expires_only_when_the_day_has_ended_everywhere(
    end: str, now: str, expired: bool
) -> None:
    # (without the grace after the end, which comes on top)
    assert (
        wanted({"end": end}, DiscoverySettings(expired_grace_seconds=0), now=at(now)) is not expired
    )


async def test_a_promotion_just_created_starts_warm_and_is_polled_more_often(
    sim: Simulator, tmp_path: Path
) -> None:
    # Promotions Builder lists meta.timestamps: one created now is a campaign being set up.
    fresh = sim.add_promotion("rule_promotion", name="Launch")
    old = sim.add_promotion("rule_promotion", name="Evergreen", created_at=time.time() - 90 * 86400)
    poll = {"interval_seconds": 5, "min_interval_seconds": 0.5}
    config = write_config(tmp_path, sim, [], discovery=discovery(), poll=poll)
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded", count=2)
        status, text = await daemon.get("/status.json")
        assert status == 200
        rows = {row["id"]: row for row in json.loads(text)["promotions"]}
        # As if it got a job an hour; the other, with neither jobs nor news, a job a quarter.
        assert rows[fresh]["jobs_per_day"] == pytest.approx(24 + 1 / 90, rel=0.01)
        assert rows[old]["jobs_per_day"] == pytest.approx(1 / 90, abs=0.001)
        # The 0.4 requests/s of two promotions every 5 s, shared by √rate: 2.5 s and 119 s.
        ratio = rows[old]["poll_interval_seconds"] / rows[fresh]["poll_interval_seconds"]
        assert ratio == pytest.approx(math.sqrt((24 + 1 / 90) * 90), rel=0.05)
