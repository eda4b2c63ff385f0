"""The configuration schema, pure (no environment, no files): every key, its type, default, bounds
and meaning (the docs' reference). Cross-key rules name their key: `ValueError("key: problem")`."""

from __future__ import annotations

import ipaddress
import re
import uuid
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from monitor.models import PromotionKind

DEFAULT_PORT = 10464
# Lease names are DNS subdomains, namespaces DNS labels (what the API server would refuse anyway).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is a monitor silently wrong.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiSettings(_Section):
    base_url: str = "https://useast.api.elasticpath.com"
    """The store's API root (no path); env EPCC_API_BASE_URL overrides it."""
    client_id: str | None = None
    """OAuth2 client_credentials id; env EPCC_CLIENT_ID overrides it."""
    client_secret: SecretStr | None = None
    """The client secret inline; env EPCC_CLIENT_SECRET overrides it."""
    client_secret_file: Path | None = None
    """A file holding the client secret, re-read at every token refresh."""
    token_file: Path | None = None
    """Instead of client credentials: a bearer token, re-read on a 401."""
    allow_insecure_http: bool = False
    """Permit http:// to a host that is not loopback (credentials in clear)."""
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    """How long one request may take, in seconds."""
    max_requests_per_second: float = Field(10.0, gt=0, le=1000)
    """The process's budget (token requests too), in requests/s."""
    page_limit: int = Field(100, ge=1, le=100)
    """Jobs asked for per page; 100 is the API's maximum."""

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
            self.allow_insecure_http or _is_loopback(host)
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
    interval_seconds: float = Field(60.0, gt=0)
    """How often an idle promotion is polled, in seconds."""
    active_interval_seconds: float | None = Field(None, gt=0)
    """Seconds between polls of a promotion with an active job; unset: min(10, interval_seconds)."""
    stuck_after_seconds: float = Field(3600.0, gt=0)
    """A job active longer than this is stuck, in seconds."""
    # Keep it below the 30 min window of the PromoMonitorJobFailed rule.
    baseline_lookback_seconds: float = Field(900.0, ge=0, le=86_400)
    """At a first poll (a new pod), jobs that failed this recently, in seconds, are reported, not
    taken as history; 0 turns it off."""
    max_concurrent_polls: int = Field(8, ge=1, le=256)
    """Promotions polled at once (the budget still paces requests)."""
    min_interval_seconds: float | None = Field(None, gt=0)
    """An idle promotion is polled at most this often, in seconds, where jobs happen (the requests
    interval_seconds spends go where jobs happen); unset: the active interval."""
    max_interval_seconds: float | None = Field(None, gt=0)
    """The longest any promotion goes unpolled, in seconds; unset: max(900, interval_seconds)."""

    @property
    def active_interval(self) -> float:
        return self.active_interval_seconds or min(10.0, self.interval_seconds)

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
    """The promotion's id, a UUID (it goes into URL paths)."""
    kind: PromotionKind = PromotionKind.PROMOTION
    """Its API: /v2/promotions or /v2/rule-promotions."""
    filter: str | None = Field(None, min_length=1, max_length=500)
    """A filter for the jobs endpoint, e.g. eq(job_type,code_generate)."""

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        # Only a canonical UUID may go into a URL path, never anything path-like.
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
    username: str = Field(min_length=1)
    """The user name scrapes must present."""
    password: SecretStr | None = None
    """The password scrapes present."""
    password_file: Path | None = None
    """A file holding that password."""

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuthSettings:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("password: set exactly one of password or password_file")
        return self


class ServerSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - a sidecar's metrics must be reachable by Prometheus
    """The address /metrics, the probes and the status page are served on."""
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    """TCP port (0: any free one)."""
    tls_cert_file: Path | None = None
    """PEM certificate: serve HTTPS (probes too); needs tls_key_file."""
    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""
    basic_auth: BasicAuthSettings | None = None
    """Credentials scrapes and the status page need; probes stay open."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file: set both tls_cert_file and tls_key_file, or neither")
        return self


class StateSettings(_Section):
    path: Path = Path("./state/monitor.db")
    """The SQLite state (snapshots, announcements owed, failures reported); keep it and its -wal on
    a volume. A .json path (an older release's snapshot) is imported once into the .db beside it."""
    retention_days: float = Field(7.0, gt=0)
    """Finished jobs older than this leave state and metrics, in days."""


class DiscoverySettings(_Section):
    enabled: bool = False
    """Watch every promotion of the store, not only those listed."""
    kinds: list[PromotionKind] = Field(list(PromotionKind), min_length=1)
    """Which kinds of promotion are listed."""
    interval_seconds: float = Field(300.0, gt=0)
    """How often the lists and names are read, in seconds."""
    # Elastic Path creates promotions disabled and codes are generated before a campaign is
    # switched on: a job that fails then is the one a launch depends on.
    include_disabled: bool = True
    """Watch disabled promotions too."""
    include_expired: bool = False
    """Watch promotions past their end (and its grace) too."""
    # A code job queued before a promotion's end can fail after it, and a monitor that starts
    # then (a rollout) knows no running job to keep the promotion for.
    expired_grace_seconds: float = Field(86_400.0, ge=0)
    """How long after its end a promotion expires, in seconds."""
    name_pattern: str | None = None
    """A regular expression a promotion's name must match."""

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
    shard_count: int = Field(1, ge=1, le=1024)
    """Replicas sharing the promotions; env SHARD_COUNT overrides."""
    shard_index: int | None = Field(None, ge=0)
    """This replica's shard; unset: $SHARD_INDEX, else the pod ordinal."""
    max_requests_per_second: float | None = Field(None, gt=0)
    """This replica's budget, in requests/s; unset: an even share."""

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardingSettings:
        if self.shard_index is not None and self.shard_index >= self.shard_count:
            # (an index is read from the environment only when sharded: this one was configured)
            raise ValueError("shard_index must be < shard_count")
        if self.shard_count > 1 and self.shard_index is None:
            raise ValueError(
                "shard_index: shard_count > 1 but no shard_index, $SHARD_INDEX or pod ordinal "
                "(a pod name ending in -N, as a StatefulSet gives)"
            )
        return self

    @property
    def index(self) -> int:
        """This replica's shard (0 when unsharded)."""
        return self.shard_index or 0


class CoordinationSettings(_Section):
    mode: Literal["none", "lease"] = "none"
    """lease: replicas elect one poller; env COORDINATION_MODE overrides."""
    lease_name: str = "promo-monitor"
    """The Lease's name; replicas sharing it share one poller."""
    namespace: str | None = None
    """The Lease's namespace; unset: $POD_NAMESPACE, else the pod's."""
    identity: str | None = Field(None, min_length=1, max_length=253)
    """This replica's name in the Lease; unset: $POD_NAME, else the hostname."""
    lease_duration_seconds: int = Field(15, ge=1, le=3600)
    """A lease not renewed this long may be taken, in seconds."""
    renew_deadline_seconds: float = Field(10.0, gt=0)
    """A leader not renewed this long stops polling, in seconds."""
    retry_period_seconds: float = Field(2.0, gt=0)
    """How often the leader renews and others try, in seconds."""

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
    """The least severe level of event written."""
    format: Literal["json", "console"] = "json"
    """json: one object per line on stdout; console: for people."""


class Settings(_Section):
    api: ApiSettings
    """The Elastic Path store and its credentials."""
    poll: PollSettings = PollSettings()
    """When promotions are polled."""
    promotions: list[PromotionSettings] = []
    """The promotions to watch; an entry wins over a discovered one."""
    discovery: DiscoverySettings = DiscoverySettings()
    """Which of the store's promotions are found and watched."""
    sharding: ShardingSettings = ShardingSettings()
    """How promotions and the budget are split over replicas."""
    server: ServerSettings = ServerSettings()
    """Where metrics, probes and the status page are served."""
    state: StateSettings = StateSettings()
    """What is kept across restarts."""
    log: LogSettings = LogSettings()
    """The event log on stdout."""
    coordination: CoordinationSettings = CoordinationSettings()
    """Leader election among sidecar replicas."""

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
