"""The chart's operator ClusterRole against the rules the controllers' own least-privilege tests grant.

tests/integration/test_inference_rbac.py and test_training_rbac.py run the operator with exactly
INFERENCE_RULES + TRAINING_RULES (nothing more) and show they are enough; the chart must grant at least those.
The other direction (nothing the controllers do not use) is checked here for the verbs the code never issues:
kopf and the controllers write with PATCH only (server-side apply, merge and status patches), so no "update"
beyond the owner-finalizer check, no wildcards, no Secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.chart.helm import NAMESPACED_VALUES, Helm, one
from tests.fixtures.rbac import TRAINING_RULES
from tests.integration.test_inference_rbac import INFERENCE_RULES

Rule = dict[str, Any]
INFERENCE_RULES_DEPLOYMENT_VERBS = next(r["verbs"] for r in INFERENCE_RULES if "deployments" in r["resources"])


def grants(rules: list[Rule], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
        for r in rules
    )


def operator_rules(rendered: list[dict[str, Any]]) -> list[Rule]:
    return list(one(rendered, "ClusterRole", "ds-deepseek-operator")["rules"])


def missing(rules: list[Rule], needed_rules: list[Rule]) -> list[tuple[str, str, str]]:
    return [
        (group, resource, verb)
        for needed in needed_rules
        for group in needed["apiGroups"]
        for resource in needed["resources"]
        for verb in needed["verbs"]
        if not grants(rules, group, resource, verb)
    ]


def test_chart_grants_what_both_controllers_need(
    rendered_defaults: list[dict[str, Any]], helm: Helm, tmp_path: Path
) -> None:
    # Namespaced mode (as the RBAC test runs the controller): the Role plus the discovery ClusterRole.
    docs = helm.render(tmp_path, files=[NAMESPACED_VALUES])
    namespaced = [r for d in docs if d["kind"] == "Role" for r in d["rules"]]
    namespaced += one(docs, "ClusterRole", "ds-deepseek-operator-discovery")["rules"]
    needed = INFERENCE_RULES + TRAINING_RULES
    assert not missing(namespaced, needed)
    # Cluster-wide: kopf watches every namespace and never lists them (the cluster-wide operator test shows it).
    without_namespaces = [r for r in needed if r["resources"] != ["namespaces"]]
    assert not missing(operator_rules(rendered_defaults), without_namespaces)


def test_chart_grants_no_verb_the_code_never_uses(rendered_defaults: list[dict[str, Any]]) -> None:
    rules = operator_rules(rendered_defaults)
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        if "update" in rule["verbs"]:
            assert all(r.endswith("/finalizers") for r in rule["resources"]), rule
    assert not any(grants(rules, "", "secrets", v) for v in ("get", "list", "watch"))
    assert not grants(rules, "", "pods", "create")
    assert not grants(rules, "deepseek.ai", "deepseekinferences", "delete")  # only trainings expire (TTL)
    assert grants(rules, "deepseek.ai", "deepseektrainings", "delete")


def test_the_check_sees_a_missing_rule() -> None:
    """The coverage check is real: a rule set without Deployments fails it."""
    rules = [r for r in INFERENCE_RULES if "deployments" not in r["resources"]]
    assert missing(rules, INFERENCE_RULES) == [("apps", "deployments", v) for v in INFERENCE_RULES_DEPLOYMENT_VERBS]
    assert missing(INFERENCE_RULES, INFERENCE_RULES) == []
