"""100 DeepSeekTrainings applied at once (one kubectl apply) all reconcile to Succeeded, each with exactly one
Job and its own pod, on the cluster fixture with the operator in-process."""

from __future__ import annotations

import json
from collections import Counter

from deepseek_testbed import ControlPlane, fate_annotations, wait_until

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorRunner

COUNT = 100


def _phases(kube: ControlPlane, ns: str) -> Counter[str]:
    out = kube.kubectl("get", "dstrain", "-n", ns, "-o", "jsonpath={range .items[*]}{.status.phase}{'\\n'}{end}")
    lines = out.stdout.split("\n")[:-1]
    return Counter(line or "<none>" for line in lines)


def test_hundred_trainings_applied_at_once_all_reconcile(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns = namespace
    items = [
        tr.training_manifest(f"t{i:03d}", fate=fate_annotations(run_seconds=1), quantization={"enabled": False})
        for i in range(COUNT)
    ]
    kube_cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )

    wait_until(
        lambda: _phases(kube_cluster, ns)["Succeeded"] == COUNT,
        timeout=400,
        interval=2.0,
        what=f"all {COUNT} trainings to succeed",
        describe=lambda: str(dict(_phases(kube_cluster, ns))),
    )
    jobs = json.loads(kube_cluster.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]
    per_training = Counter(j["metadata"]["labels"]["deepseek.ai/training"] for j in jobs)
    assert len(per_training) == COUNT
    assert set(per_training.values()) == {1}
    trainings = json.loads(kube_cluster.kubectl("get", "dstrain", "-n", ns, "-o", "json").stdout)["items"]
    versions = {t["status"]["artifacts"]["version"] for t in trainings}
    assert len(versions) == COUNT  # unique per resource
    assert all(t["status"]["observedGeneration"] == 1 for t in trainings)
