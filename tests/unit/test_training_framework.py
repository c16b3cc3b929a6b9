"""Shared operator framework pieces the training controller relies on: the lean diff-base essence, the
operator config from the environment, the heartbeat ConfigMap."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
from deepseek_operator import naming
from deepseek_operator.config import OperatorConfig
from deepseek_operator.controllers.health import heartbeat_manifest
from deepseek_operator.controllers.settings import ESSENCE_FREE_KINDS, LeanDiffBaseStorage

BODY: dict[str, Any] = {
    "apiVersion": "deepseek.ai/v1alpha1",
    "kind": "DeepSeekTraining",
    "metadata": {
        "name": "r8",
        "namespace": "ml",
        "labels": {"team": "ml"},
        "annotations": {"note": "x", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u"}],
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        "resourceVersion": "7",
    },
    "spec": {"training": {"epochs": 2}, "runPolicy": {"suspend": False}},
    "status": {"phase": "Running", "conditions": [{"type": "Running", "status": "True"}]},
}


@pytest.mark.parametrize("ignored", [[], ["metadata.labels", "metadata.annotations"]])
def test_lean_essence_equals_kopfs_for_the_custom_resources(ignored: list[str]) -> None:
    kw = {"prefix": naming.ANNOTATION_PREFIX, "key": "last-handled-configuration", "ignored_fields": ignored}
    lean, stock = LeanDiffBaseStorage(**kw), kopf.AnnotationsDiffBaseStorage(**kw)
    body = kopf.Body(copy.deepcopy(BODY))  # type: ignore[arg-type]
    assert lean.build(body=body) == stock.build(body=body)
    extra = ["status.phase"]
    assert lean.build(body=body, extra_fields=extra) == stock.build(body=body, extra_fields=extra)
    assert lean.build(body=body)["spec"] == BODY["spec"]


def test_watched_children_get_an_empty_essence() -> None:
    lean = LeanDiffBaseStorage(prefix=naming.ANNOTATION_PREFIX)
    for kind in ESSENCE_FREE_KINDS:
        assert lean.build(body=kopf.Body({**copy.deepcopy(BODY), "kind": kind})) == {}  # type: ignore[arg-type]


def test_config_chooses_controllers_and_names_a_wrong_one() -> None:
    assert OperatorConfig.from_env({}).controllers == {"training", "inference"}
    cfg = OperatorConfig.from_env({"DEEPSEEK_CONTROLLERS": "inference"})
    assert cfg.runs("inference")
    assert not cfg.runs("training")
    with pytest.raises(ValueError, match="DEEPSEEK_CONTROLLERS='serving': expected a comma-separated list of"):
        OperatorConfig.from_env({"DEEPSEEK_CONTROLLERS": "serving"})


def test_config_from_environment() -> None:
    cfg = OperatorConfig.from_env(
        {
            "DEEPSEEK_WATCH_NAMESPACES": "a, b",
            "POD_NAMESPACE": "ops",
            "DEEPSEEK_LISTEN_HOST": "127.0.0.1",
            "DEEPSEEK_HEARTBEAT_SECONDS": "5",
            "DEEPSEEK_LIVENESS_STALE_SECONDS": "45",
            "DEEPSEEK_MAX_CONCURRENT_RECONCILES": "32",
        }
    )
    assert (cfg.namespaces, cfg.namespace, cfg.listen_host) == (["a", "b"], "ops", "127.0.0.1")
    assert (cfg.heartbeat_seconds, cfg.liveness_stale_seconds, cfg.max_concurrent_reconciles) == (5.0, 45.0, 32)
    # The heartbeat lives where the operator watches: its own namespace, else the first watched one.
    assert cfg.heartbeat_namespace == "a"
    assert OperatorConfig(namespace="ops").heartbeat_namespace == "ops"
    assert OperatorConfig(namespaces=["ops", "x"], namespace="ops").heartbeat_namespace == "ops"
    assert OperatorConfig().heartbeat_namespace is None


def test_heartbeat_is_labelled_for_the_operators_configmap_watch() -> None:
    m = heartbeat_manifest("ops")
    assert m["metadata"]["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
    assert m["metadata"]["namespace"] == "ops"
    assert m["data"]["time"].endswith("Z")
