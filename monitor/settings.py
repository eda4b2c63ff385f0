"""Configuration: the YAML schema, environment overrides and user-facing validation messages."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.models import PromotionKind

CONFIG_ENV = "PROMO_MONITOR_CONFIG"
DEFAULT_PORT = 10464


class ConfigError(Exception):
    """A configuration the monitor cannot run with; `problems` are one line each, key first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is a monitor silently wrong.
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiSettings(_Section):
    base_url: str = "https://useast.api.elasticpath.com"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    token_file: Path | None = None
    allow_insecure_http: bool = False
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_requests_per_second: Annotated[float, Field(gt=0, le=1000)] = 10.0
    page_limit: Annotated[int, Field(ge=1, le=100)] = 100

    @field_validator("base_url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://useast.api.elasticpath.com")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(
                "must be the API root without a path, e.g. https://euwest.api.elasticpath.com"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _auth_and_transport(self) -> ApiSettings:
        host = urlsplit(self.base_url).hostname or ""
        if self.base_url.startswith("http://") and not (
            self.allow_insecure_http or is_loopback_host(host)
        ):
            # Credentials and tokens would cross the network in clear text.
            raise ValueError(
                "base_url: http:// is refused for non-loopback hosts "
                "(use https, or set api.allow_insecure_http: true)"
            )
        has_secret = self.client_secret is not None or self.client_secret_file is not None
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("client_secret: set client_secret or client_secret_file, not both")
        if self.token_file is not None:
            if self.client_id or has_secret:
                raise ValueError("token_file: use token_file or client credentials, not both")
            return self
        if not self.client_id:
            raise ValueError("client_id: required (or set EPCC_CLIENT_ID, or use api.token_file)")
        if not has_secret:
            raise ValueError(
                "client_secret: required (or client_secret_file, or set EPCC_CLIENT_SECRET)"
            )
        return self

    @property
    def auth_kind(self) -> str:
        if self.token_file is not None:
            return f"static token from {self.token_file}"
        source = "client_secret_file" if self.client_secret_file else "client_secret"
        return f"client_credentials (client_id {self.client_id}, secret from {source})"


class PollSettings(_Section):
    interval_seconds: Annotated[float, Field(gt=0)] = 60.0
    # Promotions with a job pending/processing/cancelling are polled this often instead;
    # unset means 10 s, or interval_seconds if that is shorter.
    active_interval_seconds: Annotated[float, Field(gt=0)] | None = None
    stuck_after_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # At a promotion's first poll (a new pod: state in an emptyDir starts empty), jobs that
    # failed this recently are reported, not absorbed as history; 0 turns it off. Keep it below
    # the 30 min window of the PromoMonitorJobFailed rule.
    baseline_lookback_seconds: Annotated[float, Field(ge=0, le=86_400)] = 900.0
    max_concurrent_polls: Annotated[int, Field(ge=1, le=256)] = 8
    # Idle promotions are polled between these, more often where jobs happen, for the requests
    # interval_seconds spends (monitor.planner). Unset: the active interval; 900 s, or
    # interval_seconds if that is longer.
    min_interval_seconds: Annotated[float, Field(gt=0)] | None = None
    max_interval_seconds: Annotated[float, Field(gt=0)] | None = None

    @property
    def active_interval(self) -> float:
        if self.active_interval_seconds is not None:
            return self.active_interval_seconds
        return min(10.0, self.interval_seconds)

    @property
    def min_interval(self) -> float:
        return self.min_interval_seconds or self.active_interval

    @property
    def max_interval(self) -> float:
        return self.max_interval_seconds or max(900.0, self.interval_seconds)

    @model_validator(mode="after")
    def _active_not_slower(self) -> PollSettings:
        if self.active_interval > self.interval_seconds:
            raise ValueError(
                "active_interval_seconds: must be <= interval_seconds (active promotions are "
                "polled more often, not less)"
            )
        if self.min_interval > self.interval_seconds:
            raise ValueError("min_interval_seconds: must be <= interval_seconds")
        if self.max_interval < self.interval_seconds:
            raise ValueError("max_interval_seconds: must be >= interval_seconds")
        return self


class PromotionSettings(_Section):
    id: str
    kind: PromotionKind = PromotionKind.PROMOTION
    filter: Annotated[str, Field(min_length=1, max_length=500)] | None = None

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        # Ids go into URL paths: only a canonical UUID may, never anything path-like.
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            msg = "must be a UUID such as ad386702-e780-42c6-b190-0527ad768917"
            raise ValueError(msg) from None

    @field_validator("filter")
    @classmethod
    def _filter_one_line(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "\r\n\t"):
            raise ValueError("must be a single line, e.g. eq(job_type,code_generate)")
        return value


class BasicAuthSettings(_Section):
    username: Annotated[str, Field(min_length=1)]
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuthSettings:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("password: set exactly one of password or password_file")
        return self


class ServerSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - a sidecar's metrics must be reachable by Prometheus
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT
    # For clusters that require encrypted or authenticated scrapes; probes stay open.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    basic_auth: BasicAuthSettings | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file: set both tls_cert_file and tls_key_file, or neither")
        return self


class StateSettings(_Section):
    path: Path = Path("./state/snapshot.json")
    # Finished jobs older than this leave the snapshot (and /metrics), so memory stays bounded
    # however many jobs a promotion accumulates.
    retention_days: Annotated[float, Field(gt=0)] = 7.0


class DiscoverySettings(_Section):
    enabled: bool = False
    kinds: Annotated[list[PromotionKind], Field(min_length=1)] = [
        PromotionKind.PROMOTION,
        PromotionKind.RULE_PROMOTION,
    ]
    interval_seconds: Annotated[float, Field(gt=0)] = 300.0
    # Elastic Path creates promotions disabled and codes are generated before a campaign is
    # switched on: a job that fails then is the one a launch depends on.
    include_disabled: bool = True
    include_expired: bool = False
    # A code job queued before a promotion's end can fail after it, and a monitor that starts
    # then (a rollout) knows no running job to keep the promotion for: watch it a while longer.
    expired_grace_seconds: Annotated[float, Field(ge=0)] = 86_400.0
    name_pattern: str | None = None

    @field_validator("name_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ShardingSettings(_Section):
    shard_count: Annotated[int, Field(ge=1, le=1024)] = 1
    # Unset: $SHARD_INDEX, else the ordinal at the end of the pod name (StatefulSet), filled in
    # by parse_settings; still unset with shard_count > 1 is an error, for every command alike.
    shard_index: Annotated[int, Field(ge=0)] | None = None
    # None: api.max_requests_per_second / shard_count, so N replicas share one store budget.
    max_requests_per_second: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardingSettings:
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            # (an index is read from the environment only when sharded: this one was configured)
            raise ValueError("shard_index must be < shard_count")
        if self.shard_count == 1:
            return self
        if self.shard_index is None:
            raise ValueError(
                "shard_index: shard_count > 1 but no shard_index, $SHARD_INDEX or pod ordinal "
                "(a pod name ending in -N, as a StatefulSet gives)"
            )
        return self

    @property
    def index(self) -> int:
        """This replica's shard (0 when unsharded)."""
        if self.shard_count == 1 or self.shard_index is None:
            return 0
        return self.shard_index


_ORDINAL = re.compile(r"-(\d+)$")


def shard_index_from_env(env: Mapping[str, str]) -> int | str | None:
    """$SHARD_INDEX (as given: a value that is no index is refused by validation, never
    replaced by a guess), else the ordinal at the end of $POD_NAME or $HOSTNAME, else None."""
    raw = (env.get("SHARD_INDEX") or "").strip()
    if raw:
        return int(raw) if raw.isdigit() else raw
    match = _ORDINAL.search(env.get("POD_NAME") or env.get("HOSTNAME") or "")
    return int(match.group(1)) if match is not None else None


# Where Kubernetes puts the pod's namespace for a pod with a service account token.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Lease names are DNS subdomains, namespaces DNS labels (what the API server would refuse anyway).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class CoordinationSettings(_Section):
    """Sidecar replicas elect one poller through a Kubernetes Lease (mode `lease`)."""

    mode: Literal["none", "lease"] = "none"
    lease_name: str = "promo-monitor"
    # None: $POD_NAMESPACE, else the service account's namespace (resolved by parse_settings).
    namespace: str | None = None
    # None: $POD_NAME, else the hostname (a pod's hostname is its name).
    identity: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    # A Lease stores whole seconds (spec.leaseDurationSeconds).
    lease_duration_seconds: Annotated[int, Field(ge=1, le=3600)] = 15
    renew_deadline_seconds: Annotated[float, Field(gt=0)] = 10.0
    retry_period_seconds: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("lease_name")
    @classmethod
    def _lease_name(cls, value: str) -> str:
        if not _DNS_SUBDOMAIN.fullmatch(value):
            raise ValueError("must be a DNS subdomain name (lower case, digits, '-', '.')")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL.fullmatch(value):
            raise ValueError("must be a Kubernetes namespace name (lower case, digits, '-')")
        return value

    @model_validator(mode="after")
    def _timing(self) -> CoordinationSettings:
        # The fencing rule needs both gaps: a leader that cannot renew falls silent at the renew
        # deadline, before its lease can expire and another replica may start polling.
        if self.renew_deadline_seconds >= self.lease_duration_seconds:
            raise ValueError("renew_deadline_seconds: must be < lease_duration_seconds")
        if self.retry_period_seconds >= self.renew_deadline_seconds:
            raise ValueError("retry_period_seconds: must be < renew_deadline_seconds")
        if self.mode == "lease" and self.namespace is None:
            raise ValueError(
                "namespace: required outside a pod (set coordination.namespace or POD_NAMESPACE)"
            )
        return self


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class Settings(_Section):
    api: ApiSettings
    poll: PollSettings = PollSettings()
    promotions: list[PromotionSettings] = []
    discovery: DiscoverySettings = DiscoverySettings()
    sharding: ShardingSettings = ShardingSettings()
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()
    log: LogSettings = LogSettings()
    coordination: CoordinationSettings = CoordinationSettings()

    @model_validator(mode="after")
    def _something_to_watch(self) -> Settings:
        if not self.promotions and not self.discovery.enabled:
            raise ValueError("promotions: list at least one promotion, or set discovery.enabled")
        return self

    @property
    def request_rate(self) -> float:
        """This replica's share of the store's request budget."""
        if self.sharding.max_requests_per_second is not None:
            return self.sharding.max_requests_per_second
        return self.api.max_requests_per_second / self.sharding.shard_count

    @field_validator("promotions")
    @classmethod
    def _unique(cls, value: list[PromotionSettings]) -> list[PromotionSettings]:
        seen: set[str] = set()
        for promotion in value:
            if promotion.id in seen:
                raise ValueError(f"promotion {promotion.id} is listed twice")
            seen.add(promotion.id)
        return value

    def summary(self) -> str:
        """A short description for check-config; names where secrets come from, never them."""
        kinds = dict.fromkeys(PromotionKind, 0)
        for promotion in self.promotions:
            kinds[promotion.kind] += 1
        counts = ", ".join(f"{n} {kind.value}" for kind, n in kinds.items())
        discovery = (
            f"discovery: every {self.discovery.interval_seconds:g}s of "
            + ", ".join(k.value for k in self.discovery.kinds)
            if self.discovery.enabled
            else "discovery: off"
        )
        return "\n".join(
            [
                f"promotions: {len(self.promotions)} ({counts})",
                discovery,
                f"api.base_url: {self.api.base_url}",
                f"auth: {self.api.auth_kind}",
                f"poll: every {self.poll.interval_seconds:g}s "
                f"({self.poll.active_interval:g}s while a job is active), "
                f"budget {self.request_rate:g} requests/s",
                f"metrics: http://{self.server.host}:{self.server.port}/metrics",
                f"state: {self.state.path}",
                self._coordination_summary(),
            ]
        )

    def _coordination_summary(self) -> str:
        c = self.coordination
        if c.mode == "none":
            return "coordination: none (this process polls)"
        return (
            f"coordination: lease {c.namespace}/{c.lease_name} as {c.identity} "
            f"(duration {c.lease_duration_seconds}s, renew deadline "
            f"{c.renew_deadline_seconds:g}s, retry {c.retry_period_seconds:g}s)"
        )


class EnvironmentOverrides(BaseSettings):
    """The variables Elastic Path's own CLI reads; they win over the file."""

    model_config = SettingsConfigDict(env_prefix="EPCC_", extra="ignore")

    client_id: str | None = None
    client_secret: SecretStr | None = None
    api_base_url: str | None = None


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(item)
    return "".join(parts)


def _bound(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = {key: _bound(value) for key, value in (error.get("ctx") or {}).items()}
    known = {
        "missing": "required",
        "extra_forbidden": "unknown key",
        "greater_than": f"must be > {ctx.get('gt')}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "too_short": "must not be empty",
        "string_too_short": "must not be empty",
        "path_type": "must be a file path",
    }
    if kind in known:
        return known[kind]
    message = str(error["msg"]).removeprefix("Value error, ")
    return message.replace("Input should be", "must be")


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem, `dotted.key: what is wrong`; input values are never echoed."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = _message(error)
        loc = _location(tuple(error["loc"]))
        # Model-level checks name their own key inside the message ("client_id: required").
        head, sep, rest = message.partition(": ")
        if sep and " " not in head and error["type"] == "value_error":
            loc = f"{loc}.{head}" if loc else head
            message = rest
        problems.append(f"{loc}: {message}" if loc else message)
    return problems


class ShardEnvironment(BaseSettings):
    """SHARD_COUNT: the StatefulSet copies its replica count here, so scaling is one number."""

    model_config = SettingsConfigDict(extra="ignore")

    shard_count: int | None = None


class PodEnvironment(BaseSettings):
    """What the sidecar's pod spec passes: COORDINATION_MODE, and POD_NAME/POD_NAMESPACE from the
    downward API."""

    model_config = SettingsConfigDict(extra="ignore")

    coordination_mode: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None


def _pod_namespace(pod: PodEnvironment) -> str | None:
    if pod.pod_namespace:
        return pod.pod_namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _apply_coordination(raw: dict[str, Any]) -> None:
    pod = PodEnvironment()
    if pod.coordination_mode:
        raw.setdefault("coordination", {})
    section = raw.get("coordination")
    if not isinstance(section, dict):
        return
    if pod.coordination_mode:
        section["mode"] = pod.coordination_mode
    if section.get("mode") != "lease":
        return
    if section.get("namespace") is None:
        section["namespace"] = _pod_namespace(pod)
    if section.get("identity") is None:
        section["identity"] = pod.pod_name or socket.gethostname()


def _more_than_one(count: object) -> bool:
    try:
        return int(str(count)) > 1
    except ValueError:
        return False  # validation names the key


def _apply_environment(raw: dict[str, Any]) -> None:
    _apply_coordination(raw)
    shards = ShardEnvironment()
    sharding = raw.setdefault("sharding", {})
    if isinstance(sharding, dict):
        if shards.shard_count is not None:
            sharding["shard_count"] = shards.shard_count
        # Only a sharded monitor has an index to find: a lone sidecar whose pod happens to be
        # named `shop-2` must not be refused for it.
        if sharding.get("shard_index") is None and _more_than_one(sharding.get("shard_count")):
            sharding["shard_index"] = shard_index_from_env(os.environ)
    overrides = EnvironmentOverrides()
    api = raw.setdefault("api", {})
    if not isinstance(api, dict):
        return
    if overrides.client_id:
        api["client_id"] = overrides.client_id
    if overrides.client_secret is not None and overrides.client_secret.get_secret_value():
        api["client_secret"] = overrides.client_secret
        api.pop("client_secret_file", None)
    if overrides.api_base_url:
        api["base_url"] = overrides.api_base_url


def parse_settings(raw: object) -> Settings:
    """Validate an already-parsed document plus the EPCC_* environment overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"config: must be a mapping of sections, not {type(raw).__name__}"])
    _apply_environment(raw)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_settings(path: Path | str) -> Settings:
    """Read and validate a YAML config file; every problem becomes a ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError([f"config: {path}: {where}{problem}"]) from None
    settings = parse_settings(raw)
    _check_files(settings)
    return settings


def _check_files(settings: Settings) -> None:
    problems = []
    auth = settings.server.basic_auth
    for key, file in (
        ("api.client_secret_file", settings.api.client_secret_file),
        ("api.token_file", settings.api.token_file),
        ("server.tls_cert_file", settings.server.tls_cert_file),
        ("server.tls_key_file", settings.server.tls_key_file),
        ("server.basic_auth.password_file", auth.password_file if auth else None),
    ):
        if file is not None and not os.access(file, os.R_OK):
            problems.append(f"{key}: cannot read {file}")
    if problems:
        raise ConfigError(problems)
    _check_server_files(settings.server)


def _check_server_files(server: ServerSettings) -> None:
    """What `run` reads once at start must be usable, or `check-config` would pass a config that
    `run` cannot serve: the certificate pair loads, the scrape password is text."""
    problems = []
    if server.tls_cert_file is not None and server.tls_key_file is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                server.tls_cert_file, server.tls_key_file
            )
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or "unusable"
            problems.append(
                f"server.tls_cert_file: {server.tls_cert_file} and {server.tls_key_file} are "
                f"not a PEM certificate and its key ({reason})"
            )
    auth = server.basic_auth
    if auth is not None and auth.password_file is not None:
        try:
            password = auth.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            password = None
        if not password:
            problems.append(
                f"server.basic_auth.password_file: {auth.password_file} holds no UTF-8 password"
            )
    if problems:
        raise ConfigError(problems)


def kubernetes_api(env: Mapping[str, str]) -> str:
    """How the Kubernetes API is reached: "in-cluster", or a kubeconfig's path; ConfigError if
    there is no way (the same verdict for check-config and for run opening the Lease client)."""
    kubeconfig = env.get("KUBECONFIG") or None
    if kubeconfig is not None:
        return kubeconfig
    if env.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster"
    default = Path.home() / ".kube" / "config"
    if default.is_file():
        return str(default)
    raise ConfigError(
        [
            "coordination: no Kubernetes API to reach: not in a pod "
            "(KUBERNETES_SERVICE_HOST unset) and no KUBECONFIG or ~/.kube/config"
        ]
    )


def check_kubernetes(settings: Settings, env: Mapping[str, str]) -> None:
    """For the commands that elect (run, and check-config judging run): a lease needs a way to
    the Kubernetes API. `once` takes part in no election and does not ask."""
    if settings.coordination.mode != "lease":
        return
    found = kubernetes_api(env)
    if found != "in-cluster" and not os.access(found, os.R_OK):
        raise ConfigError([f"coordination: cannot read the kubeconfig {found}"])
