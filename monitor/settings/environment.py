"""What the environment adds to the file: two pydantic-settings sources above it, the variables
that override keys and what the pod supplies for keys left unset."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from monitor.settings.schema import Settings

CONFIG_ENV = "PROMO_MONITOR_CONFIG"
# Where Kubernetes puts the pod's namespace for a pod with a service account token.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Variable → (section, key) it overrides; an empty variable counts as unset. SHARD_COUNT: the
# StatefulSet copies its replica count there, so scaling is one number.
OVERRIDES = {
    "EPCC_CLIENT_ID": ("api", "client_id"),
    "EPCC_CLIENT_SECRET": ("api", "client_secret"),
    "EPCC_API_BASE_URL": ("api", "base_url"),
    "SHARD_COUNT": ("sharding", "shard_count"),
    "COORDINATION_MODE": ("coordination", "mode"),
}
_ORDINAL = re.compile(r"-(\d+)$")


def shard_index_from_env(env: Mapping[str, str]) -> int | str | None:
    """$SHARD_INDEX (as given: a value that is no index is refused by validation, never
    replaced by a guess), else the ordinal at the end of $POD_NAME or $HOSTNAME, else None."""
    if raw := (env.get("SHARD_INDEX") or "").strip():
        return int(raw) if raw.isdigit() else raw
    match = _ORDINAL.search(env.get("POD_NAME") or env.get("HOSTNAME") or "")
    return int(match.group(1)) if match else None


def _pod_namespace(env: Mapping[str, str]) -> str | None:
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _more_than_one(sharding: dict[str, Any]) -> bool:
    try:
        return int(str(sharding.get("shard_count"))) > 1
    except ValueError:
        return False  # validation names the key


class _Environment(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], document: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.document, self.env = document, os.environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # (unused: __call__ gives whole sections)

    def section(self, name: str) -> dict[str, Any] | None:
        """The file's section under the sources above; None if no mapping (validation names it)."""
        given = self.document.get(name, {})
        return {**given, **self.current_state.get(name, {})} if isinstance(given, dict) else None


class _Overrides(_Environment):
    """The variables that win over the file."""

    def __call__(self) -> dict[str, Any]:
        found: dict[str, dict[str, Any]] = {}
        for name, (section, key) in OVERRIDES.items():
            value = self.env.get(name)
            if value and self.section(section) is not None:
                found.setdefault(section, {})[key] = value
        api = found.get("api", {})
        if "client_secret" in api:
            # The variable replaces a mounted file as well as an inline secret.
            api.update(client_secret=SecretStr(api["client_secret"]), client_secret_file=None)
        return found


class _PodDefaults(_Environment):
    """What the pod supplies for keys left unset (null counts as unset)."""

    def __call__(self) -> dict[str, Any]:
        found: dict[str, dict[str, Any]] = {}
        sharding = self.section("sharding")
        # Only a sharded monitor has an index to find: a lone sidecar whose pod happens to be
        # named `shop-2` must not be refused for it.
        if sharding and sharding.get("shard_index") is None and _more_than_one(sharding):
            found["sharding"] = {"shard_index": shard_index_from_env(self.env)}
        lease = self.section("coordination")
        if lease and lease.get("mode") == "lease":
            unset = found["coordination"] = {}
            if lease.get("namespace") is None:
                unset["namespace"] = _pod_namespace(self.env)
            if lease.get("identity") is None:
                unset["identity"] = self.env.get("POD_NAME") or socket.gethostname()
        return found


class EnvironmentSettings(BaseSettings, Settings):
    """The schema, filled from the file's document under the environment's sources."""

    # Keys match exactly, as in the file: `API:` is an unknown key, not `api:`.
    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first. The pod's defaults rank above the file so that an explicit null gives way
        # to them, and only fill what is unset; no variable is read by field name (`API=...`).
        document = init_settings()
        return (
            _Overrides(settings_cls, document),
            _PodDefaults(settings_cls, document),
            init_settings,
        )
