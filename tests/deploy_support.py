"""Helpers for the checks of deploy/: metric names, rules, manifests (no pytest: reusable)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
PROMETHEUS_RULE = KUBERNETES / "base" / "prometheusrule.yaml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
RUNBOOK = ROOT / "docs" / "pages" / "runbook.md"
DOCKERFILE = DEPLOY / "Dockerfile"

# The metric families of the monitor that deploy/ may rely on (the names fixed by issues 2 and 12;
# the monitor exports a few more), histograms by their family name.
MONITOR_METRIC_NAMES: frozenset[str] = frozenset(
    {
        "epcc_promotion_jobs",
        "epcc_promotion_jobs_stuck",
        "epcc_promotion_job_failed_info",
        "epcc_promotion_job_failures_total",
        "epcc_promotion_job_last_failure_timestamp_seconds",
        "epcc_promotion_codes_generated_total",
        "epcc_promotion_codes_deleted_total",
        "epcc_promotion_job_shortfalls_total",
        "epcc_promotion_job_last_shortfall_timestamp_seconds",
        "epcc_promotion_info",
        "epcc_promotion_job_errors_total",
        "epcc_promotion_job_transitions_total",
        "epcc_promotion_job_duration_seconds",
        "epcc_monitor_up",
        "epcc_monitor_leader",
        "epcc_monitor_last_success_timestamp_seconds",
        "epcc_monitor_poll_duration_seconds",
        "epcc_monitor_poll_errors_total",
        "epcc_monitor_polls_incomplete_total",
        "epcc_monitor_api_requests_total",
        "epcc_monitor_build_info",
        "epcc_monitor_shards",
    }
)

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])epcc_[A-Za-z0-9_:]*")
# Keys under which a Grafana dashboard keeps PromQL: panel targets and annotations ("expr"),
# template variables ("query", a string or {"query": ...}, and "definition").
_QUERY_KEYS = frozenset({"expr", "query", "definition"})


def family_name(sample_name: str) -> str:
    """`x_bucket`, `x_sum`, `x_count` -> `x`; any other name unchanged."""
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def metric_names_in(text: str) -> set[str]:
    """The `epcc_*` metric families a PromQL expression (or a template holding some) refers to."""
    return {family_name(name) for name in _METRIC_NAME.findall(text)}


def _query_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _QUERY_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _query_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _query_strings(item)


def dashboard_queries(path: Path) -> list[str]:
    """Every PromQL string of a Grafana dashboard (panels, nested rows, annotations, variables)."""
    return list(_query_strings(json.loads(path.read_text(encoding="utf-8"))))


def dashboard_metric_names(path: Path) -> set[str]:
    """The `epcc_*` metric families a Grafana dashboard queries (histogram suffixes folded)."""
    names: set[str] = set()
    for query in dashboard_queries(path):
        names |= metric_names_in(query)
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def markdown_anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    instructions = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instructions.append((instruction.upper(), " ".join(arguments.split())))
    return instructions


def dockerfile_global_args(path: Path) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults (usable in FROM lines)."""
    args: dict[str, str] = {}
    for instruction, arguments in _dockerfile_instructions(path):
        if instruction == "FROM":
            break
        if instruction == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, starting with its FROM."""
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in _dockerfile_instructions(path):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


# deploy/ as the tests see it: constants, kustomize renders, manifest lookups

KUBERNETES_VERSION = "1.30"
CRD_GROUP = "monitoring.coreos.com/v1"
MONITOR_UID = 10464
METRICS_PORT = 10464
CONFIG_DIR = "/etc/promo-monitor"
SECRET_NAME = "promo-monitor-credentials"
SECRET_KEYS = ("EPCC_CLIENT_ID", "EPCC_CLIENT_SECRET")
SEVERITY_RECEIVERS = {"critical": "promo-monitor-pager", "warning": "promo-monitor-chat"}
RUNBOOK_URL_BASE = "https://github.com/your-org/promo-monitor/blob/main/docs/pages/runbook.md#"
SCRAPE_LABEL = ("promo-monitor/scrape", "true")
# The alerts that mean the monitor itself is gone; they inhibit every other (symptom) alert.
MONITOR_GONE_ABSENT = "PromoMonitorAbsent"
MONITOR_GONE = {"PromoMonitorDown", MONITOR_GONE_ABSENT}
INSTALL_TOOLS = ROOT / "tests" / "tools" / "install-tools.sh"
ABSENT_NAMESPACE_TESTS = ROOT / "deploy" / "prometheus" / "absent-namespace.test.yaml"
ENTRY_POINTS = ("example", "standalone", "statefulset")


def run(*args: str | Path, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """Run a command; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


def kustomize(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    return load_yaml_documents(run(kubectl, "kustomize", directory))


def kustomize_overlay(kubectl: str, directory: Path, **fields: Any) -> list[dict[str, Any]]:
    """Write a kustomization of `fields` (paths relative to `directory`) there and render it."""
    directory.mkdir(exist_ok=True)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    text = yaml.safe_dump(kustomization | fields)
    (directory / "kustomization.yaml").write_text(text, encoding="utf-8")
    return kustomize(kubectl, directory)


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [item for item in items if item["name"] == name]
    assert len(found) == 1, f"expected one {name!r} in {[i['name'] for i in items]}"
    return found[0]


def monitor_config() -> dict[str, Any]:
    config = load_yaml(KUBERNETES / "base" / "config.yaml")
    assert isinstance(config, dict)
    return config


def rule_groups() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    assert isinstance(groups, list)
    return groups


def render_with_namespace(
    kubectl: str, tmp_path: Path, entry: str, namespace: str
) -> list[dict[str, Any]]:
    """An entry point rendered after the user set their namespace, as its comment asks."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    kustomization = tree / entry / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    assert text.count("\nnamespace: default\n") == 1
    kustomization.write_text(
        text.replace("\nnamespace: default\n", f"\nnamespace: {namespace}\n"), encoding="utf-8"
    )
    return kustomize(kubectl, tree / entry)
