"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

The PrometheusRule must carry exactly the groups of the plain rule file (tests/test_deploy.py
checks it). Run after editing alerts.yaml: `python3 tests/tools/sync_prometheusrule.py`;
`--check` only compares.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by tests/tools/sync_prometheusrule.py:
# edit that file (it also explains each rule), not this one.
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
        prometheus_rule(groups), Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=True
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
