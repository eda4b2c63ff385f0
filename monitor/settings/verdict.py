"""The one verdict on a configuration, the same for check-config and run: valid Settings, or a
ConfigError whose lines each name a key and never echo a value (a secret could be in it)."""

from __future__ import annotations

import os
import ssl
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from monitor.models import PromotionKind, without_password
from monitor.settings.environment import EnvironmentSettings
from monitor.settings.schema import Settings


class ConfigError(Exception):
    """A configuration the monitor cannot run with; `problems` are one line each, key first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        loc = loc.removeprefix(".")
        # Model-level checks name their own key inside the message ("client_id: required").
        head, sep, rest = message.partition(": ")
        if sep and " " not in head and error["type"] == "value_error":
            loc = f"{loc}.{head}" if loc else head
            message = rest
        problems.append(f"{loc}: {message}" if loc else message)
    return problems


def parse_settings(raw: object) -> Settings:
    """Validate an already-parsed document under the environment's sources."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"config: must be a mapping of sections, not {type(raw).__name__}"])
    # BaseSettings takes `_env_file` and its kin as options, and keywords must be strings: such
    # keys are unknown keys here, never options.
    ours = {key: value for key, value in raw.items() if isinstance(key, str) and key[:1] != "_"}
    odd = [f"{key}: unknown key" for key in raw if key not in ours]
    try:
        # No api section is an empty one, which the environment may fill; what is missing then
        # is named by its key (api.client_id), not as the whole section.
        settings = EnvironmentSettings(**{"api": {}, **ours})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc) + odd) from None
    if odd:
        raise ConfigError(odd)
    return settings


def load_settings(path: Path) -> Settings:
    """Read and validate a YAML config file; every problem becomes a ConfigError line."""
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
    """Every file named is readable; what `run` reads once at start must be usable too, or
    `check-config` would pass a config that `run` cannot serve."""
    server, auth = settings.server, settings.server.basic_auth
    files = {
        "api.client_secret_file": settings.api.client_secret_file,
        "api.token_file": settings.api.token_file,
        "server.tls_cert_file": server.tls_cert_file,
        "server.tls_key_file": server.tls_key_file,
        "server.basic_auth.password_file": auth.password_file if auth else None,
    }
    if unread := [
        f"{key}: cannot read {f}" for key, f in files.items() if f and not os.access(f, os.R_OK)
    ]:
        raise ConfigError(unread)
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
    if kubeconfig := env.get("KUBECONFIG"):
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


def summary(settings: Settings) -> str:
    """A short description for check-config; names where secrets come from, never them."""
    kinds = Counter(promotion.kind for promotion in settings.promotions)
    counts = ", ".join(f"{kinds[kind]} {kind.value}" for kind in PromotionKind)
    discovery = (
        f"discovery: every {settings.discovery.interval_seconds:g}s of "
        + ", ".join(k.value for k in settings.discovery.kinds)
        if settings.discovery.enabled
        else "discovery: off"
    )
    c = settings.coordination
    coordination = (
        f"coordination: lease {c.namespace}/{c.lease_name} as {c.identity} "
        f"(duration {c.lease_duration_seconds}s, renew deadline "
        f"{c.renew_deadline_seconds:g}s, retry {c.retry_period_seconds:g}s)"
        if c.mode == "lease"
        else "coordination: none (this process polls)"
    )
    return "\n".join(
        [
            f"promotions: {len(settings.promotions)} ({counts})",
            discovery,
            f"api.base_url: {without_password(settings.api.base_url)}",
            f"auth: {settings.api.auth_kind}",
            f"poll: every {settings.poll.interval_seconds:g}s "
            f"({settings.poll.active_interval:g}s while a job is active), "
            f"budget {settings.request_rate:g} requests/s",
            f"metrics: http://{settings.server.host}:{settings.server.port}/metrics",
            f"state: {settings.state.path}",
            coordination,
        ]
    )
