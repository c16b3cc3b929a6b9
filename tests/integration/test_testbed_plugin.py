"""The pytest plugin and the command line: failure reports carry component logs, `up`/`down` run a second,
independent control plane next to the session's one and stop every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from deepseek_testbed import ControlPlane, TestbedError, dns_label, ensure_binaries, wait_until
from deepseek_testbed.process import pid_alive


def test_a_failing_test_reports_the_component_logs(kube_api: ControlPlane, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_inner="""
        def test_fails(kube_api, namespace):
            kube_api.kubectl("get", "configmaps", "-n", namespace)
            assert False, "deliberate"

        def test_passes(kube_api):
            assert kube_api.kubectl("get", "namespaces").returncode == 0
        """
    )
    # The inner session attaches to this session's control plane instead of starting its own.
    result = pytester.runpytest_subprocess(
        "-p", "deepseek_testbed.pytest_plugin", "--testbed-attach", str(kube_api.workdir), "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "AssertionError: deliberate" in out
    for component in ("etcd", "kube-apiserver"):
        assert f"testbed {component} log" in out
    assert f"full component logs: {kube_api.log_dir}" in out
    # Attaching never stops the control plane it borrowed.
    assert kube_api.kubectl("get", "namespaces").returncode == 0


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(timeout)
    if not box:
        proc.kill()
        raise AssertionError(
            f"`up` printed nothing within {timeout}s; stderr: {proc.stderr.read() if proc.stderr else ''}"
        )
    return box[0].strip()


def test_cli_up_runs_a_second_control_plane_and_down_stops_it(kube_api: ControlPlane, tmp_path: Path) -> None:
    workdir = tmp_path / "cli"
    cli = [sys.executable, "-m", "deepseek_testbed"]
    env = {**os.environ, "DEEPSEEK_TESTBED_BIN": str(kube_api.bin_dir)}
    up = subprocess.Popen(
        [*cli, "up", "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        kubeconfig = Path(_read_line(up, timeout=180))
        assert kubeconfig == workdir / "admin.kubeconfig"
        assert kube_api.kubectl("get", "namespace", "kube-system", kubeconfig=kubeconfig).returncode == 0
        state = json.loads(
            subprocess.run(
                [*cli, "status", "--workdir", str(workdir)], capture_output=True, text=True, check=True
            ).stdout
        )
        assert state["server"] != kube_api.server  # its own ports, next to the session's control plane
        assert set(state["pids"]) == {"etcd", "kube-apiserver"}
        second = subprocess.run([*cli, "up", "--workdir", str(workdir)], capture_output=True, text=True, env=env)
        assert second.returncode == 1
        assert "already runs in" in second.stderr
        down = subprocess.run([*cli, "down", "--workdir", str(workdir)], capture_output=True, text=True, timeout=90)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
        assert not [name for name, pid in state["pids"].items() if pid_alive(pid)]
        assert (workdir / "logs" / "kube-apiserver.log").stat().st_size > 0  # logs survive `down`
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_components_die_with_a_killed_owner(kube_api: ControlPlane, tmp_path: Path) -> None:
    workdir = tmp_path / "killed"
    cli = [sys.executable, "-m", "deepseek_testbed"]
    env = {**os.environ, "DEEPSEEK_TESTBED_BIN": str(kube_api.bin_dir)}
    up = subprocess.Popen(
        [*cli, "up", "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        _read_line(up, timeout=180)
        pids = json.loads((workdir / "state.json").read_text())["pids"]
        assert all(pid_alive(pid) for pid in pids.values())
        up.send_signal(signal.SIGKILL)  # no cleanup code runs in the owner: the kernel must take the children
        up.wait()
        wait_until(
            lambda: not any(pid_alive(pid) for pid in pids.values()), timeout=30, what="components to die with owner"
        )
        down = subprocess.run([*cli, "down", "--workdir", str(workdir)], capture_output=True, text=True, timeout=90)
        assert down.returncode == 0, down.stderr
        assert not (workdir / "state.json").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_status_and_down_without_a_control_plane_fail_clearly(tmp_path: Path) -> None:
    for command in ("status", "down"):
        res = subprocess.run(
            [sys.executable, "-m", "deepseek_testbed", command, "--workdir", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 1
        assert "no control plane is running in" in res.stderr


def test_binaries_override_must_hold_every_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etcd").write_text("")
    monkeypatch.setenv("DEEPSEEK_TESTBED_BIN", str(tmp_path))
    with pytest.raises(TestbedError, match="lacks etcd, kube-apiserver"):
        ensure_binaries()


def test_dns_label_makes_valid_names() -> None:
    assert dns_label("test_Foo[bar-1]") == "test-foo-bar-1"
    assert len(dns_label("x" * 100)) == 63
    assert dns_label("___") == "x"
