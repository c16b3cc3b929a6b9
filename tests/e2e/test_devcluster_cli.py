"""`python -m deepseek_testbed devcluster up --detach | status | down`: the commands the quickstart uses start a
working cluster in the background and leave nothing running after `down`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deepseek_testbed.process import pid_alive


def devcluster(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepseek_testbed", "devcluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bridges() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out) if link["ifname"].startswith("dsa")}


def test_up_detached_status_and_down_leave_nothing_running(tmp_path: Path) -> None:
    workdir = tmp_path / "dc"
    up = devcluster("up", "--detach", "--operator=none", f"--workdir={workdir}")
    assert up.returncode == 0, up.stderr
    kubeconfig = up.stdout.strip().splitlines()[-1]
    assert kubeconfig == str(workdir / "admin.kubeconfig")
    try:
        status = devcluster("status", f"--workdir={workdir}")
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["running"] is True
        nodes = subprocess.run(
            [state["kubectl"], f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        (node,) = json.loads(nodes.stdout)["items"]
        assert node["metadata"]["name"] == "local-exec"
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
        # A second `up` in the same directory is refused while the first runs.
        again = devcluster("up", "--detach", "--operator=none", f"--workdir={workdir}", timeout=120)
        assert again.returncode == 1
        pids = [int(state["owner_pid"]), *(int(p) for p in state["pids"].values() if p)]
        subnet = node["spec"]["podCIDR"]
        bridge = f"dsa{subnet.split('.')[2]}"
        assert bridge in bridges()
    finally:
        down = devcluster("down", f"--workdir={workdir}")
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids)
    assert bridge not in bridges()
    assert devcluster("status", f"--workdir={workdir}").returncode == 1
