"""A distributed DeepSeekTraining: indexed Job, headless rendezvous Service and the torchrun command, placed by
the real scheduler on the fake GPU nodes, with the endpoints the real EndpointSlice controller publishes."""

from __future__ import annotations

import json

from deepseek_operator.builders import training as build
from deepseek_testbed import ControlPlane, wait_until

from tests.fixtures import training as tr
from tests.fixtures.operator import OperatorRunner


def test_two_workers_get_an_indexed_job_and_a_rendezvous_service(
    kube_cluster: ControlPlane, namespace: str, operator: OperatorRunner
) -> None:
    ns, name = namespace, "ddp"
    names = build.names(name)
    manifest = tr.training_manifest(
        name,
        fate=tr.run_forever(),
        distributed={"workers": 2, "gpusPerWorker": 1},
        quantization={"enabled": False},
    )
    tr.apply(kube_cluster, ns, manifest)
    tr.wait_phase(kube_cluster, ns, name, "Running")

    (job,) = tr.jobs(kube_cluster, ns, name)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["template"]["spec"]["subdomain"] == names.service

    svc = json.loads(kube_cluster.kubectl("get", "service", names.service, "-n", ns, "-o", "json").stdout)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("rendezvous", 29500)]

    pods = sorted(tr.pods(kube_cluster, ns, name, "train"), key=lambda p: p["spec"]["hostname"])
    assert [p["spec"]["hostname"] for p in pods] == [f"{names.train_job}-0", f"{names.train_job}-1"]
    master = f"{names.train_job}-0.{names.service}"
    for index, pod in enumerate(pods):
        assert pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == str(index)
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["command"] == [
            "torchrun",
            "--nnodes=2",
            "--nproc-per-node=1",
            "--node-rank=$(JOB_COMPLETION_INDEX)",  # expanded by the kubelet from the variable below
            f"--master-addr={master}",
            "--master-port=29500",
            "--max-restarts=0",
            "-m",
            "deepseek_workers.cli",
            "train",
            "--config",
            "/etc/deepseek/run.json",
        ]
        env = {e["name"]: e for e in container["env"]}
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"].endswith("job-completion-index']")
        assert {"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"} in container["ports"]
        assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])

    def endpoint_hostnames() -> list[str]:
        out = kube_cluster.kubectl(
            "get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={names.service}", "-o", "json"
        ).stdout
        return sorted(e.get("hostname", "") for s in json.loads(out)["items"] for e in s.get("endpoints") or [])

    # Each worker resolves as <job>-<index>.<service>: the rendezvous address in the command.
    wait_until(
        lambda: endpoint_hostnames() == [f"{names.train_job}-0", f"{names.train_job}-1"],
        timeout=30,
        what="both workers in the rendezvous Service's endpoints",
    )
    tr.finish_pods(kube_cluster, ns, name, "train")
    st = tr.wait_phase(kube_cluster, ns, name, "Succeeded", timeout=60)
    assert tr.condition(st, "Running")["reason"] == "Completed"
