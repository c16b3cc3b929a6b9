"""DeepSeekTraining -> child manifests (pure): names, run config, volumes, RBAC, Service, Jobs."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
from deepseek_operator import naming
from deepseek_operator.api import DeepSeekTraining, parse_training
from deepseek_operator.builders import training as build
from deepseek_operator.config import OperatorConfig
from deepseek_workers import cli
from deepseek_workers.runconfig import parse_train_config
from lightkube import codecs

CONFIG = OperatorConfig(worker_image="registry.example/worker:1.2.3")
UID = "0f8e1d2c-aaaa-bbbb-cccc-123456789abc"


def training(name: str = "r8", generation: int = 3, **spec: Any) -> DeepSeekTraining:
    body: dict[str, Any] = {
        "apiVersion": "deepseek.ai/v1alpha1",
        "kind": "DeepSeekTraining",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": generation},
        "spec": {
            "model": {"builtin": {"name": "all-minilm-l6-v2"}},
            "dataset": {"builtin": "reuters-r8"},
            "output": {"pvc": {"claimName": "artifacts", "path": "runs/r8"}},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return parse_training(body)


def _by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def test_child_names_fit_dns_labels_for_the_longest_allowed_name() -> None:
    n = build.names("a" * 48)
    for value in (n.config, n.progress, n.service_account, n.role, n.train_job, n.quantize_job, n.service):
        assert len(value) <= 63
        assert value.startswith("a" * 48)  # readable: no hashing within the API's 48-character names
    # Pod hostnames of an indexed Job are <job>-<index>: still a DNS label for 64 workers.
    assert len(f"{n.train_job}-63") <= 63


def test_artifact_version_is_per_generation_and_unique_per_resource() -> None:
    t = training(generation=3)
    assert build.new_artifact_version(t) == "v3-0f8e1d2c"
    other = parse_training({**t.model_dump(by_alias=True, mode="json"), "metadata": {"name": "r8", "uid": "ffff"}})
    assert build.new_artifact_version(other) == "v1-ffff"


def test_run_config_resolves_pvc_paths_and_progress_sink() -> None:
    t = training(
        model={"pvc": {"claimName": "models", "path": "minilm"}, "task": "text-classification"},
        dataset={
            "pvc": {"claimName": "data", "path": "r8/train.jsonl"},
            "eval": {"pvc": {"claimName": "data", "path": "r8/test.jsonl"}},
        },
    )
    cm = build.config_map(t, build.owner_of(t), "v3-x")
    run = parse_train_config(cm["data"][build.RUN_CONFIG_KEY])  # what the worker will read, validated
    assert run.output_uri == "/mnt/pvc/artifacts/runs/r8"
    assert run.model_path == "/mnt/pvc/models/minilm"
    assert run.dataset_path == "/mnt/pvc/data/r8/train.jsonl"
    assert run.eval_dataset_path == "/mnt/pvc/data/r8/test.jsonl"
    assert run.artifact_version == "v3-x"
    assert (run.source.kind, run.source.namespace, run.source.name, run.source.uid, run.source.generation) == (
        "DeepSeekTraining",
        "ml",
        "r8",
        UID,
        3,
    )
    assert (run.progress.config_map, run.progress.namespace) == ("r8-progress", "ml")
    assert run.progress.interval_seconds <= 10
    mounts = build.claim_mounts(t)
    assert {c: (m.mount_path, m.read_only) for c, m in mounts.items()} == {
        "models": ("/mnt/pvc/models", True),
        "data": ("/mnt/pvc/data", True),
        "artifacts": ("/mnt/pvc/artifacts", False),
    }


def test_artifact_locations_for_pvc_and_object_store() -> None:
    assert build.artifact_uri(training(), "v1-a") == "pvc://artifacts/runs/r8/v1-a"
    s3 = training(output={"uri": "s3://bucket/prefix/"})
    assert build.artifact_uri(s3, "v1-a") == "s3://bucket/prefix/v1-a"
    assert build.run_config(s3, "v1-a").output_uri == "s3://bucket/prefix"


def test_support_children_are_owned_labelled_and_least_privilege() -> None:
    t = training()
    owner = build.owner_of(t)
    children = build.support_children(t, owner, "v3-x")
    kinds = _by_kind(children)
    assert sorted(kinds) == ["ConfigMap", "Role", "RoleBinding", "ServiceAccount"]
    assert [m["metadata"]["name"] for m in children if m["kind"] == "ConfigMap"] == ["r8-config", "r8-progress"]
    for m in children:
        meta = m["metadata"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "deepseek.ai/v1alpha1",
                "kind": "DeepSeekTraining",
                "name": "r8",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][naming.LABEL_TRAINING] == "r8"
        assert meta["labels"][naming.LABEL_MANAGED_BY] == "deepseek-operator"
        assert meta["annotations"][build.ANNOTATION_HASH]
        codecs.from_dict(m)  # a valid object of its kind
    assert kinds["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["r8-progress"], "verbs": ["get", "patch"]}
    ]
    assert kinds["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "r8-worker", "namespace": "ml"}]
    progress = next(m for m in children if m["metadata"]["name"] == "r8-progress")
    assert "data" not in progress  # the worker owns progress.json; re-applying never clears it


def test_a_named_service_account_is_bound_not_created() -> None:
    t = training(serviceAccountName="team-trainer")
    kinds = _by_kind(build.support_children(t, build.owner_of(t), "v1"))
    assert "ServiceAccount" not in kinds
    assert kinds["RoleBinding"]["subjects"][0]["name"] == "team-trainer"
    job = build.job(t, build.owner_of(t), CONFIG, build.TRAIN, attempt=0, version="v1")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "team-trainer"


def test_content_hash_is_stable_and_follows_the_spec() -> None:
    t = training()
    a = build.config_map(t, build.owner_of(t), "v1")
    b = build.config_map(training(), build.owner_of(t), "v1")
    c = build.config_map(training(training={"epochs": 5}), build.owner_of(t), "v1")
    h = build.ANNOTATION_HASH
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h]
    assert a["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]


def test_single_worker_train_job() -> None:
    t = training(
        resources={"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": 8589934592}},
        env=[{"name": "HOME", "value": "/data/home"}, {"name": "AWS_REGION", "value": "eu-west-1"}],
        podMetadata={"labels": {"team": "ml"}, "annotations": {"cost-center": "42"}},
        nodeSelector={"pool": "train"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="batch-low",
        imagePullSecrets=[{"name": "regcred"}],
    )
    job = build.job(t, build.owner_of(t), CONFIG, build.TRAIN, attempt=2, version="v3-x")
    codecs.from_dict(job)
    spec = job["spec"]
    assert job["metadata"]["name"] == "r8-train"
    assert job["metadata"]["annotations"][build.ANNOTATION_ATTEMPT] == "2"
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"]) == (0, 1, 1)
    assert "completionMode" not in spec
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [64, 65, 66]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["metadata"]["labels"][naming.LABEL_COMPONENT] == "train"
    assert pod["metadata"]["annotations"] == {"cost-center": "42", build.ANNOTATION_ATTEMPT: "2"}
    ps = pod["spec"]
    assert ps["restartPolicy"] == "Never"
    assert ps["securityContext"]["runAsNonRoot"] is True
    assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert (ps["nodeSelector"], ps["priorityClassName"], ps["imagePullSecrets"]) == (
        {"pool": "train"},
        "batch-low",
        [{"name": "regcred"}],
    )
    assert ps["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (c,) = ps["containers"]
    assert c["image"] == "registry.example/worker:1.2.3"
    assert c["command"] == ["deepseek-worker", "train", "--config", "/etc/deepseek/run.json"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8589934592"}}
    env = [e["name"] for e in c["env"]]
    assert env.count("HOME") == 1  # the user's value wins, no duplicate
    assert {"name": "HOME", "value": "/data/home"} in c["env"]
    assert {"name": "metrics", "containerPort": 9400} in c["ports"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/deepseek"]["readOnly"] is True
    assert {"/tmp", "/var/cache/deepseek", "/mnt/pvc/artifacts"} <= set(mounts)
    assert "/dev/shm" not in mounts  # one CPU process: no shared memory needed
    # Time for the worker's checkpoint on SIGTERM (suspend, deadline, preemption); no CPU limit, no thread cap.
    assert ps["terminationGracePeriodSeconds"] == build.TERMINATION_GRACE_SECONDS
    assert "DEEPSEEK_NUM_THREADS" not in env


def test_distributed_job_uses_torchrun_with_rendezvous_on_worker_zero() -> None:
    t = training(distributed={"workers": 4, "gpusPerWorker": 8})
    owner = build.owner_of(t)
    job = build.job(t, owner, CONFIG, build.TRAIN, attempt=0, version="v1")
    codecs.from_dict(job)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    ps = spec["template"]["spec"]
    assert ps["subdomain"] == "r8-train"
    (c,) = ps["containers"]
    assert c["command"][:6] == [
        "torchrun",
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=r8-train-0.r8-train",
        "--master-port=29500",
    ]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
    svc = next(m for m in build.support_children(t, owner, "v1") if m["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {naming.LABEL_TRAINING: "r8", naming.LABEL_COMPONENT: "train"}
    assert ps["containers"][0]["ports"][-1] == {"name": "rendezvous", "containerPort": 29500}


def test_one_node_with_several_gpus_runs_torchrun_standalone() -> None:
    t = training(distributed={"workers": 1, "gpusPerWorker": 2})
    assert build.worker_command(t, build.TRAIN)[:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]


def test_quantize_job_runs_one_cpu_pod() -> None:
    t = training(distributed={"workers": 2, "gpusPerWorker": 1}, image="my.registry/worker:dev")
    job = build.job(t, build.owner_of(t), CONFIG, build.QUANTIZE, attempt=1, version="v1")
    spec = job["spec"]
    assert job["metadata"]["name"] == "r8-quantize"
    assert (spec["completions"], spec["parallelism"]) == (1, 1)
    (c,) = spec["template"]["spec"]["containers"]
    assert c["command"] == ["deepseek-worker", "quantize", "--config", "/etc/deepseek/run.json"]
    assert c["image"] == "my.registry/worker:dev"
    assert "nvidia.com/gpu" not in str(c["resources"])
    assert "subdomain" not in spec["template"]["spec"]


@pytest.mark.parametrize("suspend", [True, False])
def test_job_suspend_flag(suspend: bool) -> None:
    t = training()
    assert (
        build.job(t, build.owner_of(t), CONFIG, build.TRAIN, attempt=0, version="v", suspend=suspend)["spec"]["suspend"]
        is suspend
    )


@pytest.mark.parametrize(
    ("cpu", "gpus", "threads"), [("16", 8, "2"), ("4", 0, "4"), ("500m", 0, "1"), ("3", 2, "1"), (None, 0, None)]
)
def test_cpu_threads_per_process_follow_the_cpu_limit(cpu: str | None, gpus: int, threads: str | None) -> None:
    limits = {"memory": "8Gi", **({"cpu": cpu} if cpu else {})}
    t = training(distributed={"workers": 1, "gpusPerWorker": gpus}, resources={"limits": limits})
    job = build.job(t, build.owner_of(t), CONFIG, build.TRAIN, attempt=0, version="v1")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("DEEPSEEK_NUM_THREADS") == threads


def _expand(arg: str, env: dict[str, str]) -> str:
    """What the kubelet does to $(VAR) in a container's command."""
    for key, value in env.items():
        arg = arg.replace(f"$({key})", value)
    return arg


