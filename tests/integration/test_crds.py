"""The generated CRDs on the real kube-apiserver: install, examples apply, bad input refused with clear messages.

Everything goes through kubectl, as a user would: `kubectl apply` (client-side, strict field validation),
`kubectl explain`, `kubectl get`, `kubectl scale`. The refusal messages are also the table in docs/api.md: a
test fails when the table no longer shows exactly what the API server says (regenerate it with
DEEPSEEK_UPDATE_API_DOCS=1 pytest tests/integration/test_crds.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_api_cases import CASES, IMMUTABLE_CASES, BadCase, inference_manifest, training_manifest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "api.md"
TABLE_BEGIN = "<!-- BEGIN BAD-INPUT TABLE (tests/integration/test_crds.py) -->"
TABLE_END = "<!-- END BAD-INPUT TABLE -->"
CRD_NAMES = ("deepseektrainings.deepseek.ai", "deepseekinferences.deepseek.ai")

# What the API server answered for each bad case (filled by the parametrised test, read by the docs test).
MESSAGES: dict[str, str] = {}


@pytest.fixture(scope="module")
def crds(kube_api: Any) -> Any:
    """The CRDs from crds/, installed and established."""
    kube_api.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for name in CRD_NAMES:
        kube_api.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    # The API server publishes a new CRD's OpenAPI (which kubectl explain reads) a few seconds after it is
    # established; wait for it rather than let explain race it.
    deadline = time.monotonic() + 60
    for kind in ("deepseektraining.spec.training", "deepseekinference.spec.model"):
        while kube_api.kubectl("explain", kind, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"OpenAPI of {kind} never published"
            time.sleep(0.5)
    return kube_api


@pytest.fixture(scope="module")
def bad_ns(crds: Any) -> Iterator[str]:
    """One namespace for all refused manifests (nothing is ever created in it)."""
    name: str = crds.create_namespace(prefix="bad-input")
    yield name
    crds.delete_namespace(name)


def _apply(kube: Any, namespace: str, manifest: dict[str, Any], *extra: str) -> tuple[int, str]:
    res = kube.kubectl("apply", "-n", namespace, *extra, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    return res.returncode, (res.stdout + res.stderr).strip()


def _get(kube: Any, namespace: str, resource: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kube.kubectl("get", "-n", namespace, resource, "-o", "json").stdout)
    return out


def test_crds_install_with_both_kinds_established(crds: Any) -> None:
    for name in CRD_NAMES:
        crd = json.loads(crds.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert crd["status"]["acceptedNames"]["categories"] == ["deepseek"]


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_passes_dry_run_and_applies(crds: Any, namespace: str, example: str) -> None:
    path = str(ROOT / "examples" / example)
    dry = crds.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", path)
    assert "(server dry run)" in dry.stdout
    assert not _get(crds, namespace, "deepseektrainings,deepseekinferences")["items"]
    crds.kubectl("apply", "-n", namespace, "--server-side", "-f", path)
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    for doc in docs:
        stored = _get(crds, namespace, f"{doc['kind'].lower()}/{doc['metadata']['name']}")
        if doc["kind"] == "DeepSeekTraining":
            # Defaults are filled in by the API server, so `kubectl get -o yaml` shows the effective settings.
            assert stored["spec"]["training"]["seed"] == 42
            assert stored["spec"]["runPolicy"]["suspend"] is False
        elif doc["kind"] == "DeepSeekInference":
            assert stored["spec"]["batching"]["maxQueueSize"] >= 1
            assert stored["spec"]["service"]["type"] in ("ClusterIP", "LoadBalancer")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_manifest_is_refused_naming_field_and_rule(crds: Any, bad_ns: str, case: BadCase) -> None:
    rc, out = _apply(crds, bad_ns, case.manifest())
    assert rc != 0, out
    assert case.server in out
    MESSAGES[case.id] = out


def test_spec_is_immutable_once_the_run_started_except_run_policy(crds: Any, namespace: str) -> None:
    rc, out = _apply(crds, namespace, training_manifest("started"))
    assert rc == 0, out

    def patch(spec: dict[str, Any]) -> tuple[int, str]:
        body = json.dumps({"spec": spec})
        res = crds.kubectl("patch", "-n", namespace, "dstrain/started", "--type=merge", "-p", body, check=False)
        return res.returncode, (res.stdout + res.stderr).strip()

    assert patch({"training": {"epochs": 2}})[0] == 0  # not started yet: anything may change
    status = {"status": {"phase": "Running", "startTime": "2026-11-28T10:00:00Z"}}
    crds.kubectl(
        "patch", "-n", namespace, "dstrain/started", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    for case_id, spec_patch, message in IMMUTABLE_CASES:
        rc, out = patch(spec_patch)
        assert rc != 0, case_id
        assert message in out
        MESSAGES[case_id] = out
    rc, out = patch({"runPolicy": {"suspend": True, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 60}})
    assert rc == 0, out
    stored = _get(crds, namespace, "dstrain/started")
    assert stored["spec"]["training"]["epochs"] == 2
    assert stored["spec"]["runPolicy"]["suspend"] is True


def test_status_is_validated_too(crds: Any, namespace: str) -> None:
    assert _apply(crds, namespace, training_manifest("st"))[0] == 0
    bad = {"status": {"phase": "Exploded"}}
    res = crds.kubectl(
        "patch",
        "-n",
        namespace,
        "dstrain/st",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(bad),
        check=False,
    )
    assert res.returncode != 0
    assert 'status.phase: Unsupported value: "Exploded"' in res.stderr
    condition = {"type": "Running", "status": "True", "reason": "Started", "lastTransitionTime": "2026-11-28T10:00:00Z"}
    twice = {"status": {"conditions": [condition, condition]}}
    res = crds.kubectl(
        "patch",
        "-n",
        namespace,
        "dstrain/st",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(twice),
        check=False,
    )
    assert res.returncode != 0
    assert "status.conditions[1]: Duplicate value" in res.stderr


def _explain(kube: Any, field: str) -> str:
    return " ".join(kube.kubectl("explain", field).stdout.split())  # explain wraps lines at 80 columns


def test_kubectl_explain_reads_well(crds: Any) -> None:
    training = _explain(crds, "deepseektraining.spec.training")
    for text in ("Optimisation settings", "precision", "bf16/fp16 mixed", "Default: bf16.", "lora", "Peak learning"):
        assert text in training
    lora = _explain(crds, "dstrain.spec.training.lora")
    assert "Rank of the adapter matrices" in lora
    model = _explain(crds, "deepseekinference.spec.model")
    assert "trainingRef" in model
    assert "exactly one of trainingRef, uri or pvc" in model
    top = _explain(crds, "deepseektraining")
    assert "quantizes it to INT8" in top


def test_printer_columns_category_and_field_selector(crds: Any, namespace: str) -> None:
    assert _apply(crds, namespace, training_manifest("cols"))[0] == 0
    assert _apply(crds, namespace, inference_manifest("cols"))[0] == 0
    t_status = {"status": {"phase": "Running", "progress": {"percent": 42}, "metrics": {"accuracy": 0.913}}}
    i_status = {
        "status": {
            "phase": "Ready",
            "replicas": 2,
            "url": "http://cols.ns.svc",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Available", "lastTransitionTime": "2026-11-28T10:00:00Z"}
            ],
        }
    }
    for resource, status in (("dstrain/cols", t_status), ("dsinfer/cols", i_status)):
        crds.kubectl(
            "patch", "-n", namespace, resource, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )
    train = crds.kubectl("get", "-n", namespace, "dstrain").stdout.splitlines()
    assert train[0].split() == ["NAME", "PHASE", "PROGRESS", "ACCURACY", "AGE"]
    assert train[1].split()[:4] == ["cols", "Running", "42", "0.913"]
    infer = crds.kubectl("get", "-n", namespace, "dsinfer").stdout.splitlines()
    assert infer[0].split() == ["NAME", "READY", "REPLICAS", "URL", "AGE"]
    assert infer[1].split()[:4] == ["cols", "True", "2", "http://cols.ns.svc"]
    both = crds.kubectl("get", "-n", namespace, "deepseek", "-o", "name").stdout.split()
    assert sorted(both) == ["deepseekinference.deepseek.ai/cols", "deepseektraining.deepseek.ai/cols"]
    wide = crds.kubectl("get", "-n", namespace, "dstrain", "-o", "wide").stdout.splitlines()
    assert "MODEL" in wide[0].split()
    assert "all-minilm-l6-v2" in wide[1].split()
    # Controllers find the inferences that serve a training without listing them all.
    selected = crds.kubectl(
        "get", "-n", namespace, "dsinfer", "--field-selector", "spec.model.trainingRef.name=r8", "-o", "name"
    )
    assert selected.stdout.split() == ["deepseekinference.deepseek.ai/cols"]


def test_kubectl_scale_uses_the_scale_subresource(crds: Any, namespace: str) -> None:
    assert _apply(crds, namespace, inference_manifest("scaled"))[0] == 0
    selector = "app.kubernetes.io/instance=scaled,deepseek.ai/inference=scaled"
    status = {"status": {"replicas": 1, "selector": selector}}
    crds.kubectl(
        "patch", "-n", namespace, "dsinfer/scaled", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    crds.kubectl("scale", "-n", namespace, "dsinfer/scaled", "--replicas=3")
    assert _get(crds, namespace, "dsinfer/scaled")["spec"]["replicas"] == 3
    scale = json.loads(
        crds.kubectl(
            "get", "--raw", f"/apis/deepseek.ai/v1alpha1/namespaces/{namespace}/deepseekinferences/scaled/scale"
        ).stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    assert scale["status"] == {"replicas": 1, "selector": selector}
    refused = crds.kubectl("scale", "-n", namespace, "dsinfer/scaled", "--replicas=1001", check=False)
    assert refused.returncode != 0
    assert "spec.replicas" in refused.stderr


def _table(messages: dict[str, str]) -> str:
    rows = ["| case | bad input | what the API server says |", "|---|---|---|"]
    described = {c.id: c.what for c in CASES} | {c[0]: f"on a running training: {c[0]}" for c in IMMUTABLE_CASES}
    for case_id in [c.id for c in CASES] + [c[0] for c in IMMUTABLE_CASES]:
        # Markdown-safe: <nil> would vanish as an HTML tag and "* a ... * b" would turn italic.
        text = messages[case_id].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("|", "\\|")
        text = text.replace("\n", "<br>")
        rows.append(f"| `{case_id}` | {described[case_id]} | {text} |")
    return "\n".join(rows)


def test_docs_show_exactly_what_the_api_server_says(crds: Any, bad_ns: str, namespace: str) -> None:
    messages = dict(MESSAGES)
    for case in CASES:  # when run alone (-k), ask the server here
        if case.id not in messages:
            messages[case.id] = _apply(crds, bad_ns, case.manifest())[1]
    if any(c[0] not in messages for c in IMMUTABLE_CASES):
        test_spec_is_immutable_once_the_run_started_except_run_policy(crds, namespace)
        messages |= {c[0]: MESSAGES[c[0]] for c in IMMUTABLE_CASES}
    block = f"{TABLE_BEGIN}\n{_table(messages)}\n{TABLE_END}"
    text = DOCS.read_text(encoding="utf-8")
    rest = text.split(TABLE_BEGIN, 1)[1]
    current = TABLE_BEGIN + rest.split(TABLE_END, 1)[0] + TABLE_END
    if os.environ.get("DEEPSEEK_UPDATE_API_DOCS") == "1":
        DOCS.write_text(text.replace(current, block), encoding="utf-8")
        return
    assert current == block, "docs/api.md differs from the API server: rerun with DEEPSEEK_UPDATE_API_DOCS=1"
