"""Operator-wide kopf settings: our own annotation prefix and finalizer, no Events mirrored from logs."""

from __future__ import annotations

from typing import Any, cast

import kopf
from lightkube import KubeConfig

from deepseek_operator import naming

# Child kinds the controllers watch, as (group, or "v1" for the core group; plural). The API server sends only
# objects labelled as ours (a server-side label selector), so watching Pods or ConfigMaps costs nothing for
# the rest of the cluster. A controller that watches another kind adds it here.
CHILD_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
WATCHED_CHILDREN: list[tuple[str, str]] = [
    ("v1", "pods"),
    ("v1", "configmaps"),
    ("v1", "services"),
    ("v1", "serviceaccounts"),
    ("apps", "deployments"),
    ("batch", "jobs"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
]


# Kinds the controllers only index or watch (@kopf.index, @kopf.on.event), never with on.create/on.update/
# on.field handlers: kopf's diff essence of their objects is never used. Remove a kind from here before
# giving it such a handler.
ESSENCE_FREE_KINDS = frozenset(
    {"Pod", "Job", "Deployment", "ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding"}
)


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base storage, without the work its essence costs where nothing uses it.

    kopf builds an essence of every watched object on every event, deep-copying the whole body (then again to
    clear it); for Pods and Jobs that is mostly managedFields and status. Under load this was half of the
    operator's CPU (bench/operator_reconcile.py). Objects of ESSENCE_FREE_KINDS get an empty essence; others
    get kopf's essence built from only the parts it keeps (all but metadata/status, plus labels, annotations
    and owner references), which is the same value without copying what is thrown away.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") in ESSENCE_FREE_KINDS and not extra_fields:
            return cast(kopf.BodyEssence, {})
        if extra_fields:  # a handler tracks extra fields (maybe in status): the stock path keeps them
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        trimmed: dict[str, Any] = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        trimmed["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, trimmed)))


def configure(settings: kopf.OperatorSettings) -> None:
    # Our own prefix from day one: changing storages later would make every object look new.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(
        prefix=naming.ANNOTATION_PREFIX,
        key="last-handled-configuration",
        # GitOps tools add tracking labels/annotations: they must not look like spec changes.
        ignored_fields=["metadata.labels", "metadata.annotations"],
    )
    settings.persistence.finalizer = naming.FINALIZER
    settings.posting.loggers = False  # Events only for real transitions, posted explicitly
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 8
    for group, plural in WATCHED_CHILDREN:
        settings.watching.label_selectors[group, plural] = CHILD_SELECTOR


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


def connection_from_kubeconfig(path: str) -> kopf.ConnectionInfo:
    """kopf credentials from one kubeconfig file's current context (certificates, token or basic auth)."""
    conf = KubeConfig.from_file(path).get()
    if conf is None:
        raise kopf.LoginError(f"{path}: no current context")
    cluster, user = conf.cluster, conf.user

    def absolute(fname: str | None) -> str | None:
        return str(conf.abs_file(fname)) if fname else None

    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=absolute(cluster.certificate_auth),
        ca_data=cluster.certificate_auth_data,
        insecure=cluster.insecure or None,
        certificate_path=absolute(user.client_cert) if user else None,
        certificate_data=user.client_cert_data if user else None,
        private_key_path=absolute(user.client_key) if user else None,
        private_key_data=user.client_key_data if user else None,
        username=user.username if user else None,
        password=user.password if user else None,
        token=user.token if user else None,
        default_namespace=conf.context.namespace,
    )


@kopf.on.login()
def _login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    # An explicit kubeconfig (run_operator(kubeconfig=...)) wins; otherwise kopf's own in-cluster / KUBECONFIG
    # logins (registering any login handler switches kopf's defaults off, so they are called here).
    path = getattr(memo, "kubeconfig", None)
    if path:
        return connection_from_kubeconfig(path)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
