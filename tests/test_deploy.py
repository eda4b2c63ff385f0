"""deploy/ checked with the real tools: kustomize (kubectl), kubernetes-validate, promtool, amtool.

kubectl missing: the render tests skip. promtool/amtool missing: skip when not root, fail when
root (then `make tools` should have installed them). Everything else always runs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy_support import (
    ALERT_TESTS,
    ALERTMANAGER,
    ALERTS,
    DASHBOARD,
    DOCKERFILE,
    KUBERNETES,
    MONITOR_METRIC_NAMES,
    PROMETHEUS_RULE,
    ROOT,
    RUNBOOK,
    alert_rules,
    dashboard_metric_names,
    dashboard_queries,
    dockerfile_global_args,
    dockerfile_stages,
    load_yaml,
    load_yaml_documents,
    markdown_anchors,
    metric_names_in,
)
from tests.e2e_support import alertmanager_config, free_ports, write_yaml
from tests.support import require_tool
from tests.tools.sync_prometheusrule import NAMESPACE_PLACEHOLDER, namespaced

pytestmark = pytest.mark.tools

KUBERNETES_VERSION = "1.30"
CRD_GROUP = "monitoring.coreos.com/v1"
MONITOR_UID = 10464
METRICS_PORT = 10464
CONFIG_DIR = "/etc/promo-monitor"
SECRET_NAME = "promo-monitor-credentials"
SECRET_KEYS = ("EPCC_CLIENT_ID", "EPCC_CLIENT_SECRET")
SEVERITY_RECEIVERS = {"critical": "promo-monitor-pager", "warning": "promo-monitor-chat"}
RUNBOOK_URL_BASE = "https://github.com/your-org/promo-monitor/blob/main/deploy/RUNBOOK.md#"
SCRAPE_LABEL = ("promo-monitor/scrape", "true")
# The alerts that mean the monitor itself is gone; they inhibit every other (symptom) alert.
MONITOR_GONE_ABSENT = "PromoMonitorAbsent"
MONITOR_GONE = {"PromoMonitorDown", MONITOR_GONE_ABSENT}
INSTALL_TOOLS = ROOT / "tests" / "tools" / "install-tools.sh"
ABSENT_NAMESPACE_TESTS = ROOT / "deploy" / "prometheus" / "absent-namespace.test.yaml"
ENTRY_POINTS = ("example", "standalone", "statefulset")


# --- tools ---------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(
            "kubectl not installed: !!! the kustomize render checks of deploy/kubernetes are "
            "SKIPPED !!! (install kubectl >= 1.27 to run them)"
        )
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_tool("amtool")


def kustomize(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    return load_yaml_documents(run(kubectl, "kustomize", directory))


@pytest.fixture(scope="module")
def example(kubectl: str) -> list[dict[str, Any]]:
    return kustomize(kubectl, KUBERNETES / "example")


@pytest.fixture(scope="module")
def standalone(kubectl: str) -> list[dict[str, Any]]:
    return kustomize(kubectl, KUBERNETES / "standalone")


@pytest.fixture(scope="module")
def statefulset(kubectl: str) -> list[dict[str, Any]]:
    return kustomize(kubectl, KUBERNETES / "statefulset")


# --- manifest helpers ----------------------------------------------------------------------------


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


def check_monitor_container(
    container: dict[str, Any], pod_spec: dict[str, Any], configmap: dict[str, Any]
) -> None:
    """What every promo-monitor container must have, sidecar or standalone."""
    assert container["args"] == ["run", "--config", f"{CONFIG_DIR}/config.yaml"]

    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == MONITOR_UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert "privileged" not in security

    port = by_name(container["ports"], "metrics")
    config = monitor_config()
    assert port["containerPort"] == METRICS_PORT == config["server"]["port"]
    # reachable by Prometheus, not only from inside the pod
    assert config["server"]["host"] == "0.0.0.0"

    for probe_name, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        probe = container[probe_name]
        assert probe["httpGet"] == {"path": path, "port": "metrics"}, probe_name
        assert probe["timeoutSeconds"] >= 1
    # a slow start is the startup probe's business, not a reason for the liveness probe to kill it
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30

    resources = container["resources"]
    assert resources["requests"] == {"cpu": "10m", "memory": "64Mi"}
    assert resources["limits"] == {"memory": "128Mi"}

    env = {item["name"]: item for item in container["env"]}
    for key in SECRET_KEYS:
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": key}
    literal = {item["name"] for item in container["env"] if "value" in item}
    # No literal values but the coordination switch: secrets come from the Secret only.
    assert literal <= {"COORDINATION_MODE"}, literal

    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    config_mount = mounts[CONFIG_DIR]
    assert config_mount["readOnly"] is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "config.yaml" in configmap["data"]

    state_dir = str(PurePosixPath(config["state"]["path"]).parent)
    state_mount = mounts[state_dir]
    assert not state_mount.get("readOnly", False)
    state_volume = volumes[state_mount["name"]]
    assert "emptyDir" in state_volume or "persistentVolumeClaim" in state_volume


def pod_monitor_selects(pod_monitor: dict[str, Any], deployment: dict[str, Any]) -> None:
    spec = pod_monitor["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in spec["selector"]["matchLabels"].items():
        assert labels.get(key) == value, f"pod template lacks {key}={value}"
    assert labels.get(SCRAPE_LABEL[0]) == SCRAPE_LABEL[1]


# --- kustomize renders and schemas ---------------------------------------------------------------


def test_example_renders_complete_set(example: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in example)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
    ]
    # never a Secret in what we apply: the credentials are created out of band
    assert all(doc["kind"] != "Secret" for doc in example)


def test_standalone_renders_one_recreated_replica(standalone: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in standalone)
    assert kinds == ["ConfigMap", "Deployment", "PodMonitor", "PrometheusRule"]
    deployment = only(standalone, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = by_name(pod["containers"], "promo-monitor")
    check_monitor_container(container, pod, only(standalone, "ConfigMap"))
    pod_monitor_selects(only(standalone, "PodMonitor"), deployment)


@pytest.mark.parametrize(
    ("variant", "kinds"),
    [
        ("example", {"ConfigMap", "Deployment", "Role", "RoleBinding"}),
        ("standalone", {"ConfigMap", "Deployment"}),
        ("statefulset", {"ConfigMap", "Service", "StatefulSet"}),
    ],
)
def test_builtin_kinds_pass_strict_schema(
    variant: str, kinds: set[str], request: pytest.FixtureRequest
) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(variant)
    builtin = [doc for doc in docs if not doc["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {doc["kind"] for doc in builtin} == kinds
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_schema_catches_a_typo(example: list[dict[str, Any]]) -> None:
    """The validation above is worth something: a misspelt field in the sidecar is refused."""
    deployment = copy.deepcopy(only(example, "Deployment"))
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicyy"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_statefulset_shards_follow_the_replica_count(statefulset: list[dict[str, Any]]) -> None:
    sts = only(statefulset, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = by_name(pod["containers"], "promo-monitor")
    env = {item["name"]: item for item in container["env"]}
    # One number to scale: the replica count is copied into SHARD_COUNT by the kustomization.
    assert env["SHARD_COUNT"]["value"] == str(sts["spec"]["replicas"]) == "3"
    # The shard index is the pod's ordinal, read from its name.
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for key in SECRET_KEYS:
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": key}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Each shard keeps its snapshot on its own volume across pod replacements.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/promo-monitor"
    assert only(statefulset, "Service")["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == only(statefulset, "Service")["metadata"]["name"]
    pod_monitor_selects(only(statefulset, "PodMonitor"), sts)


def test_scaling_the_statefulset_is_one_number(kubectl: str, tmp_path: Path) -> None:
    """Edit spec.replicas in statefulset.yaml, as the README says: the shard count follows."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    manifest = tree / "statefulset" / "statefulset.yaml"
    text = manifest.read_text(encoding="utf-8")
    assert text.count("replicas: 3") == 1
    manifest.write_text(text.replace("replicas: 3", "replicas: 5"), encoding="utf-8")
    docs = kustomize(kubectl, tree / "statefulset")
    sts = only(docs, "StatefulSet")
    container = by_name(sts["spec"]["template"]["spec"]["containers"], "promo-monitor")
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert sts["spec"]["replicas"] == 5
    assert env["SHARD_COUNT"] == "5"


