"""The Kubernetes seam for DRA: one node's ResourceSlices and the ResourceClaims it prepares
(`resource.k8s.io/v1`), through lightkube.

Claims are followed with a `Mirror` (list, then watch, re-list on 410, backoff on failure):
the API server cannot select claims by allocation, so every claim of the cluster is listed
and watched, and the mirror keeps only those allocated a device of one driver and pool.

Objects go in and out as plain JSON dicts, so the DRA plugin's cores stay pure functions over
data the API server would return; only this module knows the client library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import lightkube
from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.resources.resource_v1 import ResourceClaim, ResourceClaimStatus, ResourceSlice
from lightkube.types import PatchType

from tessera.errors import ClaimError, TemporaryError
from tessera.kube.cluster import Mirror
from tessera.kube.config import load_config, make_client
from tessera.kube.retry import DEFAULT_RETRY, Failure, RetryPolicy

Obj = dict[str, Any]
API_VERSION = "resource.k8s.io/v1"
MAX_DISCOVERY_BYTES = 1 << 20  # /version and one group's discovery are a few KiB


class DraApiError(TemporaryError):
    """The API server refused or failed a DRA read or write (names the object)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Whether asking again may help: no answer, a conflict, throttling, a server error
        (a refusal such as 403 or 422 stays one)."""
        return Failure(self.status, str(self)).retryable


class DraApi:
    """Reads and writes one node's DRA objects. Build with `DraApi.connect(kubeconfig)` or
    around an existing `lightkube.AsyncClient`."""

    def __init__(self, client: lightkube.AsyncClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, *, timeout: float = 10.0) -> DraApi:
        return cls(make_client(load_config(kubeconfig), timeout=timeout))

    async def close(self) -> None:
        await self.client.close()

    async def node_slices(self, driver: str, node: str) -> list[Obj]:
        """The ResourceSlices of `driver` on `node`, as stored (with resourceVersions)."""
        try:
            return [_plain(s) async for s in self.client.list(
                ResourceSlice, fields={"spec.nodeName": node, "spec.driver": driver})]
        except ApiError as e:
            raise _failed(f"listing ResourceSlices of {driver} on {node}", e) from e
        except httpx2.TransportError as e:
            raise _unreachable(f"listing ResourceSlices of {driver} on {node}", e) from e

    async def create_slice(self, body: Obj, *, dry_run: bool = False) -> Obj:
        """Create a slice; the stored object as the API server answers it (with `dry_run`,
        what it would store, storing nothing)."""
        what = f"creating ResourceSlice {body['metadata']['name']}" + (
            " (dry run)" if dry_run else "")
        try:
            return _plain(await self.client.create(_slice(body), dry_run=dry_run))
        except ApiError as e:
            raise _failed(what, e) from e
        except httpx2.TransportError as e:
            raise _unreachable(what, e) from e

    # -- what the server serves ----------------------------------------------------------

    async def _get_json(self, path: str, what: str) -> Any:
        """GET a path lightkube has no resource for (through its own HTTP client, so the
        kubeconfig's credentials and TLS apply); None for a 404. Answers are bounded."""
        http = self.client._client._client  # lightkube's httpx2 client: no public accessor
        try:
            response = await http.get(path)
        except httpx2.HTTPError as e:
            raise DraApiError(f"reading {what} ({path}): {e or type(e).__name__}") from e
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise DraApiError(f"reading {what} ({path}): the API server answered "
                              f"{response.status_code}", status=response.status_code)
        if len(response.content) > MAX_DISCOVERY_BYTES:
            raise DraApiError(f"{what} ({path}) is over {MAX_DISCOVERY_BYTES} bytes; is "
                              "this a Kubernetes API server?")
        try:
            return response.json()
        except ValueError as e:
            raise DraApiError(f"{what} ({path}) is not JSON: {e}") from e

    async def server_version(self) -> Any:
        """The API server's `/version` answer, as JSON (None when it has none)."""
        return await self._get_json("/version", "the API server's version")

    async def serves_resource_v1(self) -> bool:
        """Does the API server serve ResourceSlices in `resource.k8s.io/v1` (discovery)?"""
        found = await self._get_json(f"/apis/{API_VERSION}", f"discovery of {API_VERSION}")
        resources = found.get("resources") if isinstance(found, dict) else None
        return isinstance(resources, list) and any(
            isinstance(r, dict) and r.get("name") == "resourceslices" for r in resources)

    async def replace_slice(self, body: Obj, resource_version: str) -> Obj:
        """Replace a slice, only if it is still at `resource_version` (409 otherwise)."""
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": resource_version}}
        try:
            return _plain(await self.client.replace(_slice(body)))
        except ApiError as e:
            raise _failed(f"replacing ResourceSlice {body['metadata']['name']}", e) from e
        except httpx2.TransportError as e:
            raise _unreachable(f"replacing ResourceSlice {body['metadata']['name']}", e) from e

    async def delete_slice(self, name: str) -> None:
        try:
            await self.client.delete(ResourceSlice, name)
        except ApiError as e:
            if e.status.code != 404:
                raise _failed(f"deleting ResourceSlice {name}", e) from e
        except httpx2.TransportError as e:
            raise _unreachable(f"deleting ResourceSlice {name}", e) from e

    async def claim(self, namespace: str, name: str) -> Obj | None:
        """The ResourceClaim, or None when it does not exist."""
        try:
            return _plain(await self.client.get(ResourceClaim, name, namespace=namespace))
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise _failed(f"reading ResourceClaim {namespace}/{name}", e) from e
        except httpx2.TransportError as e:
            raise _unreachable(f"reading ResourceClaim {namespace}/{name}", e) from e
        except ValueError as e:  # the client library could not decode it into the model
            raise ClaimError(f"ResourceClaim {namespace}/{name} is not a valid "
                             f"resource.k8s.io/v1 ResourceClaim: {e}") from e

    async def patch_claim_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """Merge `status` into the claim's status subresource."""
        try:
            return _plain(await self.client.patch(
                ResourceClaimStatus, name, {"status": status}, namespace=namespace,
                patch_type=PatchType.MERGE))
        except ApiError as e:
            raise _failed(f"writing the status of ResourceClaim {namespace}/{name}", e) from e
        except httpx2.TransportError as e:
            raise _unreachable(f"writing the status of ResourceClaim {namespace}/{name}", e) from e


@dataclass(frozen=True)
class ClaimView:
    """A ResourceClaim as the mirror holds it: its identity and the whole object as JSON."""

    uid: str
    namespace: str
    name: str
    resource_version: str
    body: Obj  # never mutated


def claim_view(obj: object) -> ClaimView:
    assert isinstance(obj, ResourceClaim)
    body = _plain(obj)
    meta = body.get("metadata") or {}
    return ClaimView(str(meta.get("uid", "")), str(meta.get("namespace", "")),
                     str(meta.get("name", "")), str(meta.get("resourceVersion", "")), body)


def allocated_devices(claim: ClaimView, driver: str, pool: str) -> list[str]:
    """The names of the devices of `driver` in `pool` allocated to the claim."""
    allocation = (claim.body.get("status") or {}).get("allocation") or {}
    return [str(r.get("device")) for r in (allocation.get("devices") or {}).get("results") or ()
            if r.get("driver") == driver and r.get("pool") == pool]


def allocated_to(claim: ClaimView, driver: str, pool: str) -> bool:
    """Whether any device of `driver` in `pool` is allocated to the claim."""
    return bool(allocated_devices(claim, driver, pool))


def claim_mirror(api: DraApi, driver: str, pool: str, *,
                 retry: RetryPolicy = DEFAULT_RETRY) -> Mirror[ClaimView]:
    """The claims allocated a device of `driver` in `pool`, by UID, kept current."""
    return Mirror(api.client, ResourceClaim, claim_view, lambda v: v.uid, retry=retry,
                  what=f"ResourceClaims allocated from pool {pool}",
                  keep=lambda v: allocated_to(v, driver, pool))


def _slice(body: Obj) -> ResourceSlice:
    obj = from_dict({**body, "apiVersion": API_VERSION, "kind": "ResourceSlice"})
    assert isinstance(obj, ResourceSlice)
    return obj


def _plain(obj: Any) -> Obj:
    data: Obj = obj.to_dict()
    return data


def _unreachable(what: str, error: httpx2.TransportError) -> DraApiError:
    return DraApiError(f"{what}: the API server cannot be reached "
                       f"({type(error).__name__}: {error})")


def _failed(what: str, error: ApiError) -> DraApiError:
    code = error.status.code
    return DraApiError(f"{what}: the API server answered {code} "
                       f"{error.status.reason}: {error.status.message}", status=code)
