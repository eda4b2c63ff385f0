"""A small fake of the Kubernetes Lease API (coordination.k8s.io/v1) for the election tests.

What a real API server does for one resource kind: bearer-token auth, GET/POST/PUT/PATCH/DELETE,
resourceVersion bumped on every write, a write carrying a stale resourceVersion answered 409,
PATCH as a JSON merge patch (RFC 7386: null deletes a key) of metadata and spec, annotations
over 256 KiB in all refused (422), and the discovery endpoints a client library may call first.
Tests can cut one client off (its requests hang, as on a broken network path) and read every
request it received.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

GROUP = "coordination.k8s.io"
# The API server's limit on all of an object's annotations together (keys and values).
ANNOTATIONS_LIMIT = 256 * 1024
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


@dataclass
class Seen:
    method: str
    path: str
    identity: str | None  # whose token it carried (None: no or unknown token)
    status: int
    at: float = field(default_factory=time.monotonic)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def annotations_size(metadata: dict[str, Any]) -> int:
    return sum(len(k) + len(v) for k, v in (metadata.get("annotations") or {}).items())


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


class FakeLeaseApi:
    """Leases by (namespace, name); tokens map to identities."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}  # token -> identity
        self.cut_off: set[str] = set()  # identities whose requests hang
        self.requests: list[Seen] = []
        self._version = 0

    def token_for(self, identity: str) -> str:
        token = f"token-{identity}-0123456789abcdef"
        self.tokens[token] = identity
        return token

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def holder(self, namespace: str, name: str) -> str | None:
        lease = self.leases.get((namespace, name))
        return None if lease is None else lease["spec"].get("holderIdentity")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/version", self._version_info)
        app.router.add_get("/api", self._api_versions)
        app.router.add_get("/apis", self._api_groups)
        app.router.add_get(f"/apis/{GROUP}/v1", self._resources)
        collection = LEASES.format(namespace="{namespace}")
        app.router.add_post(collection, self._create)
        item = collection + "/{name}"
        app.router.add_get(item, self._get)
        app.router.add_put(item, self._replace)
        app.router.add_patch(item, self._patch)
        app.router.add_delete(item, self._delete)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        identity = self.tokens.get(token) if scheme == "Bearer" else None
        if identity is None:
            response: web.StreamResponse = _status(401, "Unauthorized", "Unauthorized")
        elif identity in self.cut_off:
            self.requests.append(Seen(request.method, request.path, identity, 0))
            await asyncio.sleep(3600)  # the client's own timeout ends this
            raise web.HTTPServiceUnavailable
        else:
            response = await handler(request)
        self.requests.append(Seen(request.method, request.path, identity, response.status))
        return response

    async def _version_info(self, _: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})

    async def _api_versions(self, _: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def _api_groups(self, _: web.Request) -> web.Response:
        version = {"groupVersion": f"{GROUP}/v1", "version": "v1"}
        group = {"name": GROUP, "versions": [version], "preferredVersion": version}
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})

    async def _resources(self, _: web.Request) -> web.Response:
        lease = {
            "name": "leases",
            "namespaced": True,
            "kind": "Lease",
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }
        return web.json_response(
            {"kind": "APIResourceList", "groupVersion": f"{GROUP}/v1", "resources": [lease]}
        )

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        lease = self.leases.get(key)
        if lease is None:
            return _status(404, "NotFound", f'leases.{GROUP} "{key[1]}" not found')
        return web.json_response(lease)

    def _store(
        self, namespace: str, name: str, body: dict[str, Any], status: int = 200
    ) -> web.Response:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        annotations = (body.get("metadata") or {}).get("annotations")
        if annotations:
            metadata["annotations"] = dict(annotations)
        if annotations_size(metadata) > ANNOTATIONS_LIMIT:
            return _status(
                422,
                "Invalid",
                f'Lease.{GROUP} "{name}" is invalid: metadata.annotations: Too long: must have '
                f"at most {ANNOTATIONS_LIMIT} bytes",
            )
        metadata["resourceVersion"] = self._next_version()
        lease = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": dict(body.get("spec") or {}),
        }
        self.leases[(namespace, name)] = lease
        return web.json_response(lease, status=status)

    async def _create(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        body = await request.json()
        name = body.get("metadata", {}).get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        if (namespace, name) in self.leases:
            return _status(409, "AlreadyExists", f'leases.{GROUP} "{name}" already exists')
        return self._store(namespace, name, body, status=201)

    def _conflict(self, key: tuple[str, str], body: dict[str, Any]) -> web.Response | None:
        current = self.leases.get(key)
        if current is None:
            return _status(404, "NotFound", f'leases.{GROUP} "{key[1]}" not found')
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on leases.{GROUP} "{key[1]}": the object has '
                "been modified; please apply your changes to the latest version and try again"
            )
            return _status(409, "Conflict", message)
        return None

    async def _replace(self, request: web.Request) -> web.Response:
        return await self._update(request, merge=False)

    async def _patch(self, request: web.Request) -> web.Response:
        return await self._update(request, merge=True)

    async def _update(self, request: web.Request, *, merge: bool) -> web.Response:
        """PUT (the body replaces the lease) or PATCH (a JSON merge patch of the lease)."""
        key = (request.match_info["namespace"], request.match_info["name"])
        body = await request.json()
        refused = self._conflict(key, body)
        if refused is not None:
            return refused
        if merge:
            body = merge_patch(self.leases[key], body)
        elif body.get("metadata", {}).get("resourceVersion") is None:
            # A PUT must carry the version it replaces (what an optimistic client does).
            return _status(422, "Invalid", "metadata.resourceVersion: must be specified")
        return self._store(*key, body)

    async def _delete(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if self.leases.pop(key, None) is None:
            return _status(404, "NotFound", f'leases.{GROUP} "{key[1]}" not found')
        return web.json_response({"kind": "Status", "status": "Success"})


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "shop") -> Path:
    """A kubeconfig for one client of the fake: its server and bearer token."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "monitor", "user": {"token": token}}],
        "contexts": [
            {
                "name": "fake",
                "context": {"cluster": "fake", "user": "monitor", "namespace": namespace},
            }
        ],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path
