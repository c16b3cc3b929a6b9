"""Asking the real API server's authorizer what a ServiceAccount may do (SubjectAccessReview)."""

from __future__ import annotations

from deepseek_testbed import ControlPlane, wait_until
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.resources.authorization_v1 import SubjectAccessReview


def allowed(
    cp: ControlPlane,
    sa_namespace: str,
    sa_name: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    subresource: str | None = None,
) -> bool:
    """Whether ServiceAccount `sa_namespace/sa_name` may `verb` `resource` (in `namespace`, or cluster-wide)."""
    review = SubjectAccessReview(
        spec=SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{sa_namespace}:{sa_name}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}", "system:authenticated"],
            resourceAttributes=ResourceAttributes(
                verb=verb, group=group, resource=resource, subresource=subresource, namespace=namespace
            ),
        )
    )
    result = cp.client().create(review)
    assert result.status is not None
    return bool(result.status.allowed)


def wait_allowed(cp: ControlPlane, sa_namespace: str, sa_name: str, verb: str, resource: str, **kw: str) -> None:
    """RBAC objects reach the authorizer through an informer: poll until the grant is visible."""
    wait_until(
        lambda: allowed(cp, sa_namespace, sa_name, verb, resource, **kw),
        timeout=30,
        what=f"{sa_namespace}/{sa_name} to be allowed to {verb} {resource} {kw}",
    )
