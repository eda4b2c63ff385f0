"""deploy/prometheus: the alert rules checked and unit-tested by promtool, and what they cover.

promtool missing: skip when not root, fail when root (`make tools` should have installed it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_support import (
    ABSENT_NAMESPACE_TESTS,
    ALERT_TESTS,
    ALERTS,
    ENTRY_POINTS,
    KUBERNETES,
    MONITOR_GONE_ABSENT,
    MONITOR_METRIC_NAMES,
    PROMETHEUS_RULE,
    RUNBOOK,
    RUNBOOK_URL_BASE,
    SEVERITY_RECEIVERS,
    alert_rules,
    kustomize_overlay,
    load_yaml,
    markdown_anchors,
    metric_names_in,
    only,
    render_with_namespace,
    rule_groups,
    run,
)
from tests.tools.sync_prometheusrule import NAMESPACE_PLACEHOLDER, namespaced

pytestmark = pytest.mark.tools


def test_promtool_checks_rule_file(promtool: str) -> None:
    out = run(promtool, "check", "rules", ALERTS)
    assert f"SUCCESS: {len(alert_rules(rule_groups()))} rules found" in out


def test_prometheus_rule_carries_the_same_groups(promtool: str, tmp_path: Path) -> None:
    manifest = load_yaml(PROMETHEUS_RULE)
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == namespaced(rule_groups(), NAMESPACE_PLACEHOLDER), (
        "deploy/kubernetes/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: "
        "run `python3 tests/tools/sync_prometheusrule.py`"
    )
    extracted = tmp_path / "prometheusrule-groups.yaml"
    extracted.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}), encoding="utf-8")
    out = run(promtool, "check", "rules", extracted)
    assert "SUCCESS" in out


def absent_expr(docs: list[dict[str, Any]]) -> str:
    rule = only(docs, "PrometheusRule")
    (expr,) = [
        r["expr"] for r in alert_rules(rule["spec"]["groups"]) if r["alert"] == MONITOR_GONE_ABSENT
    ]
    assert isinstance(expr, str)
    return expr


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_absent_watches_the_namespace_the_rule_is_deployed_in(
    entry: str, request: pytest.FixtureRequest
) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(entry)
    namespace = only(docs, "PrometheusRule")["metadata"]["namespace"]
    assert {doc["metadata"].get("namespace") for doc in docs} == {namespace}
    expr = absent_expr(docs)
    assert expr.startswith(f'absent(epcc_monitor_build_info{{namespace="{namespace}"}})'), expr
    assert "unless on (namespace)" in expr
    assert NAMESPACE_PLACEHOLDER not in json.dumps(docs)


def test_absent_follows_a_changed_namespace_and_fires_for_it_alone(
    kubectl: str, promtool: str, tmp_path: Path
) -> None:
    docs = render_with_namespace(kubectl, tmp_path, "example", "shop")
    assert only(docs, "PrometheusRule")["metadata"]["namespace"] == "shop"
    assert absent_expr(docs).startswith('absent(epcc_monitor_build_info{namespace="shop"})')
    # promtool on the rendered rule: shop silent while `other` reports -> fires for shop only.
    suite = tmp_path / "prometheus"
    suite.mkdir()
    groups = only(docs, "PrometheusRule")["spec"]["groups"]
    (suite / "prometheusrule-shop.yaml").write_text(
        yaml.safe_dump({"groups": groups}), encoding="utf-8"
    )
    tests = suite / ABSENT_NAMESPACE_TESTS.name
    shutil.copyfile(ABSENT_NAMESPACE_TESTS, tests)
    assert "SUCCESS" in run(promtool, "test", "rules", tests)


def test_a_forgotten_namespace_replacement_is_loud(kubectl: str, tmp_path: Path) -> None:
    """Without the replacement the selector keeps a placeholder that no namespace can match."""
    assert not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", NAMESPACE_PLACEHOLDER)
    overlay = tmp_path / "overlay"
    base = os.path.relpath(KUBERNETES / "base", overlay)
    expr = absent_expr(kustomize_overlay(kubectl, overlay, namespace="shop", resources=[base]))
    assert expr.startswith(
        f'absent(epcc_monitor_build_info{{namespace="{NAMESPACE_PLACEHOLDER}"}})'
    )


def test_promtool_unit_tests_pass(promtool: str) -> None:
    out = run(promtool, "test", "rules", ALERT_TESTS)
    assert "SUCCESS" in out


def test_every_alert_is_proven_to_fire_and_to_stay_silent() -> None:
    suite = load_yaml(ALERT_TESTS)
    assert suite["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules(rule_groups())}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"
    assert (firing | silent) <= names, "tests for alerts that do not exist"


def test_alerts_are_named_labelled_annotated_and_have_a_runbook() -> None:
    anchors = markdown_anchors(RUNBOOK)
    rules = alert_rules(rule_groups())
    assert len(rules) >= 5
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"PromoMonitor(?:[A-Z][a-z]+)+", name), name
        assert rule["labels"]["severity"] in SEVERITY_RECEIVERS, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"] == RUNBOOK_URL_BASE + name.lower()
        assert name.lower() in anchors, f"the runbook has no section for {name}"
    # and the runbook documents no alert that does not exist
    runbook = RUNBOOK.read_text(encoding="utf-8")
    documented = set(re.findall(r"^## (PromoMonitor\w+)", runbook, re.M))
    assert documented == {rule["alert"] for rule in rules}


def test_alerts_cover_the_required_conditions() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules(rule_groups())}
    failed = rules["PromoMonitorJobFailed"]
    assert "increase(epcc_promotion_job_failures_total[" in failed["expr"]
    assert "for" not in failed, "must fire on the first failure"
    assert "keep_firing_for" in failed
    assert "epcc_promotion_job_failed_info" in failed["annotations"]["description"]
    for label in ("promotion_id", "job_type"):
        assert label in failed["expr"]
    assert "epcc_promotion_jobs_stuck" in rules["PromoMonitorJobStuck"]["expr"]
    assert "epcc_monitor_up" in rules["PromoMonitorPollingFailing"]["expr"]
    assert 'reason="auth"' in rules["PromoMonitorAuthFailing"]["expr"]
    assert "up{" in rules["PromoMonitorDown"]["expr"]
    assert "absent(" in rules["PromoMonitorAbsent"]["expr"]
    assert "max by (namespace) (epcc_monitor_leader) == 0" in rules["PromoMonitorNoLeader"]["expr"]
    shortfall = rules["PromoMonitorCodesShortfall"]
    assert "increase(epcc_promotion_job_shortfalls_total[" in shortfall["expr"]
    assert "epcc_promotion_job_last_shortfall_timestamp_seconds" in shortfall["expr"]
    assert "max by (namespace, promotion_id)" in shortfall["expr"]
    assert "for" not in shortfall, "must fire on the first shortfall"
    assert shortfall["labels"]["severity"] == "warning"
    incomplete = rules["PromoMonitorListingIncomplete"]
    assert "epcc_monitor_polls_incomplete_total" in incomplete["expr"]
    assert "max by (namespace, promotion_id)" in incomplete["expr"]
    # reason "short" (an unordered store) sees every job over a few polls: not alert-worthy
    assert 'reason=~"offset_ignored|offset_limit"' in incomplete["expr"]
    assert "short" not in incomplete["expr"]
    assert incomplete["for"] == "30m", "one odd incomplete poll must not fire"
    assert incomplete["labels"]["severity"] == "warning"


def test_job_alerts_name_the_promotion_without_depending_on_the_name() -> None:
    """Descriptions look the name up in epcc_promotion_info; no expression may need it."""
    per_promotion = []
    for rule in alert_rules(rule_groups()):
        assert "epcc_promotion_info" not in rule["expr"], rule["alert"]
        if "promotion_id" in rule["expr"]:
            per_promotion.append(rule["alert"])
            assert "epcc_promotion_info{" in rule["annotations"]["description"], rule["alert"]
    assert {
        "PromoMonitorJobFailed",
        "PromoMonitorJobStuck",
        "PromoMonitorPollingFailing",
        "PromoMonitorCodesShortfall",
        "PromoMonitorListingIncomplete",
    } <= set(per_promotion)


def test_the_runbook_lists_every_alert() -> None:
    """The runbook's "Alerts at a glance" table: one row per alert, with its severity, each
    linking to the alert's section."""
    text = RUNBOOK.read_text(encoding="utf-8")
    table = text.split("## Alerts at a glance", 1)[1].split("\n\n", 2)[1]
    found = re.findall(r"^\| \[(PromoMonitor\w+)\]\(#(\w+)\) \| (\w+) \|", table, re.MULTILINE)
    assert all(anchor == name.lower() for name, anchor, _ in found), found
    rows = {name: severity for name, _, severity in found}
    assert rows == {
        rule["alert"]: rule["labels"]["severity"] for rule in alert_rules(rule_groups())
    }


def test_alert_expressions_use_metrics_the_monitor_exports() -> None:
    used: set[str] = set()
    for rule in alert_rules(rule_groups()):
        names = metric_names_in(rule["expr"]) | metric_names_in(json.dumps(rule["annotations"]))
        assert names <= MONITOR_METRIC_NAMES, f"{rule['alert']}: {names - MONITOR_METRIC_NAMES}"
        used |= names
    assert "epcc_promotion_job_failures_total" in used
