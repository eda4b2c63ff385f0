"""Configuration: every validation message names its key; env overrides; check-config output."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from monitor.models import PromotionKind
from monitor.settings import ConfigError, Settings, load_settings, parse_settings, summary
from monitor.simulator import Simulator, populate_demo
from tests.support import run_cli

PID = "ad386702-e780-42c6-b190-0527ad768917"
SECRET = "s3cr3t-value-that-must-never-print"


def valid() -> dict[str, Any]:
    return {
        "api": {
            "base_url": "https://useast.api.elasticpath.com",
            "client_id": "client-1",
            "client_secret": SECRET,
        },
        "promotions": [{"id": PID}],
    }


@pytest.fixture(autouse=True)
def _no_epcc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "EPCC_CLIENT_ID",
        "EPCC_CLIENT_SECRET",
        "EPCC_API_BASE_URL",
        "COORDINATION_MODE",
        "POD_NAME",
        "POD_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)


def problems(document: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document)
    return caught.value.problems


def test_defaults_fill_what_the_file_leaves_out() -> None:
    settings = parse_settings(valid())
    assert settings.poll.interval_seconds == 60
    assert settings.poll.stuck_after_seconds == 3600
    assert settings.api.page_limit == 100
    assert settings.server.port == 10464
    assert settings.log.format == "json"
    assert settings.promotions[0].kind is PromotionKind.PROMOTION


def every_key(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        yield prefix + name, field
        for inner in (field.annotation, *get_args(field.annotation)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from every_key(inner, f"{prefix}{name}.")


def test_every_key_is_described_for_the_reference() -> None:
    # The docs site generates the configuration reference from these descriptions.
    described = {key: field.description or "" for key, field in every_key(Settings)}
    assert {"promotions.id", "server.basic_auth.password_file"} <= described.keys()
    assert [key for key, text in described.items() if not text.endswith(".")] == []


def edit(path: str, new: object) -> dict[str, Any]:
    document = valid()
    *parents, leaf = path.split(".")
    node: Any = document
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    if new is DELETE:
        del node[leaf]
    else:
        node[leaf] = new
    return document


DELETE = object()

INVALID = [
    ("poll.interval_seconds", 0, "poll.interval_seconds: must be > 0"),
    ("poll.interval_seconds", "often", "poll.interval_seconds: must be a valid number"),
    ("poll.stuck_after_seconds", -5, "poll.stuck_after_seconds: must be > 0"),
    ("poll.max_concurrent_polls", 0, "poll.max_concurrent_polls: must be >= 1"),
    ("poll.every", 5, "poll.every: unknown key"),
    ("api.page_limit", 101, "api.page_limit: must be <= 100"),
    ("api.page_limit", 0, "api.page_limit: must be >= 1"),
    ("api.timeout_seconds", 0, "api.timeout_seconds: must be > 0"),
    ("api.max_requests_per_second", 0, "api.max_requests_per_second: must be > 0"),
    ("api.base_url", "ftp://x.example", "api.base_url: must be an http(s) URL"),
    ("api.base_url", "https://x.example/v2", "api.base_url: must be the API root"),
    ("api.base_url", "http://useast.api.elasticpath.com", "api.base_url: http:// is refused"),
    ("api.client_id", DELETE, "api.client_id: required"),
    ("api.client_secret", DELETE, "api.client_secret: required"),
    ("api.clientid", "x", "api.clientid: unknown key"),
    ("promotions", [], "promotions: list at least one promotion, or set discovery.enabled"),
    ("promotions", DELETE, "promotions: list at least one promotion, or set discovery.enabled"),
    (
        "poll.active_interval_seconds",
        120,
        "poll.active_interval_seconds: must be <= interval_seconds",
    ),
    ("poll.min_interval_seconds", 61, "poll.min_interval_seconds: must be <= interval_seconds"),
    ("poll.max_interval_seconds", 59, "poll.max_interval_seconds: must be >= interval_seconds"),
    ("poll.max_interval_seconds", 0, "poll.max_interval_seconds: must be > 0"),
    ("discovery.name_pattern", "([", "discovery.name_pattern: not a valid regular expression"),
    ("discovery.kinds", [], "discovery.kinds: must not be empty"),
    ("sharding.shard_count", 0, "sharding.shard_count: must be >= 1"),
    ("sharding.shard_index", 3, "sharding: shard_index must be < shard_count"),
    ("state.retention_days", 0, "state.retention_days: must be > 0"),
    (
        "server.tls_cert_file",
        "/x.pem",
        "server.tls_cert_file: set both tls_cert_file and tls_key_file",
    ),
    ("server.basic_auth", {"username": "prom"}, "server.basic_auth.password: set exactly one"),
    ("promotions.0.id", "../../oauth", "promotions[0].id: must be a UUID"),
    ("promotions.0.kind", "coupon", "promotions[0].kind: must be 'promotion' or 'rule_promotion'"),
    (
        "promotions.0.filter",
        "eq(status,failed)\neq(x,y)",
        "promotions[0].filter: must be a single line",
    ),
    ("promotions.0.filter", "", "promotions[0].filter: must not be empty"),
    ("server.port", 70000, "server.port: must be <= 65535"),
    ("log.level", "verbose", "log.level: must be 'debug', 'info', 'warning' or 'error'"),
    ("log.format", "xml", "log.format: must be 'json' or 'console'"),
    ("state.path", 5, "state.path: must be a file path"),
    ("surprise", {}, "surprise: unknown key"),
    # BaseSettings would take this keyword as an option of its own: here it is no key of ours.
    ("_secrets_dir", "/etc", "_secrets_dir: unknown key"),
    ("coordination.mode", "raft", "coordination.mode: must be 'none' or 'lease'"),
    ("coordination.lease_name", "Promo_Monitor", "coordination.lease_name: must be a DNS"),
    ("coordination.lease_duration_seconds", 0, "coordination.lease_duration_seconds: must be >= 1"),
    (
        "coordination.renew_deadline_seconds",
        15,
        "coordination.renew_deadline_seconds: must be < lease_duration_seconds",
    ),
    (
        "coordination.retry_period_seconds",
        10,
        "coordination.retry_period_seconds: must be < renew_deadline_seconds",
    ),
    (
        "coordination",
        {"mode": "lease", "identity": "pod-a"},
        "coordination.namespace: required outside a pod (set coordination.namespace or "
        "POD_NAMESPACE)",
    ),
]


@pytest.mark.parametrize(
    ("path", "new", "message"), INVALID, ids=[f"{p}={n!r}" for p, n, _ in INVALID]
)
def test_each_invalid_value_is_named_with_its_key(path: str, new: object, message: str) -> None:
    found = problems(edit(path, new))
    assert any(line.startswith(message) for line in found), found


def test_every_problem_is_reported_at_once() -> None:
    document = edit("poll.interval_seconds", 0)
    document["log"] = {"format": "xml"}
    document["promotions"] = [{"id": "nope"}]
    found = problems(document)
    assert len(found) == 3
    assert [line.split(":")[0] for line in found] == [
        "poll.interval_seconds",
        "promotions[0].id",
        "log.format",
    ]


def test_auth_choices_are_exclusive() -> None:
    both_secrets = edit("api.client_secret_file", "/run/secret")
    assert problems(both_secrets) == [
        "api.client_secret: set client_secret or client_secret_file, not both"
    ]
    document = valid()
    document["api"]["token_file"] = "/run/token"
    assert problems(document) == ["api.token_file: use token_file or client credentials, not both"]
    token_only = {"base_url": "https://x.example", "token_file": "/run/token"}
    settings = parse_settings({"api": token_only, "promotions": [{"id": PID}]})
    assert settings.api.token_file == Path("/run/token")


def test_duplicate_promotions_are_refused() -> None:
    document = edit("promotions", [{"id": PID}, {"id": PID.upper()}])
    assert problems(document) == [f"promotions: promotion {PID} is listed twice"]


def test_ids_are_normalized_to_canonical_uuids() -> None:
    settings = parse_settings(edit("promotions", [{"id": PID.upper()}]))
    assert settings.promotions[0].id == PID


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.10.0.3"])
def test_plain_http_is_allowed_to_loopback(host: str) -> None:
    settings = parse_settings(edit("api.base_url", f"http://{host}:8080"))
    assert settings.api.base_url == f"http://{host}:8080"


def test_plain_http_to_a_remote_host_needs_explicit_consent() -> None:
    document = edit("api.base_url", "http://store.internal:8080")
    document["api"]["allow_insecure_http"] = True
    assert parse_settings(document).api.base_url == "http://store.internal:8080"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPCC_CLIENT_ID", "from-env")
    monkeypatch.setenv("EPCC_CLIENT_SECRET", "env-secret")
    monkeypatch.setenv("EPCC_API_BASE_URL", "https://euwest.api.elasticpath.com")
    document = valid()
    del document["api"]["client_secret"]
    document["api"]["client_secret_file"] = "/nonexistent"
    settings = parse_settings(document)
    assert settings.api.client_id == "from-env"
    assert settings.api.client_secret is not None
    assert settings.api.client_secret.get_secret_value() == "env-secret"
    assert settings.api.client_secret_file is None
    assert settings.api.base_url == "https://euwest.api.elasticpath.com"


def test_the_environment_leaves_the_given_document_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EPCC_CLIENT_ID", "from-env")
    monkeypatch.setenv("COORDINATION_MODE", "lease")
    monkeypatch.setenv("POD_NAMESPACE", "shop")
    document = valid()
    parse_settings(document)
    assert document == valid()


def test_an_empty_shard_count_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARD_COUNT", "")
    assert parse_settings(valid()).sharding.shard_count == 1


def test_a_shard_count_variable_that_is_no_number_is_named_and_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It used to escape as a raw ValidationError: a traceback quoting the value.
    monkeypatch.setenv("SHARD_COUNT", "three-replicas")
    assert problems(valid()) == [
        "sharding.shard_count: must be a valid integer, unable to parse string as an integer"
    ]


def test_credentials_may_come_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EPCC_CLIENT_ID", "from-env")
    monkeypatch.setenv("EPCC_CLIENT_SECRET", "env-secret")
    settings = parse_settings({"promotions": [{"id": PID}]})
    assert settings.api.client_id == "from-env"


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("api:\n  base_url: [unclosed\npromotions: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    (line,) = caught.value.problems
    assert line.startswith(f"config: {path}: line ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.yaml")
    assert caught.value.problems == [
        f"config: cannot read {tmp_path / 'absent.yaml'}: No such file or directory"
    ]


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert problems(["api"]) == ["config: must be a mapping of sections, not list"]


def test_unreadable_secret_file_is_reported(tmp_path: Path) -> None:
    document = valid()
    del document["api"]["client_secret"]
    document["api"]["client_secret_file"] = str(tmp_path / "missing-secret")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        f"api.client_secret_file: cannot read {tmp_path / 'missing-secret'}"
    ]


def test_check_config_prints_a_summary_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    document = valid()
    document["promotions"].append(
        {"id": "dd85ee8b-fddd-4ae8-9a4d-eb9404ead7bd", "kind": "rule_promotion"}
    )
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "promotions: 2 (1 promotion, 1 rule_promotion)" in result.stdout
    assert "https://useast.api.elasticpath.com" in result.stdout
    assert "client_credentials" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_check_config_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    document = edit("poll.interval_seconds", 0)
    document["api"]["page_limit"] = 500
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "promo-monitor: api.page_limit: must be <= 100",
        "promo-monitor: poll.interval_seconds: must be > 0",
    ]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_config_path_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(valid()), encoding="utf-8")
    result = run_cli("check-config", env={"PROMO_MONITOR_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    monkeypatch.delenv("PROMO_MONITOR_CONFIG", raising=False)
    result = run_cli("run")
    assert result.returncode == 2
    assert "pass --config FILE or set PROMO_MONITOR_CONFIG" in result.stderr


REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example points at a Secret mount; the environment stands in for it, as in a pod.
    monkeypatch.setenv("EPCC_CLIENT_SECRET", "from-the-pod-env")
    settings = load_settings(REPO / "config" / "monitor.example.yaml")
    assert {p.kind for p in settings.promotions} == set(PromotionKind)
    assert any(p.filter for p in settings.promotions)


def test_the_demo_config_names_the_promotions_the_simulator_serves() -> None:
    settings = load_settings(REPO / "config" / "demo.yaml")
    # The same call `python -m monitor.simulator --seed 1` makes with its defaults.
    sim = Simulator(seed=1)
    populate_demo(sim, 3, 5)
    served = {(p["id"], p["type"]) for p in sim.promotions()}
    assert {(p.id, p.kind.value) for p in settings.promotions} == served


def test_a_whole_store_needs_only_credentials_and_discovery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The documented minimal config: `discovery: {enabled: true}` plus the EPCC_* variables."""
    monkeypatch.setenv("EPCC_CLIENT_ID", "client-1")
    monkeypatch.setenv("EPCC_CLIENT_SECRET", SECRET)
    settings = parse_settings({"discovery": {"enabled": True}})
    assert settings.promotions == []
    assert settings.discovery.enabled
    assert settings.api.client_id == "client-1"