def test_daemon_accepts_the_statefulset_config_in_a_pod(
    statefulset: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The rendered config plus what the pod provides (secret env, SHARD_COUNT, POD_NAME)."""
    config = tmp_path / "config.yaml"
    config.write_text(only(statefulset, "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    env = {
        **os.environ,
        "EPCC_CLIENT_ID": "id",
        "EPCC_CLIENT_SECRET": "secret-for-check-config",
        "SHARD_COUNT": "3",
        "POD_NAME": "promo-monitor-2",
    }
    out = run(sys.executable, "-m", "monitor", "check-config", "--config", config, env=env)
    assert "discovery: every 300s of promotion, rule_promotion" in out
    # 20 requests/s for the whole StatefulSet, a third of it for this replica.
    assert "budget 6.66667 requests/s" in out


def test_secret_example_is_valid_placeholder_and_not_deployed() -> None:
    secret = load_yaml(KUBERNETES / "base" / "secret.example.yaml")
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert sorted(secret["stringData"]) == sorted(SECRET_KEYS)
    assert all(value.startswith("REPLACE_WITH_") for value in secret["stringData"].values())
    for kustomization in KUBERNETES.glob("*/kustomization.yaml"):
        assert "secret.example.yaml" not in json.dumps(load_yaml(kustomization)), kustomization


def test_sidecar_is_a_hardened_native_sidecar(example: list[dict[str, Any]]) -> None:
    deployment = only(example, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert all(c["name"] != "promo-monitor" for c in pod["containers"])
    sidecar = by_name(pod["initContainers"], "promo-monitor")
    assert sidecar["restartPolicy"] == "Always"  # native sidecar (Kubernetes >= 1.29)
    check_monitor_container(sidecar, pod, only(example, "ConfigMap"))
    # the application's own container is untouched
    app = by_name(pod["containers"], "app")
    assert app["image"] == "registry.k8s.io/pause:3.9"
    assert [c["name"] for c in pod["containers"]] == ["app"]
    # volumes added by the component cannot collide with the application's
    assert all(volume["name"].startswith("promo-monitor-") for volume in pod["volumes"])
    pod_monitor_selects(only(example, "PodMonitor"), deployment)


def test_sidecar_replicas_elect_one_poller_through_a_lease(example: list[dict[str, Any]]) -> None:
    pod = only(example, "Deployment")["spec"]["template"]["spec"]
    sidecar = by_name(pod["initContainers"], "promo-monitor")
    env = {item["name"]: item for item in sidecar["env"]}
    assert env["COORDINATION_MODE"]["value"] == "lease"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The service account token reaches the monitor only: the app keeps automount off.
    assert pod["automountServiceAccountToken"] is False
    account_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == account_dir]
    assert mount["readOnly"] is True
    app = by_name(pod["containers"], "app")
    assert all(m["mountPath"] != account_dir for m in app.get("volumeMounts", []))
    sources = by_name(pod["volumes"], mount["name"])["projected"]["sources"]
    assert {"path": "token", "expirationSeconds": 3607} in [
        s.get("serviceAccountToken") for s in sources
    ]
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources)

    role = only(example, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update", "patch"],
        }
    ]
    binding = only(example, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    # Pods without serviceAccountName run as the namespace's "default" ServiceAccount.
    assert "serviceAccountName" not in pod
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", "default")


def test_rbac_follows_the_overlay_namespace_and_a_named_service_account(
    kubectl: str, tmp_path: Path
) -> None:
    """The documented overlay: `namespace:` and the patch from rbac.yaml's comment."""
    rbac = (KUBERNETES / "sidecar" / "rbac.yaml").read_text(encoding="utf-8")
    documented = re.search(r"#   patches:\n((?:#     .*\n)+)", rbac)
    assert documented is not None, "rbac.yaml no longer shows how to bind another ServiceAccount"
    patches = yaml.safe_load("\n".join(line[5:] for line in documented.group(1).splitlines()))
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "shop",
        "resources": ["../kubernetes/example"],
        "patches": patches,
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    docs = kustomize(kubectl, overlay)
    binding = only(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == only(docs, "Role")["metadata"]["namespace"] == "shop"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "my-app", "namespace": "shop"}
    ]
    for doc in docs:
        if doc["apiVersion"].startswith("rbac."):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_daemon_accepts_the_sidecar_config_in_a_pod(
    example: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The rendered config plus what the sidecar's pod provides: coordination is on."""
    config = tmp_path / "config.yaml"
    config.write_text(only(example, "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    env = {
        **os.environ,
        "EPCC_CLIENT_ID": "id",
        "EPCC_CLIENT_SECRET": "secret-for-check-config",
        "COORDINATION_MODE": "lease",
        "POD_NAME": "example-app-5d8f7-abcde",
        "POD_NAMESPACE": "shop",
    }
    out = run(sys.executable, "-m", "monitor", "check-config", "--config", config, env=env)
    assert "coordination: lease shop/promo-monitor as example-app-5d8f7-abcde" in out
    assert "(duration 15s, renew deadline 10s, retry 2s)" in out


def test_component_patches_only_labelled_deployments(kubectl: str, tmp_path: Path) -> None:
    """The documented targeting: the Deployment's label promo-monitor/sidecar=enabled."""

    def deployment(name: str, labels: dict[str, str], init: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "initContainers": init,
                        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
                    },
                },
            },
        }

    migrate = {"name": "migrate", "image": "registry.k8s.io/pause:3.9"}
    apps = [
        deployment("with-sidecar", {"promo-monitor/sidecar": "enabled"}, [migrate]),
        deployment("without", {}, []),
    ]
    (tmp_path / "apps.yaml").write_text(yaml.safe_dump_all(apps), encoding="utf-8")
    rel = Path(os.path.relpath(KUBERNETES, tmp_path))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(rel / "base"), "apps.yaml"],
        "components": [str(rel / "sidecar")],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")

    docs = kustomize(kubectl, tmp_path)
    rendered = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    patched = rendered["with-sidecar"]["spec"]["template"]
    init_names = sorted(c["name"] for c in patched["spec"]["initContainers"])
    assert init_names == ["migrate", "promo-monitor"]
    assert patched["metadata"]["labels"][SCRAPE_LABEL[0]] == SCRAPE_LABEL[1]
    untouched = rendered["without"]["spec"]["template"]
    assert untouched["spec"]["initContainers"] == []
    assert SCRAPE_LABEL[0] not in untouched["metadata"]["labels"]
    assert "volumes" not in untouched["spec"]


