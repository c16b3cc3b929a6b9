"""One child process of the control plane: started in its own session, logged to a file, stopped by its pid."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from deepseek_testbed.errors import TestbedError

_PR_SET_PDEATHSIG = 1


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago (callers retry if one was taken
    meanwhile). The sockets stay open until all are picked, so the kernel cannot hand out one port twice."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # If the Python process that started us is killed (SIGKILL, OOM), the kernel kills this child too, so no
    # component outlives a crashed test run. SIGKILL, not SIGTERM: kube-apiserver's graceful shutdown waits for
    # etcd, which dies at the same moment, and would linger for minutes. Linux-only; skipped where prctl is missing.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class ManagedProcess:
    """A component (etcd, kube-apiserver, ...) whose output goes to `<log_dir>/<name>.log`."""

    def __init__(self, name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"# {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            env = dict(os.environ)
            if self.env:
                env.update(self.env)
            # PDEATHSIG fires when the *thread* that forked exits, so only arm it from the main thread.
            main_thread = threading.current_thread() is threading.main_thread()
            preexec = _die_with_parent if sys.platform == "linux" and main_thread else None
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                preexec_fn=preexec,
            )

    def exit_code(self) -> int | None:
        """None while running."""
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        code = self.exit_code()
        if code is not None:
            raise TestbedError(
                f"{self.name} exited with code {code}; last lines of {self.log_file}:\n{tail(self.log_file, 30)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM this process, wait, then SIGKILL it (and anything left in its own process group)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        # The group id is this child's own pid (start_new_session); it only holds what this child spawned.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def tail(path: Path, lines: int, start: int = 0) -> str:
    """The last `lines` lines of `path` after byte offset `start` ("" if the file is missing)."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            begin = max(start, size - 256 * 1024)
            f.seek(begin)
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def prepare_workdir(workdir: Path, *, state_file: str, marker: str, what: str, down_command: str) -> None:
    """Give `what` (a control plane, a dev cluster) a fresh work directory: refuse one whose owner still runs
    (its state file names a live pid) or a non-empty directory that is not ours (no `marker`); otherwise wipe
    it, so old etcd data, certificates and logs go, and mark it."""
    state_path = workdir / state_file
    if state_path.exists():
        owner = json.loads(state_path.read_text()).get("owner_pid")
        if owner is not None and pid_alive(int(owner)):
            raise TestbedError(f"{what} already runs in {workdir} (pid {owner}); stop it with `{down_command}`")
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / marker).exists():
            raise TestbedError(f"{workdir} is not empty and is not a {what} work directory; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / marker).write_text(f"work directory of {what}; safe to delete when it is down\n")
