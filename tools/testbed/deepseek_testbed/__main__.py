"""Command line: run the test control plane by hand (or for a dev loop that attaches pytest to it).

python -m deepseek_testbed up [--cluster] [--workdir D]   # prints the kubeconfig path, runs until Ctrl-C
python -m deepseek_testbed down [--workdir D]             # stops the `up` running in D
python -m deepseek_testbed status [--workdir D]           # prints its state (JSON), exit 1 if none
python -m deepseek_testbed build                          # builds/locates the binaries, prints their dir
python -m deepseek_testbed devcluster up|down|status      # the dev cluster: + a node that runs pods locally
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from deepseek_testbed.binaries import ensure_binaries
from deepseek_testbed.controlplane import STATE_FILE, ControlPlane
from deepseek_testbed.errors import TestbedError
from deepseek_testbed.nodes import default_nodes
from deepseek_testbed.process import pid_alive, prepare_workdir

MARKER = ".deepseek-testbed"
log = logging.getLogger("deepseek_testbed")


def default_workdir() -> Path:
    env = os.environ.get("DEEPSEEK_TESTBED_WORKDIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"deepseek-testbed-{os.getuid()}"


def _prepare_workdir(workdir: Path) -> None:
    prepare_workdir(
        workdir,
        state_file=STATE_FILE,
        marker=MARKER,
        what="a control plane",
        down_command=f"python -m deepseek_testbed down --workdir {workdir}",
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    _prepare_workdir(workdir)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `down` sends SIGTERM: stop the components cleanly
    nodes = default_nodes(gpu_nodes=args.gpu_nodes, cpu_nodes=args.cpu_nodes, taint=args.taint_nodes)
    cp = ControlPlane(workdir, binaries=ensure_binaries(), nodes=nodes)
    try:
        cp.start()
        if args.cluster:
            cp.start_cluster()
        print(cp.kubeconfig, flush=True)
        log.info(
            "ready: export KUBECONFIG=%s   (kubectl: %s; logs: %s)", cp.kubeconfig, cp.bin_dir / "kubectl", cp.log_dir
        )
        log.info("stop with Ctrl-C or `python -m deepseek_testbed down --workdir %s`", workdir)
        while True:
            for proc in cp.processes.values():
                proc.check_alive()  # a component that dies ends `up` with its log tail
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    except TestbedError as e:
        log.error("%s", e)
        return 1
    finally:
        cp.stop()


def _stop_leftover(pid: int, bin_dir: str) -> None:
    # Only a process that still runs one of our binaries (the pid may have been reused by something else).
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return
    if not cmdline.startswith(bin_dir):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def cmd_down(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    try:
        state = ControlPlane.read_state(workdir)
    except TestbedError as e:
        log.error("%s", e)
        return 1
    owner = int(state["owner_pid"])
    if pid_alive(owner):
        os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while pid_alive(owner) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(owner):
            log.error("process %d did not stop within 60 s", owner)
            return 1
    for pid in state.get("pids", {}).values():
        if pid and pid_alive(int(pid)):
            _stop_leftover(int(pid), str(state["bin_dir"]))
    (workdir / "state.json").unlink(missing_ok=True)
    log.info("stopped the control plane in %s", workdir)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    try:
        state = ControlPlane.read_state(workdir)
    except TestbedError as e:
        log.error("%s", e)
        return 1
    state["running"] = pid_alive(int(state["owner_pid"]))
    print(json.dumps(state, indent=2))
    return 0 if state["running"] else 1


def cmd_build(args: argparse.Namespace) -> int:
    print(ensure_binaries().directory)
    return 0


def cmd_devcluster(args: argparse.Namespace) -> int:
    from deepseek_testbed import devcluster

    workdir: Path = (args.workdir or devcluster.default_workdir()).resolve()
    if args.action == "up":
        extra = [f"--network={args.network}"]
        extra += [f"--cpu={args.cpu}"] if args.cpu else []
        extra += [f"--memory={args.memory}"] if args.memory else []
        extra += [f"--operator={args.operator}"]
        if args.detach:
            return devcluster.up_detached(workdir, extra)
        return devcluster.up(workdir, network=args.network, cpu=args.cpu, memory=args.memory, operator=args.operator)
    if args.action == "down":
        return devcluster.down(workdir)
    return devcluster.status(workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepseek_testbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("devcluster", help="a control plane with one node whose pods run as local processes")
    dev.set_defaults(func=cmd_devcluster)
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument(
        "--workdir", type=Path, help="default: $DEEPSEEK_DEVCLUSTER_WORKDIR or /tmp/deepseek-devcluster-UID"
    )
    dev.add_argument("--detach", action="store_true", help="up: run in the background, return once ready")
    dev.add_argument("--network", choices=["auto", "bridge", "host"], default="auto", help="pod network (up)")
    dev.add_argument("--cpu", help="cpu capacity the node reports (default: this machine's)")
    dev.add_argument("--memory", help="memory capacity the node reports (default: this machine's)")
    dev.add_argument(
        "--operator",
        choices=["auto", "chart", "process", "none"],
        default="auto",
        help="up: install the operator with its Helm chart (a pod on the node; auto when the chart exists), run "
        "it as a local process, or not at all",
    )
    for name, func, help_text in (
        ("up", cmd_up, "start a control plane and keep it running until Ctrl-C"),
        ("down", cmd_down, "stop the control plane that `up` runs in --workdir"),
        ("status", cmd_status, "print the state of the control plane in --workdir"),
        ("build", cmd_build, "build (or find cached) binaries and print their directory"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        if name != "build":
            p.add_argument("--workdir", type=Path, default=default_workdir(), help="default: %(default)s")
        if name == "up":
            p.add_argument("--cluster", action="store_true", help="also controller-manager, scheduler, kwok nodes")
            p.add_argument("--gpu-nodes", type=int, default=2, help="fake nodes with 8 nvidia.com/gpu each")
            p.add_argument("--cpu-nodes", type=int, default=1, help="fake nodes without GPUs")
            p.add_argument("--taint-nodes", action="store_true", help="taint fake nodes kwok.x-k8s.io/node=fake")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except TestbedError as e:
        log.error("%s", e)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