def test_pod_monitor_and_prometheus_rule_structure() -> None:
    """CRDs have no schema in kubernetes-validate: check the fields Prometheus Operator needs."""
    pod_monitor = load_yaml(KUBERNETES / "base" / "podmonitor.yaml")
    assert pod_monitor["kind"] == "PodMonitor"
    assert pod_monitor["apiVersion"] == CRD_GROUP
    assert pod_monitor["metadata"]["name"] == "promo-monitor"
    endpoints = pod_monitor["spec"]["podMetricsEndpoints"]
    assert len(endpoints) == 1
    endpoint = endpoints[0]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    keep = [r for r in endpoint["relabelings"] if r["action"] == "keep"]
    assert keep == [
        {
            "action": "keep",
            "sourceLabels": ["__meta_kubernetes_pod_container_name"],
            "regex": "promo-monitor",
        }
    ]
    known = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
    assert set(pod_monitor["spec"]) <= known

    rule = load_yaml(PROMETHEUS_RULE)
    assert rule["kind"] == "PrometheusRule"
    assert rule["apiVersion"] == CRD_GROUP
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for item in group["rules"]:
            assert set(item) <= {
                "alert",
                "record",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str)


def test_config_map_fits_the_daemon() -> None:
    """The shipped config: only documented keys, state on the volume, port 10464, no credentials."""
    config = monitor_config()
    allowed = {
        "api": {
            "base_url",
            "client_id",
            "client_secret_file",
            "token_file",
            "timeout_seconds",
            "max_requests_per_second",
            "page_limit",
            "allow_insecure_http",
        },
        "poll": {"interval_seconds", "stuck_after_seconds"},
        "promotions": {"id", "kind", "filter"},
        "server": {"host", "port"},
        "state": {"path"},
        "log": {"level", "format"},
    }
    assert set(config) <= set(allowed)
    for section, keys in allowed.items():
        value = config[section]
        for entry in value if isinstance(value, list) else [value]:
            assert set(entry) <= keys, f"{section}: unexpected {set(entry) - keys}"
    assert "client_secret" not in config["api"]
    assert "client_id" not in config["api"]  # from the Secret, so one place holds the credentials
    assert config["api"]["base_url"].startswith("https://")
    assert config["server"]["port"] == METRICS_PORT
    assert config["state"]["path"].startswith("/var/lib/promo-monitor/")
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    for promotion in config["promotions"]:
        assert uuid.fullmatch(promotion["id"])
        assert promotion["kind"] in {"promotion", "rule_promotion"}


