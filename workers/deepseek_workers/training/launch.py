"""How a training run is launched: the command line the operator puts in the worker pods.

Pure and torch-free so that the operator (whose image has no torch) can import it. One process per pod runs
`deepseek-worker train` directly; anything wider runs it under `torchrun`, which sets RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process; the engine reads only those.

Multi-node runs use torchrun's static rendezvous: pod 0 of an indexed Job hosts the store at
`<job>-0.<headless service>:29500`, and each pod's node rank is its completion index. Kubernetes expands
`$(JOB_COMPLETION_INDEX)` in container args because the Job controller injects that variable into the pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from deepseek_workers.runconfig import DEFAULT_RUN_CONFIG_PATH

DEFAULT_MASTER_PORT: Final = 29500
NODE_RANK_FROM_JOB_INDEX: Final = "$(JOB_COMPLETION_INDEX)"
# Env var a pod may set to fix the CPU threads per process (torchrun sets OMP_NUM_THREADS=1 when it starts
# more than one process per node, which starves CPU training).
NUM_THREADS_ENV: Final = "DEEPSEEK_NUM_THREADS"


def master_address(job_name: str, service_name: str, namespace: str | None = None) -> str:
    """DNS name of pod 0 of an indexed Job behind a headless Service (the pod's subdomain)."""
    host = f"{job_name}-0.{service_name}"
    return f"{host}.{namespace}.svc" if namespace else host


def torchrun_command(
    *,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    master_addr: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    node_rank: str | int = NODE_RANK_FROM_JOB_INDEX,
    config_path: str = DEFAULT_RUN_CONFIG_PATH,
    launcher: Sequence[str] = ("torchrun",),
    worker: Sequence[str] = ("deepseek-worker",),
) -> list[str]:
    """The container command (argv) of a training pod.

    - 1 node, 1 process: `deepseek-worker train --config PATH` (no torchrun, no process group).
    - 1 node, G processes: `torchrun --standalone --nproc-per-node=G -m deepseek_workers.cli train ...`.
    - N nodes: `torchrun --nnodes=N --nproc-per-node=G --node-rank=$(JOB_COMPLETION_INDEX)
      --master-addr=<job>-0.<svc> --master-port=29500 --max-restarts=0 -m deepseek_workers.cli train ...`.
      Restarts are left to the Job (a new pod resumes from the newest checkpoint).
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError("nnodes and nproc_per_node must be at least 1")
    train = ["train", "--config", config_path]
    if nnodes == 1 and nproc_per_node == 1:
        return [*worker, *train]
    module = ["-m", "deepseek_workers.cli", *train]
    if nnodes == 1:
        return [*launcher, "--standalone", f"--nproc-per-node={nproc_per_node}", "--max-restarts=0", *module]
    if not master_addr:
        raise ValueError("a multi-node run needs master_addr (see master_address())")
    return [
        *launcher,
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={master_port}",
        "--max-restarts=0",
        *module,
    ]


def world_size(nnodes: int, nproc_per_node: int) -> int:
    return nnodes * nproc_per_node