def _worker_accepts(argv: list[str], run_json: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the worker's own CLI on `argv` (after the program name) with the rendered run config at its path;
    the stage itself is replaced by a recorder. Returns the run config the worker parsed."""
    path = tmp_path / "run.json"
    path.write_text(run_json)
    seen: list[Any] = []
    monkeypatch.setitem(cli.COMMANDS, argv[0], lambda text: seen.append(parse_train_config(text)))
    assert argv[1:] == ["--config", build.RUN_CONFIG_PATH]
    assert cli.main([argv[0], "--config", str(path)]) == 0
    (cfg,) = seen
    return cfg


def test_rendered_commands_are_what_the_worker_cli_and_torchrun_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract with the worker image: its CLI takes the rendered argv and run config, and torchrun's own
    parser turns the distributed command into the static rendezvous on worker 0 that the engine expects."""
    from torch.distributed.run import config_from_args, get_args_parser

    # torchrun's launch config makes a log dir and may set OMP_NUM_THREADS: keep both out of other tests.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    t = training(distributed={"workers": 4, "gpusPerWorker": 8})
    owner = build.owner_of(t)
    run_json = build.config_map(t, owner, "v3-x")["data"][build.RUN_CONFIG_KEY]
    job = build.job(t, owner, CONFIG, build.TRAIN, attempt=0, version="v3-x")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert c["command"][0] == "torchrun"
    for index in range(4):
        args = get_args_parser().parse_args(
            [_expand(a, {"JOB_COMPLETION_INDEX": str(index)}) for a in c["command"][1:]]
        )
        launch, _, script_args = config_from_args(args)
        assert (launch.min_nodes, launch.max_nodes, launch.nproc_per_node) == (4, 4, 8)
        assert (launch.rdzv_backend, launch.rdzv_endpoint) == ("static", "r8-train-0.r8-train:29500")
        assert launch.rdzv_configs["rank"] == index
        assert launch.max_restarts == 0  # the Job replaces pods; the engine resumes from the checkpoint
        assert launch.shutdown_timeout == build.TORCHRUN_SHUTDOWN_SECONDS < build.TERMINATION_GRACE_SECONDS
        assert (args.module, args.training_script) == (True, "deepseek_workers.cli")
        assert script_args == ["-u", "-m", "deepseek_workers.cli", "train", "--config", build.RUN_CONFIG_PATH]
    cfg = _worker_accepts(c["command"][-3:], run_json, tmp_path, monkeypatch)
    assert (cfg.output_uri, cfg.artifact_version) == ("/mnt/pvc/artifacts/runs/r8", "v3-x")

    single = training()
    (c,) = build.job(single, build.owner_of(single), CONFIG, build.TRAIN, attempt=0, version="v1")["spec"]["template"][
        "spec"
    ]["containers"]
    assert c["command"][0] == "deepseek-worker"
    _worker_accepts(c["command"][1:], run_json, tmp_path, monkeypatch)
    (c,) = build.job(single, build.owner_of(single), CONFIG, build.QUANTIZE, attempt=0, version="v1")["spec"][
        "template"
    ]["spec"]["containers"]
    _worker_accepts(c["command"][1:], run_json, tmp_path, monkeypatch)
