"""Container set-up for the dev cluster's node agent: runs inside the pod's fresh mount and PID namespaces.

Started by the node agent as `python -I node_agent_sandbox.py SPEC.json` (standard library only, so it starts
fast and never imports the rest of the package) behind `nsenter` (the pod's network/UTS namespaces) and
`unshare --mount --pid --fork` (a private mount table; this process is PID 1 of the container). It builds
the container's root file system and then execs the container's command:

- a tmpfs "stage", an overlay of the host's root file system (lower) with a tmpfs upper layer, so that mount
  points such as /etc/deepseek can be created without touching the host;
- every other host mount bound read-only at the same place (the "image" is the host with its Python
  environment), /proc fresh for the PID namespace, /sys read-only, a minimal /dev with a 64 MiB /dev/shm;
- the pod's volumes bound at their mount paths (read-only where the pod says so), paths the pod must not see
  (the agent's and the control plane's directories) hidden under empty tmpfs;
- the root made read-only when `readOnlyRootFilesystem` is set (otherwise writes land in the tmpfs layer, the
  container's writable layer), chroot, working directory, user/groups, capabilities dropped, no_new_privs.

`--pause HOSTNAME` instead sets the UTS hostname and sleeps: the pod's sandbox process that holds its network
and UTS namespaces (what the pause container is for a real kubelet).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21

_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME}
_ST_RELATIME = 4096
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Exit code when the container's command cannot be started (as runc reports it); the reason goes to
# spec["start_error_file"] so the agent can show it as the container's termination message.
EXIT_START_ERROR = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}")


def _remount_ro(target: str) -> None:
    # A read-only bind remount must keep the flags the mount already has (nosuid, nodev, ...).
    st = os.statvfs(target).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_bit, ms_bit in _ST_TO_MS.items():
        if st & st_bit:
            flags |= ms_bit
    if st & _ST_RELATIME:
        flags |= MS_RELATIME
    _mount(None, target, None, flags)


def _host_mounts(exclude_under: list[str]) -> list[str]:
    """Mount points of the host (from this process's copy of the mount table), parents first."""
    points: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4]
            # mountinfo escapes blanks, tabs, newlines and backslashes as octal.
            for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                mount_point = mount_point.replace(esc, ch)
            if mount_point == "/" or any(_under(mount_point, ex) for ex in exclude_under):
                continue
            if mount_point not in points:
                points.append(mount_point)
    return sorted(points, key=lambda p: p.count("/"))


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def in_root(root: str, path: str) -> str:
    """`path` as seen inside `root` (before chroot): symbolic links are followed as if `root` were `/`, so
    that /var/run -> /run resolves to root/run, never to the host's /run."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root + "/" + "/".join([*resolved, part])
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return root + "/" + "/".join(resolved)


def _ensure(path: str, is_file: bool) -> None:
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if is_file:
        with open(path, "a"):
            pass
    else:
        os.makedirs(path, exist_ok=True)


def _bind(source: str, target: str, read_only: bool, recursive: bool = False) -> None:
    _ensure(target, is_file=not os.path.isdir(source))  # devices and sockets are bound onto files too
    _mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        _remount_ro(target)


def _setup_dev(root: str, shm_bytes: int) -> None:
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in _DEVICES:
        if os.path.exists("/dev/" + name):
            _bind("/dev/" + name, f"{dev}/{name}", read_only=False)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(dev + "/shm")
    _mount("shm", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={shm_bytes}")


def build_root(spec: dict[str, Any]) -> str:
    """Build the container's root under spec['stage'] and return its path."""
    stage: str = spec["stage"]
    host_points = _host_mounts(["/proc", "/sys", "/dev", stage])
    os.makedirs(stage, exist_ok=True)
    _mount("tmpfs", stage, "tmpfs", 0, "mode=755")
    for sub in ("upper", "work", "root"):
        os.mkdir(f"{stage}/{sub}")
    root = stage + "/root"
    _mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={stage}/upper,workdir={stage}/work")
    for point in host_points:
        try:
            _bind(point, in_root(root, point), read_only=True)
        except OSError as err:  # an odd host mount (autofs, a vanished path) is not worth failing the pod for
            print(f"node-agent sandbox: skipped host mount {point}: {err}", file=sys.stderr)
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _bind("/sys", root + "/sys", read_only=True, recursive=True)
    _setup_dev(root, int(spec.get("shm_bytes", 64 * 1024 * 1024)))
    for hidden in spec.get("hide", []):
        target = in_root(root, hidden)
        if os.path.isdir(target):
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "mode=755,size=4k")
    # Parents before children (as the kubelet sorts mounts), so a nested mount is not hidden by its parent.
    for m in sorted(spec.get("mounts", []), key=lambda m: str(m["target"]).count("/")):
        _bind(m["source"], in_root(root, m["target"]), read_only=bool(m.get("read_only")), recursive=True)
    # The host is the image: a volume mounted over the Python environment (e.g. an emptyDir at /work when the
    # venv is under /work) would hide it, so those paths are bound again on top (read-only).
    targets = [str(m["target"]) for m in spec.get("mounts", [])]
    for keep in spec.get("protect", []):
        if any(_under(keep, t) for t in targets) and os.path.isdir(keep):
            _bind(keep, in_root(root, keep), read_only=True, recursive=True)
    os.makedirs(in_root(root, spec.get("workdir", "/")), exist_ok=True)
    if spec.get("read_only_root"):
        _remount_ro(root)
    return root


def _drop_privileges(spec: dict[str, Any]) -> None:
    if spec.get("drop_caps", True):
        for cap in range(64):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break  # past the last capability the kernel knows
    groups = [int(g) for g in spec.get("groups", [])]
    gid, uid = spec.get("gid"), spec.get("uid")
    if gid is not None or uid is not None:
        os.setgroups(groups)
    if gid is not None:
        os.setgid(int(gid))
    if uid is not None:
        os.setuid(int(uid))
    if spec.get("no_new_privs", True):
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    # A change of credentials clears the parent-death signal: re-arm it so that the container dies with
    # `unshare` (and so with the agent) instead of lingering.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _start_error(spec: dict[str, Any], message: str) -> None:
    path = spec.get("start_error_file")
    if path:
        try:
            with open(path, "w") as f:
                f.write(message[:4000])
        except OSError:
            pass
    print(f"node-agent sandbox: {message}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(EXIT_START_ERROR)


def run_container(spec: dict[str, Any]) -> None:
    try:
        root = build_root(spec)
    except OSError as err:
        _start_error(spec, f"could not set up the container's file system: {err}")
        return
    os.chdir(root)
    os.chroot(".")
    os.umask(0o022)
    env: dict[str, str] = {str(k): str(v) for k, v in spec["env"].items()}
    argv: list[str] = [str(a) for a in spec["argv"]]
    try:
        os.chdir(spec.get("workdir", "/"))
        _drop_privileges(spec)
    except OSError as err:
        _start_error(spec, f"could not enter the container: {err}")
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        _start_error(spec, f'exec: "{argv[0]}": {err.strerror} (PATH={env.get("PATH", "")})')


def pause(hostname: str) -> None:
    socket.sethostname(hostname)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        signal.pause()


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--pause":
        pause(argv[2])
    elif len(argv) == 2:
        with open(argv[1]) as f:
            spec = json.load(f)
        run_container(spec)
    else:
        print("usage: node_agent_sandbox.py SPEC.json | --pause HOSTNAME", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
