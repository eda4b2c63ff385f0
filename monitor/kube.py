"""One Lease on the Kubernetes API, through kubernetes_asyncio.

The client is configured the way in-cluster tools are: `KUBECONFIG` when it is set, else the
pod's service account (token re-read as the kubelet rotates it), else `~/.kube/config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from monitor.coordination import LeaseConflictError, LeaseRecord, LeaseUnavailableError
from monitor.handover import ANNOTATION
from monitor.settings import ConfigError, kubernetes_api

# Where the kubelet mounts a pod's service account token, CA bundle and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409


def _micro(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: client.V1Lease) -> LeaseRecord:
    spec = lease.spec or client.V1LeaseSpec()
    metadata = lease.metadata or client.V1ObjectMeta()
    return LeaseRecord(
        holder=spec.holder_identity or "",
        lease_duration=int(spec.lease_duration_seconds or 0),
        acquire_time=_micro(spec.acquire_time),
        renew_time=_micro(spec.renew_time),
        transitions=int(spec.lease_transitions or 0),
        resource_version=metadata.resource_version,
        handover=(metadata.annotations or {}).get(ANNOTATION),
    )


def _unavailable(exc: BaseException) -> LeaseUnavailableError:
    if isinstance(exc, ApiException):
        # Only status and reason: the exception's text carries headers and body.
        return LeaseUnavailableError(f"HTTP {exc.status} {exc.reason}")
    return LeaseUnavailableError(type(exc).__name__)


class KubernetesLeases:
    """GET, create and replace one Lease; a replace carries the resourceVersion it read."""

    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        timeout: float,
        env: Mapping[str, str] = os.environ,
        service_account: Path = SERVICE_ACCOUNT_DIR,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self._timeout = timeout
        self._env = env
        self._service_account = service_account
        self._client: client.ApiClient | None = None

    async def open(self) -> None:
        """Configure the client (ConfigError if there is no way to the API); makes no request."""
        configuration = client.Configuration()
        found = kubernetes_api(self._env)
        account = self._service_account
        try:
            if found != "in-cluster":
                await config.load_kube_config(
                    config_file=found, client_configuration=configuration, persist_config=False
                )
            else:
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration,
                    token_filename=str(account / "token"),
                    cert_filename=str(account / "ca.crt"),
                    environ=dict(self._env),
                )
        except (config.ConfigException, OSError, ValueError) as exc:
            # The loaders' texts name files and fields, never a token.
            raise ConfigError(
                [f"coordination: cannot configure the Kubernetes API client: {exc}"]
            ) from None
        self._client = client.ApiClient(configuration)

    @property
    def _api(self) -> client.CoordinationV1Api:
        if self._client is None:
            raise LeaseUnavailableError("client not opened")
        return client.CoordinationV1Api(self._client)

    def _body(self, record: LeaseRecord) -> dict[str, Any]:
        metadata = {
            "name": self.name,
            "namespace": self.namespace,
            "resourceVersion": record.resource_version,
            "annotations": None if record.handover is None else {ANNOTATION: record.handover},
        }
        spec = {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.lease_duration,
            "leaseTransitions": record.transitions,
            # Sent as text: the API server wants MicroTime with exactly six fractional digits.
            "acquireTime": record.acquire_time,
            "renewTime": record.renew_time,
        }
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {key: value for key, value in metadata.items() if value is not None},
            "spec": {key: value for key, value in spec.items() if value is not None},
        }

    async def get(self) -> LeaseRecord | None:
        try:
            lease = await self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise _unavailable(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise _unavailable(exc) from None
        return _record(lease)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        return await self._write(
            self._api.create_namespaced_lease, self.namespace, body=self._body(record)
        )

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        return await self._write(
            self._api.replace_namespaced_lease, self.name, self.namespace, body=self._body(record)
        )

    async def _write(self, call: Any, *args: str, body: dict[str, Any]) -> LeaseRecord:
        try:
            lease = await call(*args, body, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == HTTP_CONFLICT:
                raise LeaseConflictError(self.name) from None
            raise _unavailable(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise _unavailable(exc) from None
        return _record(lease)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
