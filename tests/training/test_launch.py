"""The launch command the operator renders: torch-free, and the shapes torchrun expects."""

from __future__ import annotations

import subprocess
import sys

import pytest
from deepseek_workers.training.launch import master_address, torchrun_command


def test_single_process_runs_the_worker_directly() -> None:
    assert torchrun_command(config_path="/etc/deepseek/run.json") == [
        "deepseek-worker",
        "train",
        "--config",
        "/etc/deepseek/run.json",
    ]


def test_one_node_many_processes_is_standalone() -> None:
    cmd = torchrun_command(nproc_per_node=4)
    assert cmd[:2] == ["torchrun", "--standalone"]
    assert "--nproc-per-node=4" in cmd
    assert cmd[-5:] == ["-m", "deepseek_workers.cli", "train", "--config", "/etc/deepseek/run.json"]


def test_multi_node_uses_static_rendezvous_on_pod_zero() -> None:
    addr = master_address("bert-r8", "bert-r8-workers", "team-a")
    cmd = torchrun_command(nnodes=3, nproc_per_node=2, master_addr=addr)
    assert addr == "bert-r8-0.bert-r8-workers.team-a.svc"
    assert "--nnodes=3" in cmd
    assert "--nproc-per-node=2" in cmd
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert f"--master-addr={addr}" in cmd
    assert "--master-port=29500" in cmd
    assert "--max-restarts=0" in cmd


def test_multi_node_without_master_address_is_refused() -> None:
    with pytest.raises(ValueError, match="master_addr"):
        torchrun_command(nnodes=2)
    with pytest.raises(ValueError, match="at least 1"):
        torchrun_command(nproc_per_node=0)


def test_launch_module_imports_without_torch() -> None:
    # The operator image has no torch: importing the launch helper must not pull it in.
    code = "import sys, deepseek_workers.training.launch; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
