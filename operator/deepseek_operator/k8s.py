"""The only module that talks to the Kubernetes API server (besides kopf's own watching).

Builders produce plain dict manifests; this module applies them with server-side apply under one field
manager (`deepseek-operator`, force=True: the operator owns its children), reads children, patches status
and posts Events. It uses lightkube's async client; the configuration comes from KUBECONFIG (or
~/.kube/config) outside a cluster and from the pod's service account inside one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube import codecs as lk_codecs
from lightkube.core.resource import NamespacedResource, NamespacedResourceG, NamespacedSubResource, Resource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Pod, Service, ServiceAccount
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import CascadeType, PatchType

from deepseek_operator import naming

log = logging.getLogger(__name__)

# Generic resource classes for our own kinds (registered with lightkube's codec so from_dict knows them).
DeepSeekTraining = create_namespaced_resource(
    naming.GROUP, naming.VERSION, naming.TRAINING_KIND, naming.TRAINING_PLURAL
)
DeepSeekInference = create_namespaced_resource(
    naming.GROUP, naming.VERSION, naming.INFERENCE_KIND, naming.INFERENCE_PLURAL
)
ServiceMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")

# Namespaced kinds the controllers address by kind name (builders and status code never import lightkube).
KINDS: dict[str, type[NamespacedResource]] = {
    "ConfigMap": ConfigMap,
    "Deployment": Deployment,
    "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
    "Job": Job,
    "Pod": Pod,
    "PodDisruptionBudget": PodDisruptionBudget,
    "Role": Role,
    "RoleBinding": RoleBinding,
    "Service": Service,
    "ServiceAccount": ServiceAccount,
    "ServiceMonitor": ServiceMonitor,
    naming.TRAINING_KIND: DeepSeekTraining,
    naming.INFERENCE_KIND: DeepSeekInference,
}

_client: AsyncClient | None = None


def configure(kubeconfig: str | None = None) -> None:
    """Use `kubeconfig` (a path) instead of the environment's configuration; resets the client."""
    global _client
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    _client = AsyncClient(config=config, field_manager=naming.FIELD_MANAGER)


async def close() -> None:
    """Close the client (end of an operator run); the next call to client() configures a new one."""
    global _client
    if _client is not None:
        await _client.close()
        _client = None


def client() -> AsyncClient:
    if _client is None:
        configure()
    assert _client is not None
    return _client


def is_not_found(err: ApiError) -> bool:
    return err.status.code == 404


def _absent(err: ApiError | httpx2.HTTPStatusError) -> bool:
    """A 404: the object is gone, or (plain-text 404 that lightkube raises untranslated) the server does not
    know the API group at all."""
    if isinstance(err, ApiError):
        return is_not_found(err)
    return err.response.status_code == 404


def is_conflict(err: ApiError) -> bool:
    return err.status.code == 409


async def apply(manifest: Mapping[str, Any]) -> Resource:
    """Server-side apply one manifest (dict) as the operator's field manager, taking ownership of conflicts."""
    obj = lk_codecs.from_dict(dict(manifest))
    return await client().apply(obj, field_manager=naming.FIELD_MANAGER, force=True)


async def apply_all(manifests: list[Mapping[str, Any]]) -> None:
    for manifest in manifests:
        await apply(manifest)


async def delete(resource: type[NamespacedResource], name: str, namespace: str, *, foreground: bool = False) -> bool:
    """Delete an object (background propagation, or foreground: the object stays, terminating, until its
    dependents are gone); False if it was already gone."""
    try:
        cascade = CascadeType.FOREGROUND if foreground else CascadeType.BACKGROUND
        await client().delete(resource, name, namespace=namespace, cascade=cascade)
    except (ApiError, httpx2.HTTPStatusError) as err:
        if _absent(err):
            return False
        raise
    return True


async def delete_named(kind: str, name: str, namespace: str, *, foreground: bool = False) -> bool:
    """`delete()` by kind name (a key of KINDS)."""
    return await delete(KINDS[kind], name, namespace, foreground=foreground)


async def merge_patch(kind: str, name: str, namespace: str, patch: Mapping[str, Any]) -> None:
    """JSON merge patch of one object by kind name (a key of KINDS), for the few fields changed in place
    (e.g. a Job's spec.suspend); children are otherwise applied whole with apply()."""
    await client().patch(KINDS[kind], name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE)


async def get(resource: type[NamespacedResource], name: str, namespace: str) -> Any | None:
    """The object, or None when it does not exist."""
    try:
        return await client().get(resource, name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return None
        raise


async def list_labelled(resource: type[NamespacedResource], namespace: str, selector: Mapping[str, str]) -> list[Any]:
    """Objects of one kind in `namespace` carrying every label in `selector`."""
    return [item async for item in client().list(resource, namespace=namespace, labels=dict(selector))]


async def patch_status(
    status_resource: type[NamespacedSubResource] | type[NamespacedResourceG],
    name: str,
    namespace: str,
    status: Mapping[str, Any],
) -> None:
    """Merge-patch a status subresource, e.g. `DeepSeekTraining.Status` (written only when it changed)."""
    await client().patch(
        status_resource,
        name,
        {"status": dict(status)},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


async def namespaced_api_served(resource: type[NamespacedResource], namespace: str) -> bool:
    """Whether the API server serves `resource` (e.g. ServiceMonitor only where the Prometheus Operator is)."""
    try:
        async for _ in client().list(resource, namespace=namespace, chunk_size=1):
            break
    except (ApiError, httpx2.HTTPStatusError) as err:
        if _absent(err):
            return False
        raise
    return True


async def post_event(involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
    """Post a core/v1 Event about `involved` (an object's dict: apiVersion, kind, metadata). Never raises."""
    meta = involved["metadata"]
    now = datetime.now(UTC)
    event = Event(
        metadata=ObjectMeta(generateName=f"{meta['name']}.", namespace=meta["namespace"]),
        involvedObject={  # type: ignore[arg-type]
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        reason=reason,
        message=message[:1024],
        type=event_type,
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
        source={"component": naming.FIELD_MANAGER},  # type: ignore[arg-type]
        reportingComponent=naming.FIELD_MANAGER,
    )
    try:
        await client().create(event)
    except ApiError as err:
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)