def test_daemon_accepts_the_shipped_config(tmp_path: Path) -> None:
    """`promo-monitor check-config` accepts the ConfigMap's file as it is shipped."""
    env = {
        **os.environ,
        "EPCC_CLIENT_ID": "client-id-for-check-config",
        "EPCC_CLIENT_SECRET": "client-secret-for-check-config",
        "HOME": str(tmp_path),
    }
    env.pop("PROMO_MONITOR_CONFIG", None)
    out = run(
        sys.executable,
        "-m",
        "monitor",
        "check-config",
        "--config",
        KUBERNETES / "base" / "config.yaml",
        env=env,
    )
    assert "client-secret-for-check-config" not in out


# --- Prometheus rules ----------------------------------------------------------------------------


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
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "shop",
        "resources": [os.path.relpath(KUBERNETES / "base", overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    expr = absent_expr(kustomize(kubectl, overlay))
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
        assert name.lower() in anchors, f"RUNBOOK.md has no section for {name}"
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
    } <= set(per_promotion)


def test_alert_expressions_use_metrics_the_monitor_exports() -> None:
    used: set[str] = set()
    for rule in alert_rules(rule_groups()):
        names = metric_names_in(rule["expr"]) | metric_names_in(json.dumps(rule["annotations"]))
        assert names <= MONITOR_METRIC_NAMES, f"{rule['alert']}: {names - MONITOR_METRIC_NAMES}"
        used |= names
    assert "epcc_promotion_job_failures_total" in used


# --- Alertmanager --------------------------------------------------------------------------------


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


# --- Grafana -------------------------------------------------------------------------------------


def test_dashboard_queries_only_exported_metrics() -> None:
    names = dashboard_metric_names(DASHBOARD)
    assert names <= MONITOR_METRIC_NAMES, f"unknown metrics: {names - MONITOR_METRIC_NAMES}"
    # failures by promotion and error, jobs by status, stuck, poll health, API request rates
    assert {
        "epcc_promotion_job_failures_total",
        "epcc_promotion_job_errors_total",
        "epcc_promotion_job_failed_info",
        "epcc_promotion_jobs",
        "epcc_promotion_jobs_stuck",
        "epcc_monitor_up",
        "epcc_monitor_poll_duration_seconds",
        "epcc_monitor_poll_errors_total",
        "epcc_monitor_api_requests_total",
        "epcc_promotion_codes_generated_total",
        "epcc_promotion_codes_deleted_total",
        "epcc_promotion_job_shortfalls_total",
        "epcc_promotion_info",
    } <= names


def _codes_fixture(metric: str) -> list[dict[str, str]]:
    """Two replicas see p-1's 1000 codes at 11m and 12m; p-2 (250 codes) has no known name."""
    shop = 'namespace="shop",job="shop/promo-monitor"'
    pod_a = f'{shop},instance="10.0.0.5:10464",pod="shop-api-a"'
    pod_b = f'{shop},instance="10.0.0.6:10464",pod="shop-api-b"'
    return [
        {"series": f'{metric}{{{pod_a},promotion_id="p-1"}}', "values": "0x10 1000x50"},
        {"series": f'{metric}{{{pod_b},promotion_id="p-1"}}', "values": "0x11 1000x49"},
        {"series": f'{metric}{{{pod_a},promotion_id="p-2"}}', "values": "0x10 250x50"},
        {
            "series": f'epcc_promotion_info{{{pod_a},promotion_id="p-1",kind="promotion",'
            'name="Summer sale"}',
            "values": "1x60",
        },
        {
            "series": f'epcc_promotion_info{{{pod_b},promotion_id="p-1",kind="promotion",'
            'name="Summer sale"}',
            "values": "1x60",
        },
    ]


def _promtool_expr_test(
    promtool: str, tmp_path: Path, expr: str, series: list[dict[str, str]], samples: dict[str, int]
) -> None:
    """Evaluate `expr` at 60m over `series` (one sample a minute) and compare with `samples`."""
    suite = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "60m",
                        "exp_samples": [{"labels": k, "value": v} for k, v in samples.items()],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "expr.test.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    assert "SUCCESS" in run(promtool, "test", "rules", path)


@pytest.mark.parametrize(
    "metric",
    [
        "epcc_promotion_codes_generated_total",
        "epcc_promotion_codes_deleted_total",
        "epcc_promotion_job_shortfalls_total",
    ],
)
def test_dashboard_codes_panels_name_promotions_and_count_replicas_once(
    promtool: str, tmp_path: Path, metric: str
) -> None:
    """By name when epcc_promotion_info has one, by id otherwise; two replicas are one count."""
    queries = [q for q in dashboard_queries(DASHBOARD) if metric in q]
    assert queries, f"no panel shows {metric}"
    for query in queries:
        assert "epcc_promotion_info" in query, query
        expr = (
            query.replace("$promotion_id", ".*")
            .replace("$__range", "1h")
            .replace("$__rate_interval", "1h")
        )
        expected = {
            '{promotion_id="p-1",name="Summer sale"}': 1000,
            '{promotion_id="p-2",name="p-2"}': 250,
        }
        _promtool_expr_test(promtool, tmp_path, expr, _codes_fixture(metric), expected)


def readme_promql_examples() -> list[str]:
    """The expressions of the README's "Example PromQL" block (indented lines continue one)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"### Example PromQL\n+```promql\n(.*?)```", text, re.S)
    assert found, "README.md has no Example PromQL block"
    expressions: list[str] = []
    for line in found.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            expressions[-1] += "\n" + line
        else:
            expressions.append(line)
    return expressions


def test_readme_promql_examples_parse_and_use_exported_metrics(
    promtool: str, tmp_path: Path
) -> None:
    expressions = readme_promql_examples()
    assert len(expressions) >= 10
    for expr in expressions:
        assert metric_names_in(expr) <= MONITOR_METRIC_NAMES, expr
    rules = [{"record": f"readme:example_{n}", "expr": e} for n, e in enumerate(expressions)]
    path = tmp_path / "readme-examples.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "readme", "rules": rules}]}), encoding="utf-8"
    )
    assert f"SUCCESS: {len(expressions)} rules found" in run(promtool, "check", "rules", path)


def test_readme_codes_by_name_example(promtool: str, tmp_path: Path) -> None:
    """Codes per promotion by name: two replicas count once; an unnamed promotion is left out."""
    (expr,) = [e for e in readme_promql_examples() if "group_left (name)" in e]
    metric = "epcc_promotion_codes_generated_total"
    expected = {'{promotion_id="p-1",name="Summer sale"}': 1000}
    _promtool_expr_test(promtool, tmp_path, expr, _codes_fixture(metric), expected)


def test_dashboard_names_fold_histogram_series(tmp_path: Path) -> None:
    dashboard = {
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "rate(epcc_x_seconds_bucket[5m])"}]}]},
            {"targets": [{"expr": 'sum(epcc_y_total{job="a"}) / sum(epcc_x_seconds_count)'}]},
        ],
        "templating": {"list": [{"query": {"query": "label_values(epcc_z, promotion_id)"}}]},
    }
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard), encoding="utf-8")
    assert dashboard_metric_names(path) == {"epcc_x_seconds", "epcc_y_total", "epcc_z"}


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "promo-monitor"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["promotion_id"]["type"] == "query"
    assert variables["promotion_id"]["includeAll"] is True

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    per_promotion = [q for q in dashboard_queries(DASHBOARD) if "$promotion_id" in q]
    assert len(per_promotion) >= 5


# --- container image and tools script ------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2
    base = dockerfile_global_args(DOCKERFILE)
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: base[m.group(1)], stage[0][1]).split()[0]
        for stage in stages
    ]
    assert all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image) for image in images), images
    assert "AS build" in stages[0][0][1]

    build = dict.fromkeys(i for i, _ in stages[0])
    assert "RUN" in build
    assert any("pip wheel" in args for i, args in stages[0] if i == "RUN")

    final = stages[-1]
    instructions = [i for i, _ in final]
    arguments = dict(final)  # last one wins, as in Docker
    assert arguments["USER"] == f"{MONITOR_UID}:{MONITOR_UID}"
    assert arguments["ENTRYPOINT"] == '["promo-monitor"]'
    assert arguments["CMD"] == '["run"]'
    assert arguments["EXPOSE"] == str(METRICS_PORT)
    assert arguments["VOLUME"] == "/var/lib/promo-monitor"
    assert f"PROMO_MONITOR_CONFIG={CONFIG_DIR}/config.yaml" in " ".join(
        a for i, a in final if i == "ENV"
    )
    assert instructions.index("USER") > max(
        n for n, i in enumerate(instructions) if i in {"RUN", "COPY"}
    )
    final_text = " ".join(a for _, a in final)
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "pip wheel"):
        assert tool not in final_text, f"{tool} in the final stage"
    copies = [a for i, a in final if i == "COPY"]
    assert copies, "the final stage must copy the venv from the build stage"
    assert all(a.startswith("--from=build ") for a in copies)

    # what the build copies from the context is what `pip install .` needs, nothing more
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    allowed = {"pyproject.toml", "monitor/", "./", "deploy/constraints.txt", "constraints.txt"}
    allowed |= {readme.group(1)} if readme else set()
    for args in (a for i, a in stages[0] if i == "COPY"):
        sources = [s for s in args.split() if not s.startswith("--")][:-1]
        assert set(sources) <= allowed, sources


def _fake_bin(directory: Path, scripts: dict[str, str]) -> Path:
    directory.mkdir()
    for name, body in scripts.items():
        path = directory / name
        path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
        path.chmod(0o755)
    for tool in ("sed", "chmod", "rm", "head", "cat"):
        real = shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin")
        assert real, tool
        (directory / tool).symlink_to(real)
    return directory


def _run_install_tools(bin_dir: Path, policy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(INSTALL_TOOLS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": str(bin_dir), "INSTALL_TOOLS_POLICY_RC": str(policy)},
    )


def test_install_tools_skips_loudly_when_not_root(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path / "bin", {"id": "echo 1000", "apt-get": "exit 99"})
    proc = _run_install_tools(bin_dir, tmp_path / "policy-rc.d")
    assert proc.returncode == 0, proc.stderr
    assert "SKIPPED" in proc.stderr
    assert "promtool" in proc.stderr
    assert not (tmp_path / "policy-rc.d").exists()


@pytest.mark.parametrize(
    ("candidate", "updates"),
    [("2.42.0+ds-5", []), ("(none)", ["apt-get update frontend="])],
    ids=["lists-know-the-packages", "lists-need-an-update"],
)
def test_install_tools_installs_as_root_without_starting_services(
    tmp_path: Path, candidate: str, updates: list[str]
) -> None:
    """Against fake apt tools: installs both packages; policy-rc.d only during the install."""
    log = tmp_path / "apt.log"
    policy = tmp_path / "policy-rc.d"
    tools = "promtool amtool prometheus prometheus-alertmanager"
    apt_get = f"""
echo "apt-get $* frontend=$DEBIAN_FRONTEND" >> {log}
if [ "$1" = install ]; then
    [ -x {policy} ] && {policy}; echo "policy exit $?" >> {log}
    for t in {tools}; do printf '#!/bin/sh\\necho "$0 version 1"\\n' > {tmp_path}/bin/$t; \
chmod +x {tmp_path}/bin/$t; done
fi"""
    bin_dir = _fake_bin(
        tmp_path / "bin",
        {
            "id": "echo 0",
            "apt-get": apt_get,
            "apt-cache": f'echo "$2:"; echo "  Installed: (none)"; echo "  Candidate: {candidate}"',
        },
    )
    proc = _run_install_tools(bin_dir, policy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    # `apt-get update` only when the package lists do not know the packages
    assert calls == [
        *updates,
        "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager "
        "frontend=noninteractive",
        "policy exit 101",  # services were forbidden to start during the install
    ]
    assert not policy.exists(), "the temporary policy-rc.d must be removed"
    assert "installed" in proc.stdout
