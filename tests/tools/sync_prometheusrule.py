"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

The PrometheusRule must carry exactly the groups of the plain rule file (tests/test_alert_rules.py
checks it), except that PromoMonitorAbsent watches one namespace (see `namespaced`). Run after
editing alerts.yaml: `python3 tests/tools/sync_prometheusrule.py`; `--check` only compares.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

ABSENT = "PromoMonitorAbsent"
# No Kubernetes namespace can be spelt like this (upper case), so a kustomization that forgot to
# write its namespace here gets a PromoMonitorAbsent that always fires, never a silent one.
NAMESPACE_PLACEHOLDER = "NAMESPACE_NOT_SET_see_deploy_README"
_GLOBAL = ("absent(epcc_monitor_build_info)", "unless on ()")

HEADER = f"""\
# GENERATED from deploy/prometheus/alerts.yaml by tests/tools/sync_prometheusrule.py:
# edit that file (it also explains each rule), not this one.
# PromoMonitorAbsent watches ONE namespace: the first quoted string of its expr, written by the
# `replacements:` of the kustomization that sets `namespace:` (deploy/kubernetes/example shows it).
# Left at {NAMESPACE_PLACEHOLDER} it fires all the time: loud, never silent.
# Prometheus picks PrometheusRules by its spec.ruleSelector (kube-prometheus-stack: usually
# the label release: <helm release name>): add that label in your overlay.
# keep_firing_for needs Prometheus >= 2.42 and prometheus-operator >= 0.66 (its CRD field).
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, so the output reads like the source."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def namespaced(groups: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """`groups` with PromoMonitorAbsent watching `namespace` only, the namespace first in its expr.

    alerts.yaml's version fires when no monitor at all reports; in a PrometheusRule (which lives in
    one namespace) a silent namespace must alert while other namespaces' monitors report.
    """
    result = copy.deepcopy(groups)
    rules = [r for g in result for r in g["rules"] if r.get("alert") == ABSENT]
    if len(rules) != 1:
        raise ValueError(f"expected one {ABSENT} rule, found {len(rules)}")
    expr: str = rules[0]["expr"]
    if not all(expr.count(part) == 1 for part in _GLOBAL) or not expr.startswith(_GLOBAL[0]):
        raise ValueError(
            f"{ABSENT}: expr must start with {_GLOBAL[0]} and hold {_GLOBAL[1]!r} once"
        )
    expr = expr.replace(
        _GLOBAL[0], f'absent(epcc_monitor_build_info{{namespace="{namespace}"}})'
    ).replace(_GLOBAL[1], "unless on (namespace)")
    rules[0]["expr"] = expr
    return result


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule manifest that carries `groups`."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "promo-monitor",
            "labels": {"app.kubernetes.io/name": "promo-monitor"},
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    body = yaml.dump(
        prometheus_rule(namespaced(groups, NAMESPACE_PLACEHOLDER)),
        Dumper=_BlockDumper,
        sort_keys=False,
        width=120,
        allow_unicode=True,
    )
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = PROMETHEUS_RULE.read_text(encoding="utf-8") if PROMETHEUS_RULE.exists() else ""
        if current != text:
            print(
                f"{PROMETHEUS_RULE} is out of date: run python3 tests/tools/sync_prometheusrule.py"
            )
            return 1
        return 0
    PROMETHEUS_RULE.write_text(text, encoding="utf-8")
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
