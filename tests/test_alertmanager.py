"""deploy/alertmanager: routes by severity, grouping and inhibitions, checked with amtool and a
real Alertmanager.

amtool missing: skip when not root, fail when root (`make tools` should have installed it).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_support import (
    ALERTMANAGER,
    MONITOR_GONE,
    MONITOR_GONE_ABSENT,
    SEVERITY_RECEIVERS,
    alert_rules,
    load_yaml,
    only,
    render_with_namespace,
    rule_groups,
    run,
)
from tests.e2e_support import alertmanager_config, free_ports, write_yaml
from tests.support import require_tool

pytestmark = pytest.mark.tools


def test_amtool_checks_alertmanager_config(amtool: str) -> None:
    out = run(amtool, "check-config", ALERTMANAGER)
    assert "SUCCESS" in out


def test_every_alert_routes_by_severity(amtool: str) -> None:
    for rule in alert_rules(rule_groups()):
        severity = rule["labels"]["severity"]
        run(
            amtool,
            "config",
            "routes",
            "test",
            "--config.file",
            ALERTMANAGER,
            f"--verify.receivers={SEVERITY_RECEIVERS[severity]}",
            f"alertname={rule['alert']}",
            f"severity={severity}",
            "promotion_id=ad386702-e780-42c6-b190-0527ad768917",
        )


def _matches(matchers: list[str], alertname: str) -> bool:
    """Evaluate `alertname=`/`alertname=~` matchers (the only label our inhibit rules use)."""
    for matcher in matchers:
        found = re.fullmatch(r'alertname(=~|=)"(.*)"', matcher)
        assert found, f"unexpected matcher {matcher!r}"
        op, value = found.groups()
        if op == "=" and alertname != value:
            return False
        if op == "=~" and not re.fullmatch(value, alertname):
            return False
    return True


def test_alertmanager_groups_by_promotion_and_inhibits_symptoms_while_down() -> None:
    config = load_yaml(ALERTMANAGER)
    text = ALERTMANAGER.read_text(encoding="utf-8")
    assert not re.search(r"^\s*-?\s*(source_|target_)?match(_re)?:", text, re.M), "use matchers"
    routes = config["route"]["routes"]
    promo_route = next(r for r in routes if 'alertname=~"PromoMonitor.+"' in r["matchers"])
    assert promo_route["group_by"] == ["alertname", "promotion_id"]

    names = {rule["alert"] for rule in alert_rules(rule_groups())}
    symptoms = names - MONITOR_GONE

    def inhibited_while(source: str) -> set[str]:
        return {
            target
            for rule in config["inhibit_rules"]
            if _matches(rule["source_matchers"], source)
            for target in names
            if _matches(rule["target_matchers"], target)
        }

    for source in MONITOR_GONE:
        assert inhibited_while(source) == symptoms, source
    for rule in config["inhibit_rules"]:
        assert "namespace" in rule["equal"]
    assert "PromoMonitorPollingFailing" in inhibited_while("PromoMonitorAuthFailing")
    for name in names:
        assert name not in inhibited_while(name)

    urls = [hook["url"] for receiver in config["receivers"] for hook in receiver["webhook_configs"]]
    assert all(url.startswith("http://alert-receiver.example:8080/") for url in urls)


def absent_labels(expr: str) -> dict[str, str]:
    """The labels absent() gives its result: the equality matchers of its selector (Prometheus)."""
    found = re.match(r"absent\(\w+(?:\{([^}]*)\})?\)", expr)
    assert found, expr
    return dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))


def _alertmanager_api(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def test_absent_in_one_namespace_inhibits_that_namespace_only(kubectl: str, tmp_path: Path) -> None:
    """A real Alertmanager on the shipped config, given the alerts the rendered rules produce."""
    binary = require_tool("prometheus-alertmanager")
    docs = render_with_namespace(kubectl, tmp_path, "example", "shop")
    absent_rule = next(
        r
        for r in alert_rules(only(docs, "PrometheusRule")["spec"]["groups"])
        if r["alert"] == MONITOR_GONE_ABSENT
    )
    absent = {
        "alertname": MONITOR_GONE_ABSENT,
        **absent_rule["labels"],
        **absent_labels(absent_rule["expr"]),
    }
    job_failed = {
        "alertname": "PromoMonitorJobFailed",
        "severity": "critical",
        "job_type": "code_generate",
    }
    (port,) = free_ports(1)
    config = write_yaml(tmp_path / "alertmanager.yml", alertmanager_config("http://127.0.0.1:9"))
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "alertmanager.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        alerts = [
            absent,
            {**job_failed, "namespace": "shop", "promotion_id": "p-1"},
            {**job_failed, "namespace": "other", "promotion_id": "p-2"},
        ]
        deadline = time.monotonic() + 30
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                _alertmanager_api(f"{url}/api/v2/alerts", [{"labels": a} for a in alerts])
                listed = _alertmanager_api(f"{url}/api/v2/alerts")
            except OSError:
                time.sleep(0.2)
                continue
            states = {
                a["labels"].get("promotion_id", a["labels"]["alertname"]): a["status"]["state"]
                for a in listed
            }
            if states == {MONITOR_GONE_ABSENT: "active", "p-1": "suppressed", "p-2": "active"}:
                break
            time.sleep(0.2)
        log_text = (tmp_path / "alertmanager.log").read_text(encoding="utf-8", errors="replace")
        assert states == {MONITOR_GONE_ABSENT: "active", "p-1": "suppressed", "p-2": "active"}, (
            f"Absent labels {absent}: {states}\n{log_text[-2000:]}"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