def test_coordination_is_off_unless_asked_for() -> None:
    coordination = parse_settings(valid()).coordination
    assert coordination.mode == "none"
    assert (coordination.lease_name, coordination.lease_duration_seconds) == ("promo-monitor", 15)
    assert (coordination.renew_deadline_seconds, coordination.retry_period_seconds) == (10, 2)


def test_small_test_durations_are_accepted() -> None:
    document = valid()
    document["coordination"] = {
        "mode": "lease",
        "namespace": "shop",
        "identity": "pod-a",
        "lease_duration_seconds": 3,
        "renew_deadline_seconds": 2,
        "retry_period_seconds": 0.5,
    }
    coordination = parse_settings(document).coordination
    assert (coordination.lease_duration_seconds, coordination.retry_period_seconds) == (3, 0.5)


def test_the_pod_supplies_mode_namespace_and_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the sidecar's pod spec sets: COORDINATION_MODE, and the downward API's pod fields."""
    monkeypatch.setenv("COORDINATION_MODE", "lease")
    monkeypatch.setenv("POD_NAME", "shop-7d9c-x2x4q")
    monkeypatch.setenv("POD_NAMESPACE", "shop")
    settings = parse_settings(valid())
    coordination = settings.coordination
    assert (coordination.mode, coordination.namespace, coordination.identity) == (
        "lease",
        "shop",
        "shop-7d9c-x2x4q",
    )
    assert "coordination: lease shop/promo-monitor as shop-7d9c-x2x4q" in summary(settings)


def test_identity_defaults_to_the_hostname_outside_a_pod() -> None:
    document = valid()
    document["coordination"] = {"mode": "lease", "namespace": "shop"}
    assert parse_settings(document).coordination.identity == socket.gethostname()


def test_poll_bounds_default_to_the_active_interval_and_900_s_or_the_interval() -> None:
    settings = parse_settings(valid())
    assert (settings.poll.min_interval, settings.poll.max_interval) == (10.0, 900.0)
    slow = parse_settings(edit("poll.interval_seconds", 3600))
    assert (slow.poll.min_interval, slow.poll.max_interval) == (10.0, 3600.0)
    bounded = edit("poll.min_interval_seconds", 20)
    bounded["poll"]["max_interval_seconds"] = 1800
    assert parse_settings(bounded).poll.min_interval == 20.0
    assert parse_settings(bounded).poll.max_interval == 1800.0
