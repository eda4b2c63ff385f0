"""deploy/kubernetes rendered by kustomize (kubectl) and checked by kubernetes-validate: the
sidecar, the StatefulSet, RBAC, the PodMonitor, and configs the daemon accepts.

kubectl missing: these tests skip. Everything that needs no tool always runs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy_support import (
    CONFIG_DIR,
    CRD_GROUP,
    KUBERNETES,
    KUBERNETES_VERSION,
    METRICS_PORT,
    MONITOR_UID,
    PROMETHEUS_RULE,
    SCRAPE_LABEL,
    SECRET_KEYS,
    SECRET_NAME,
    by_name,
    kustomize,
    kustomize_overlay,
    load_yaml,
    monitor_config,
    only,
    render_with_namespace,
    run,
)

pytestmark = pytest.mark.tools


def check_monitor_container(
    container: dict[str, Any],
    pod_spec: dict[str, Any],
    configmap: dict[str, Any],
    *,
    memory: tuple[str, str],
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
    assert resources["requests"] == {"cpu": "10m", "memory": memory[0]}
    assert resources["limits"] == {"memory": memory[1]}

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


def check_config_in_pod(rendered: list[dict[str, Any]], directory: Path, **pod_env: str) -> str:
    """`check-config` on the rendered ConfigMap's file, with the Secret's variables and what
    the pod sets (`pod_env`); its output."""
    config = directory / "config.yaml"
    config.write_text(only(rendered, "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    env = {
        **os.environ,
        "EPCC_CLIENT_ID": "id",
        "EPCC_CLIENT_SECRET": "secret-for-check-config",
        **pod_env,
    }
    return run(sys.executable, "-m", "monitor", "check-config", "--config", config, env=env)


def pod_monitor_selects(pod_monitor: dict[str, Any], deployment: dict[str, Any]) -> None:
    spec = pod_monitor["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in spec["selector"]["matchLabels"].items():
        assert labels.get(key) == value, f"pod template lacks {key}={value}"
    assert labels.get(SCRAPE_LABEL[0]) == SCRAPE_LABEL[1]


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


def test_standalone_renders_one_rolled_replica_that_holds_the_lease(
    standalone: list[dict[str, Any]],
) -> None:
    kinds = sorted(doc["kind"] for doc in standalone)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodMonitor",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    deployment = only(standalone, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # A rollout runs the new pod beside the old one: the Lease keeps one polling, and hands over.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = by_name(pod["containers"], "promo-monitor")
    # whole-process RSS at 1,000 x 100: 132 MB after scrapes, + the Lease's Kubernetes client
    check_monitor_container(
        container, pod, only(standalone, "ConfigMap"), memory=("128Mi", "256Mi")
    )
    pod_monitor_selects(only(standalone, "PodMonitor"), deployment)

    env = {item["name"]: item for item in container["env"]}
    assert env["COORDINATION_MODE"]["value"] == "lease"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Its own ServiceAccount, whose token only this pod mounts, bound to the Lease Role alone.
    account = only(standalone, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True
    assert only(standalone, "Role")["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update", "patch"],
        }
    ]
    binding = only(standalone, "RoleBinding")
    assert binding["roleRef"]["name"] == only(standalone, "Role")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_standalone_rbac_follows_the_overlay_namespace(kubectl: str, tmp_path: Path) -> None:
    docs = render_with_namespace(kubectl, tmp_path, "standalone", "shop")
    (subject,) = only(docs, "RoleBinding")["subjects"]
    assert subject["namespace"] == only(docs, "ServiceAccount")["metadata"]["namespace"] == "shop"
    assert only(docs, "Role")["metadata"]["namespace"] == "shop"


def test_daemon_accepts_the_standalone_config_in_its_pod(
    standalone: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = check_config_in_pod(
        standalone,
        tmp_path,
        COORDINATION_MODE="lease",
        POD_NAME="promo-monitor-7c9f6-xkq2z",
        POD_NAMESPACE="shop",
        KUBERNETES_SERVICE_HOST="127.0.0.1",  # (check-config sends no request)
        KUBERNETES_SERVICE_PORT="443",
    )
    assert "coordination: lease shop/promo-monitor as promo-monitor-7c9f6-xkq2z" in out


@pytest.mark.parametrize(
    ("variant", "kinds"),
    [
        ("example", {"ConfigMap", "Deployment", "Role", "RoleBinding"}),
        ("standalone", {"ConfigMap", "Deployment", "Role", "RoleBinding", "ServiceAccount"}),
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
    """Edit spec.replicas in statefulset.yaml, as the deployment guide says: the shards follow."""
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
    out = check_config_in_pod(statefulset, tmp_path, SHARD_COUNT="3", POD_NAME="promo-monitor-2")
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
    # the same, + the Lease's Kubernetes client (37 MB)
    check_monitor_container(sidecar, pod, only(example, "ConfigMap"), memory=("128Mi", "256Mi"))
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
    docs = kustomize_overlay(
        kubectl,
        tmp_path / "overlay",
        namespace="shop",
        resources=["../kubernetes/example"],
        patches=patches,
    )
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
    out = check_config_in_pod(
        example,
        tmp_path,
        COORDINATION_MODE="lease",
        POD_NAME="example-app-5d8f7-abcde",
        POD_NAMESPACE="shop",
        # Kubernetes sets these in every container: the Lease is reached in cluster.
        KUBERNETES_SERVICE_HOST="127.0.0.1",  # (check-config sends no request)
        KUBERNETES_SERVICE_PORT="443",
    )
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
    resources, components = [str(rel / "base"), "apps.yaml"], [str(rel / "sidecar")]

    docs = kustomize_overlay(kubectl, tmp_path, resources=resources, components=components)
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
