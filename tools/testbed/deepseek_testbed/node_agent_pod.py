"""One pod on the node agent's node: sandbox, volumes, containers as local processes, probes, restarts and a
kubelet-style status.

Lifecycle (as a kubelet): Pending (ContainerCreating while the sandbox and volumes are made; a missing
ConfigMap/Secret/unbound PVC is retried with a FailedMount event) -> init containers one by one -> all
containers started -> Running -> Succeeded/Failed when every container has stopped for good under the pod's
restartPolicy (Always/OnFailure restart a container with the kubelet's back-off 10 s, 20 s, ... 5 min,
reported as CrashLoopBackOff). A deleted pod gets SIGTERM in every container, SIGKILL after its grace period,
a terminal phase, and is then removed from the API (the kubelet's final delete).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from deepseek_testbed.node_agent_env import EnvError, command_line, container_env, expand, field_value, resource_value
from deepseek_testbed.node_agent_kube import KubeError, path_of
from deepseek_testbed.node_agent_sandbox import EXIT_START_ERROR

if TYPE_CHECKING:
    from deepseek_testbed.node_agent import NodeAgent

log = logging.getLogger("deepseek_testbed.node_agent")

Obj = dict[str, Any]
_BACKOFF_START, _BACKOFF_MAX, _BACKOFF_RESET_AFTER = 10.0, 300.0, 600.0
_TERMINATION_MESSAGE_MAX = 4096
_FALLBACK_LOG_LINES, _FALLBACK_LOG_BYTES = 80, 2048
_LOG_CHUNK = 16 * 1024
_PROJECTED_REFRESH = 0.8  # a projected token is renewed after 80 % of its lifetime, like the kubelet


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _nano_timestamp() -> str:
    t = time.time_ns()
    return datetime.fromtimestamp(t // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{t % 1_000_000_000:09d}Z"


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class Container:
    """Runtime state of one (init) container."""

    spec: Obj
    init: bool
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    done: bool = False  # stopped and will not be restarted
    exit_code: int | None = None
    proc: asyncio.subprocess.Process | None = None
    container_id: str = ""
    log_path: Path | None = None
    run_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    log_file: BinaryIO | None = None
    probe_task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def init_pid(self) -> int | None:
        """Host PID of the container's PID 1 (the forked child of `unshare`)."""
        if self.proc is None or self.proc.returncode is not None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None


class PodRunner:
    def __init__(self, agent: NodeAgent, pod: Obj) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = agent.pods_dir / self.uid
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.containers: list[Container] = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers += [Container(c, init=False) for c in spec.get("containers") or []]
        status = pod.get("status") or {}
        for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
            known = self.container(cs.get("name", ""))
            if known is not None and cs.get("containerID"):
                # It ran under an earlier agent process: counting goes on from there, as after a kubelet restart.
                known.restart_count = int(cs.get("restartCount", 0)) + 1
                known.last_state = {"terminated": cs["lastState"]["terminated"]} if cs.get("lastState") else {}
        self.pod_ip: str = ""
        self.start_time = pod.get("status", {}).get("startTime") or now_rfc3339()
        self.initialized = not any(c.init for c in self.containers)
        self.sandbox_ready = False
        self.volume_paths: dict[str, Path] = {}
        self.volumes_ready = False
        self.pause: asyncio.subprocess.Process | None = None
        self.terminating = False
        self.finished = asyncio.Event()  # containers will not run again (terminal phase or deleted)
        self.removed = False
        self._transitions: dict[str, tuple[str, str]] = {}
        self._dirty = asyncio.Event()
        self._last_status: Obj | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._main: asyncio.Task[None] | None = None
        self._failed_message = ""
        self._env_objects: dict[tuple[str, str], Obj | None] = {}

    # ------------------------------------------------------------------------------------------ public
    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._publisher(), name=f"status {self.key}"))
        self._main = asyncio.create_task(self._run(), name=f"pod {self.key}")

    def update(self, pod: Obj) -> None:
        """A newer version of the pod object arrived (from the watch)."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            self.terminating = True
            self._tasks.append(asyncio.create_task(self._terminate(), name=f"terminate {self.key}"))

    async def stop(self, grace: float | None = None) -> None:
        """Stop every container (SIGTERM, then SIGKILL after `grace`) because the agent shuts down. The pod's
        status is left as it was, like a kubelet that stops: a restarted agent runs the pod again."""
        self.terminating = True
        self.removed = True  # no more status updates from this process
        await self._kill_all(grace if grace is not None else self._grace())
        await self._cleanup(remove_dir=False)

    def gone(self) -> None:
        """The pod object was deleted from the API: kill everything at once and forget it."""
        self.terminating = True
        self.removed = True
        self._tasks.append(asyncio.create_task(self._gone(), name=f"gone {self.key}"))

    def container(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    # --------------------------------------------------------------------------------------- lifecycle
    async def _run(self) -> None:
        phase = self.pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self.finished.set()  # finished before this agent started: nothing to run
            return
        if self.restart_policy == "Never" and any(c.restart_count for c in self.containers):
            # It ran under an earlier agent process, which took its containers down, and may not be restarted.
            self._failed_message = "the node agent restarted while this pod ran; its containers could not be resumed"
            await self._kill_all(0)
            self._finish()
            return
        try:
            self._dirty.set()
            await self._sandbox()
            await self._volumes()
            for c in self.containers:
                if c.init and not await self._container_loop(c):
                    self._finish()
                    return
            self.initialized = True
            self._dirty.set()
            await asyncio.gather(*(self._container_loop(c) for c in self.containers if not c.init))
            self._finish()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug here must not take the agent down: fail the pod visibly
            log.exception("pod %s failed in the node agent", self.key)
            self._failed_message = f"node agent error: {err}"
            await self._kill_all(0)
            self._finish()

    def _finish(self) -> None:
        self.finished.set()
        self._dirty.set()
        self._tasks.append(asyncio.create_task(self._cleanup(remove_dir=False), name=f"sandbox down {self.key}"))

    async def _sandbox(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        net = self.agent.network
        if net.needs_sandbox_process():
            hostname = self.pod["spec"].get("hostname") or self.name
            self.pause = await asyncio.create_subprocess_exec(
                "unshare",
                "--net",
                "--uts",
                "--",
                sys.executable,
                "-I",
                str(self.agent.sandbox_script),
                "--pause",
                hostname[:63],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
            # unshare execs the helper only after the namespaces exist; wait for that before using them.
            for _ in range(200):
                if _netns_differs(self.pause.pid):
                    break
                await asyncio.sleep(0.01)
            self.pod_ip = await net.attach(self.pause.pid)
        else:
            self.pod_ip = await net.attach(0)
        self._write_hosts()
        self.sandbox_ready = True
        self._dirty.set()

    def _write_hosts(self) -> None:
        spec = self.pod["spec"]
        hostname = spec.get("hostname") or self.name
        fqdn = hostname
        if spec.get("subdomain"):
            fqdn = f"{hostname}.{spec['subdomain']}.{self.namespace}.svc.cluster.local {hostname}"
        lines = [
            "# Kubernetes-managed hosts file (deepseek node agent).",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{self.pod_ip}\t{fqdn}",
        ]
        lines += [f"{a['ip']}\t{' '.join(a.get('hostnames', []))}" for a in spec.get("hostAliases") or []]
        net = self.agent.network
        if net.api_port == 443:
            # There is no cluster DNS; in-cluster clients that use the name (kopf: https://kubernetes.default.svc)
            # find the `kubernetes` Service here.
            names = "kubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local"
            lines.append(f"{net.api_host}\t{names}")
        (self.dir / "etc-hosts").write_text("\n".join(lines) + "\n")

    # ----------------------------------------------------------------------------------------- volumes
    async def _volumes(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._prepare_volumes()
                self.volumes_ready = True
                return
            except (EnvError, KubeError, OSError) as err:
                message = f"MountVolume.SetUp failed: {err}"
                for c in self.containers:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": message}}
                self._dirty.set()
                await self.agent.event(self.pod, "Warning", "FailedMount", message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 16.0)

    async def _prepare_volumes(self) -> None:
        base = self.dir / "volumes"
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            if name in self.volume_paths:
                continue
            target = base / name
            if "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)  # as the kubelet makes an emptyDir: any container user may write
                self.volume_paths[name] = target
            elif "persistentVolumeClaim" in vol:
                self.volume_paths[name] = await self._pvc_path(vol["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in vol:
                self.volume_paths[name] = _host_dir(Path(vol["hostPath"]["path"]), vol["hostPath"].get("type"))
            elif any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected")):
                files, refresh = await self._projected_files(vol)
                self._write_files(target, files, fs_group)
                self.volume_paths[name] = target
                if refresh:
                    self._tasks.append(asyncio.create_task(self._refresh_volume(vol, target, refresh, fs_group)))
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise EnvError(f"volume {name!r}: type {kinds} is not supported by the node agent")

    async def _pvc_path(self, claim: str) -> Path:
        kube = self.agent.kube
        pvc = await kube.get_or_none(path_of("v1", "persistentvolumeclaims", self.namespace, claim))
        if pvc is None:
            raise EnvError(f'persistentvolumeclaim "{claim}" not found')
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            raise EnvError(f'persistentvolumeclaim "{claim}" is not bound')
        pv = await kube.get(path_of("v1", "persistentvolumes", name=pv_name))
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not source:
            raise EnvError(f"persistentvolume {pv_name}: only hostPath/local volumes can be mounted on this node")
        try:
            return _host_dir(Path(source["path"]), (pv["spec"].get("hostPath") or {}).get("type"))
        except EnvError as err:
            raise EnvError(f"persistentvolume {pv_name}: {err} on node {self.agent.node_name}") from None

    async def _lookup(self, kind: str, name: str) -> Obj | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        return await self.agent.kube.get_or_none(path_of("v1", plural, self.namespace, name))

    async def _projected_files(self, vol: Obj) -> tuple[dict[str, tuple[bytes, int]], float]:
        """Files (relative path -> (content, mode)) of a configMap/secret/downwardAPI/projected volume, and the
        refresh period of a service-account token in it (0 if none)."""
        files: dict[str, tuple[bytes, int]] = {}
        refresh = 0.0
        if "projected" in vol:
            sources = vol["projected"].get("sources") or []
            default_mode = int(vol["projected"].get("defaultMode", 0o644))
        else:
            sources = [vol]
            key = next(k for k in ("configMap", "secret", "downwardAPI") if k in vol)
            default_mode = int(vol[key].get("defaultMode", 0o644))
        for src in sources:
            if "configMap" in src or "secret" in src:
                kind = "ConfigMap" if "configMap" in src else "Secret"
                ref = src["configMap" if kind == "ConfigMap" else "secret"]
                name = ref.get("name") or ref.get("secretName", "")
                obj = await self._lookup(kind, name)
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise EnvError(f'{kind.lower()} "{name}" not found')
                data: dict[str, bytes] = {}
                if kind == "ConfigMap":
                    data |= {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                    data |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
                else:
                    data |= {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                items = ref.get("items")
                if items:
                    for item in items:
                        if item["key"] not in data:
                            if ref.get("optional"):
                                continue
                            raise EnvError(f"configmap/secret {name}: no key {item['key']!r}")
                        files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
                else:
                    files |= {k: (v, default_mode) for k, v in data.items()}
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items") or []:
                    if "fieldRef" in item:
                        value = field_value(self._pod_view(), item["fieldRef"]["fieldPath"])
                    else:
                        ref = item["resourceFieldRef"]
                        c = next(c.spec for c in self.containers if c.name == ref.get("containerName"))
                        value = resource_value(c, ref, self.agent.allocatable)
                    files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
            elif "serviceAccountToken" in src:
                tok = src["serviceAccountToken"]
                seconds = int(tok.get("expirationSeconds", 3600))
                files[tok["path"]] = (
                    (await self._token(tok.get("audience"), seconds)).encode(),
                    default_mode,
                )
                refresh = seconds * _PROJECTED_REFRESH
            elif "clusterTrustBundle" in src or "podCertificate" in src:
                raise EnvError("projected clusterTrustBundle/podCertificate sources are not supported")
        return files, refresh

    async def _token(self, audience: str | None, seconds: int) -> str:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        path = path_of("v1", "serviceaccounts", self.namespace, sa) + "/token"
        result = await self.agent.kube.create(path, body)
        return str(result["status"]["token"])

    @staticmethod
    def _write_files(target: Path, files: dict[str, tuple[bytes, int]], fs_group: int | None) -> None:
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        for rel, (content, mode) in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            tmp.chmod(mode)
            if fs_group is not None:
                os.chown(tmp, -1, int(fs_group))
                tmp.chmod(mode | ((mode & 0o400) >> 3))  # the group may read what the owner may read
            tmp.replace(path)  # atomic: a reader never sees half a token

    async def _refresh_volume(self, vol: Obj, target: Path, period: float, fs_group: int | None) -> None:
        while not self.finished.is_set():
            await asyncio.sleep(period)
            try:
                files, _ = await self._projected_files(vol)
                self._write_files(target, files, fs_group)
            except (EnvError, KubeError, OSError) as err:
                log.warning("pod %s: could not refresh volume %s: %s", self.key, vol["name"], err)

    # -------------------------------------------------------------------------------------- containers
    async def _container_loop(self, c: Container) -> bool:
        """Run `c` until it stops for good; True if it (finally) succeeded."""
        backoff = _BACKOFF_START
        while True:
            started = time.monotonic()
            if not await self._start_container(c):
                continue  # a configuration error: _start_container waited already
            code = await self._wait_container(c)
            if self.terminating:
                return code == 0
            restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
            if c.init and code == 0:
                c.done = True
                self._dirty.set()
                return True
            if not restart:
                c.done = True
                self._dirty.set()
                return code == 0
            if time.monotonic() - started > _BACKOFF_RESET_AFTER:
                backoff = _BACKOFF_START
            message = (
                f"back-off {int(backoff)}s restarting failed container={c.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            )
            c.last_state = dict(c.state)  # the instance that just ended becomes lastState
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self._dirty.set()
            await self.agent.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container " + c.name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            c.restart_count += 1

    async def _start_container(self, c: Container) -> bool:
        try:
            await self._fetch_env_objects(c)
            spec_file = self._container_spec(c)
        except (EnvError, KubeError) as err:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
            self._dirty.set()
            await self.agent.event(self.pod, "Warning", "Failed", f"Error: {err}")
            await asyncio.sleep(5)
            return False
        argv = [*self._namespace_prefix(), sys.executable, "-I", str(self.agent.sandbox_script), str(spec_file)]
        assert c.log_path is not None
        c.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )
        c.container_id = f"local-exec://{self.uid[:8]}-{c.name}-{c.restart_count}"
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.exit_code = None
        c.ready = False
        c.started = not c.spec.get("startupProbe")
        c.log_file = c.log_path.open("ab")
        assert c.proc.stdout is not None
        assert c.proc.stderr is not None
        c.pumps = [
            asyncio.create_task(_pump(c.proc.stdout, "stdout", c.log_file)),
            asyncio.create_task(_pump(c.proc.stderr, "stderr", c.log_file)),
        ]
        if not c.init:
            c.probe_task = asyncio.create_task(self._probes(c), name=f"probes {self.key}/{c.name}")
        self._dirty.set()
        await self.agent.event(self.pod, "Normal", "Started", f"Started container {c.name}")
        return True

    def _namespace_prefix(self) -> list[str]:
        prefix: list[str] = []
        if self.pause is not None:
            pid = self.pause.pid
            prefix = ["nsenter", f"--net=/proc/{pid}/ns/net", f"--uts=/proc/{pid}/ns/uts", "--"]
        # A private mount table, and a PID namespace whose PID 1 is the container's command: when it exits the
        # kernel ends everything it started; --kill-child ends it when `unshare` (and so the agent) dies.
        unshare = ["unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL", "--propagation", "private"]
        return [*prefix, *unshare, "--"]

    def _container_spec(self, c: Container) -> Path:
        """Resolve env, command, mounts and user of `c` and write the sandbox helper's spec file."""
        spec = c.spec
        base_env = self.agent.base_env(self.pod, spec)
        env = container_env(
            self._pod_view(), spec, base=base_env, lookup=self._lookup_cached, allocatable=self.agent.allocatable
        )
        image = self.agent.image(spec)
        argv = command_line(spec, env, image)
        run_dir = self.dir / "containers" / c.name / str(c.restart_count)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        c.run_dir = run_dir
        c.log_path = self.dir / "logs" / c.name / f"{c.restart_count}.log"
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        c.env = env
        termination_log = run_dir / "termination-log"
        termination_log.touch()
        termination_log.chmod(0o666)
        mounts: list[Obj] = [
            {"source": str(self.dir / "etc-hosts"), "target": "/etc/hosts", "read_only": False},
            {
                "source": str(termination_log),
                "target": spec.get("terminationMessagePath") or "/dev/termination-log",
                "read_only": False,
            },
        ]
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        for vm in spec.get("volumeMounts") or []:
            vol = volumes.get(vm["name"])
            if vol is None or vm["name"] not in self.volume_paths:
                raise EnvError(f"volumeMount {vm['name']!r} refers to no volume of the pod")
            source = self.volume_paths[vm["name"]]
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:
                if sub.startswith("/") or ".." in Path(sub).parts:
                    raise EnvError(f"volumeMount {vm['name']!r}: subPath {sub!r} must be a relative path without '..'")
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True)
                    source.chmod(0o777)
            always_ro = any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected"))
            mounts.append(
                {"source": str(source), "target": vm["mountPath"], "read_only": bool(vm.get("readOnly")) or always_ro}
            )
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = spec.get("securityContext") or {}
        uid, gid, groups = self.agent.credentials(pod_sc, sc, image)
        sandbox_spec = {
            "stage": str(run_dir / "stage"),
            "read_only_root": bool(sc.get("readOnlyRootFilesystem")),
            "hide": self.agent.hide_paths,
            "protect": self.agent.protect_paths,
            "mounts": mounts,
            "workdir": spec.get("workingDir") or (image.workdir if image else "/"),
            "argv": argv,
            "env": env,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "drop_caps": True,
            "no_new_privs": True,
            "start_error_file": str(run_dir / "start-error"),
        }
        spec_file: Path = run_dir / "spec.json"
        spec_file.write_text(json.dumps(sandbox_spec))
        spec_file.chmod(0o600)
        return spec_file

    def _pod_view(self) -> Obj:
        """The pod with what this node knows before the API has it (pod IP, host IP) for the downward API."""
        status = dict(self.pod.get("status") or {})
        node_ip = self.agent.network.node_ip
        status |= {"hostIP": node_ip, "hostIPs": [{"ip": node_ip}]}
        if self.pod_ip:
            status |= {"podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}]}
        return {**self.pod, "status": status}

    def _lookup_cached(self, kind: str, name: str) -> Obj | None:
        return self._env_objects.get((kind, name))

    async def _fetch_env_objects(self, c: Container) -> None:
        """Fetch the ConfigMaps/Secrets that env/envFrom of `c` refer to (the env is computed synchronously)."""
        self._env_objects = {}
        wanted: set[tuple[str, str]] = set()
        for src in c.spec.get("envFrom") or []:
            if "configMapRef" in src:
                wanted.add(("ConfigMap", src["configMapRef"]["name"]))
            if "secretRef" in src:
                wanted.add(("Secret", src["secretRef"]["name"]))
        for var in c.spec.get("env") or []:
            vf = var.get("valueFrom") or {}
            if "configMapKeyRef" in vf:
                wanted.add(("ConfigMap", vf["configMapKeyRef"]["name"]))
            if "secretKeyRef" in vf:
                wanted.add(("Secret", vf["secretKeyRef"]["name"]))
        for kind, name in wanted:
            self._env_objects[(kind, name)] = await self._lookup(kind, name)

    async def _wait_container(self, c: Container) -> int:
        assert c.proc is not None
        rc = await c.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*c.pumps, return_exceptions=True), timeout=5)
        if c.log_file is not None:
            c.log_file.close()
            c.log_file = None
        if c.probe_task is not None:
            c.probe_task.cancel()
            c.probe_task = None
        code = 128 - rc if rc < 0 else rc  # killed by a signal: 128 + signal number, as a runtime reports it
        assert c.run_dir is not None
        start_error = _read(c.run_dir / "start-error", _TERMINATION_MESSAGE_MAX)
        message = _read(c.run_dir / "termination-log", _TERMINATION_MESSAGE_MAX)
        if code == EXIT_START_ERROR and start_error:
            reason, message = "StartError", start_error
        elif code == 0:
            reason = "Completed"
        else:
            reason = "Error"
            policy = c.spec.get("terminationMessagePolicy", "File")
            if not message and policy == "FallbackToLogsOnError" and c.log_path is not None:
                message = _log_tail(c.log_path, _FALLBACK_LOG_LINES, _FALLBACK_LOG_BYTES)
        terminated: Obj = {
            "exitCode": code,
            "reason": reason,
            "startedAt": c.state.get("running", {}).get("startedAt", now_rfc3339()),
            "finishedAt": now_rfc3339(),
            "containerID": c.container_id,
        }
        if rc < 0:
            terminated["signal"] = -rc
        if message:
            terminated["message"] = message
        c.state = {"terminated": terminated}
        c.exit_code = code
        c.ready = False
        self._dirty.set()
        return code

    async def _signal(self, c: Container, sig: int) -> None:
        pid = c.init_pid()
        with contextlib.suppress(ProcessLookupError):
            if pid is not None:
                os.kill(pid, sig)
            elif c.proc is not None and c.proc.returncode is None and sig == signal.SIGKILL:
                c.proc.kill()  # `unshare --kill-child` takes the container down with it

    async def _stop_container(self, c: Container, grace: float) -> None:
        """Run the preStop hook, SIGTERM the container's PID 1 (which, as in a container, ignores it unless it
        has a handler), then SIGKILL once `grace` seconds have passed since the start."""
        if not c.running():
            return
        deadline = time.monotonic() + max(grace, 0.0)
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook and grace > 0:
            try:
                ok, detail = await asyncio.wait_for(self._hook(c, hook), timeout=grace)
            except TimeoutError:
                ok, detail = False, f"did not finish within the grace period of {grace:.0f}s"
            if not ok:
                await self.agent.event(self.pod, "Warning", "FailedPreStopHook", f"PreStopHook failed: {detail}")
            # As the kubelet: a hook that used up the grace period still leaves 2 s for SIGTERM.
            deadline = max(deadline, time.monotonic() + 2)
        await self._signal(c, signal.SIGTERM)
        assert c.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(c.proc.wait()), timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            await self._signal(c, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(c.proc.wait()), timeout=10)

    # ------------------------------------------------------------------------------------------ probes
    async def _probes(self, c: Container) -> None:
        spec = c.spec
        try:
            startup = spec.get("startupProbe")
            if startup:
                if not await self._probe_until(c, startup, want=True, name="Startup"):
                    await self._probe_kill(c, "Startup")
                    return
                c.started = True
                self._dirty.set()
            if not spec.get("readinessProbe"):
                c.ready = True
                self._dirty.set()
            loops = []
            if spec.get("readinessProbe"):
                loops.append(self._readiness(c, spec["readinessProbe"]))
            if spec.get("livenessProbe"):
                loops.append(self._liveness(c, spec["livenessProbe"]))
            await asyncio.gather(*loops)
        except asyncio.CancelledError:
            pass

    async def _probe_until(self, c: Container, probe: Obj, *, want: bool, name: str) -> bool:
        """Run `probe` every period until it succeeded successThreshold times (True) or failed
        failureThreshold times in a row (False)."""
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        ok_needed = int(probe.get("successThreshold", 1))
        fail_limit = int(probe.get("failureThreshold", 3))
        oks = fails = 0
        while c.running():
            ok, detail = await self._probe_once(c, probe)
            if ok:
                oks, fails = oks + 1, 0
                if oks >= ok_needed:
                    return True
            else:
                oks, fails = 0, fails + 1
                await self.agent.event(self.pod, "Warning", "Unhealthy", f"{name} probe failed: {detail}")
                if fails >= fail_limit:
                    return False
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))
        return False

    async def _readiness(self, c: Container, probe: Obj) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        ok_needed = int(probe.get("successThreshold", 1))
        fail_limit = int(probe.get("failureThreshold", 3))
        oks = fails = 0
        while c.running():
            ok, detail = await self._probe_once(c, probe)
            if ok:
                oks, fails = oks + 1, 0
                if oks >= ok_needed and not c.ready:
                    c.ready = True
                    self._dirty.set()
            else:
                oks, fails = 0, fails + 1
                if fails == 1 or fails % 10 == 0:
                    await self.agent.event(self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {detail}")
                if fails >= fail_limit and c.ready:
                    c.ready = False
                    self._dirty.set()
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _liveness(self, c: Container, probe: Obj) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        fail_limit = int(probe.get("failureThreshold", 3))
        fails = 0
        while c.running():
            ok, detail = await self._probe_once(c, probe)
            fails = 0 if ok else fails + 1
            if not ok:
                await self.agent.event(self.pod, "Warning", "Unhealthy", f"Liveness probe failed: {detail}")
            if fails >= fail_limit:
                await self._probe_kill(c, "Liveness")
                return
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _probe_kill(self, c: Container, name: str) -> None:
        await self.agent.event(
            self.pod, "Normal", "Killing", f"Container {c.name} failed {name.lower()} probe, will be restarted"
        )
        probe_grace = c.spec.get(f"{name.lower()}Probe", {}).get("terminationGracePeriodSeconds")
        grace = float(probe_grace) if probe_grace is not None else self._grace()
        self._tasks.append(asyncio.create_task(self._stop_container(c, grace)))

    async def _probe_once(self, c: Container, probe: Obj) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                return await self._probe_http(c, probe["httpGet"], timeout)
            if "tcpSocket" in probe:
                host = probe["tcpSocket"].get("host") or self.pod_ip
                port = self._port(c, probe["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                return True, ""
            if "exec" in probe:
                return await self._probe_exec(c, probe["exec"].get("command") or [], timeout)
            return False, "only httpGet, tcpSocket and exec probes are supported by the node agent"
        except (OSError, TimeoutError, httpx.HTTPError) as err:
            return False, f"{type(err).__name__}: {err}"

    async def _probe_http(self, c: Container, get: Obj, seconds: float) -> tuple[bool, str]:
        scheme = str(get.get("scheme", "HTTP")).lower()
        host = get.get("host") or self.pod_ip
        port = self._port(c, get["port"])
        path = get.get("path") or "/"
        url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/1.36")
        async with httpx.AsyncClient(verify=False, timeout=seconds) as http:
            resp = await http.get(url, headers=headers)
        if 200 <= resp.status_code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status_code}"

    async def _probe_exec(self, c: Container, command: list[str], seconds: float) -> tuple[bool, str]:
        pid = c.init_pid()
        if pid is None:
            return False, "container is not running"
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--target={pid}",
            "--mount",
            "--net",
            "--uts",
            "--pid",
            "--root",
            "--wd",
            "--",
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=c.env,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"command timed out after {seconds}s"
        if proc.returncode == 0:
            return True, ""
        return False, f"command {command} exited with {proc.returncode}: {out.decode(errors='replace')[-300:]}"

    async def _hook(self, c: Container, handler: Obj) -> tuple[bool, str]:
        """A lifecycle handler: `sleep`, `exec` or `httpGet` (as probes run them)."""
        if "sleep" in handler:
            await asyncio.sleep(float(handler["sleep"].get("seconds", 0)))
            return True, ""
        if "exec" in handler:
            return await self._probe_exec(c, handler["exec"].get("command") or [], 3600.0)
        if "httpGet" in handler:
            try:
                return await self._probe_http(c, handler["httpGet"], 3600.0)
            except (OSError, httpx.HTTPError) as err:
                return False, f"{type(err).__name__}: {err}"
        return False, "only sleep, exec and httpGet lifecycle handlers are supported by the node agent"

    def _port(self, c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise OSError(f"no container port named {port!r}")

    # ------------------------------------------------------------------------------------ termination
    def _grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    async def _kill_all(self, grace: float) -> None:
        if self._main is not None and not self._main.done() and self._main is not asyncio.current_task():
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        running = [c for c in self.containers if c.running()]
        await asyncio.gather(*(self._stop_container(c, grace) for c in running))
        for c in running:
            if c.exit_code is None:
                with contextlib.suppress(Exception):
                    await self._wait_container(c)
        for c in self.containers:
            if c.probe_task is not None:
                c.probe_task.cancel()
            if "terminated" not in c.state:
                # Never started, or waiting for a restart: not a success (a Job must not count it as one).
                c.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "startedAt": now_rfc3339(),
                        "finishedAt": now_rfc3339(),
                    }
                }
                c.exit_code = 137
            c.done = True
        self.finished.set()

    async def _terminate(self) -> None:
        grace = self._grace()
        running = [c.name for c in self.containers if c.running()]
        if running:
            await self.agent.event(self.pod, "Normal", "Killing", f"Stopping container {', '.join(running)}")
        await self._kill_all(grace)
        self._dirty.set()
        await self._flush_status()
        await self._cleanup(remove_dir=True)
        try:
            await self.agent.kube.delete(
                path_of("v1", "pods", self.namespace, self.name),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except KubeError as err:
            if err.code not in (404, 409):
                log.warning("pod %s: final delete failed: %s", self.key, err)

    async def _gone(self) -> None:
        await self._kill_all(0)
        await self._cleanup(remove_dir=True)

    async def _cleanup(self, *, remove_dir: bool) -> None:
        if self.pause is not None and self.pause.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.pause.kill()
            await self.pause.wait()
        if self.pod_ip:
            self.agent.network.release(self.pod_ip)
        if remove_dir:
            self.removed = True
            for t in self._tasks:
                if t is not asyncio.current_task():
                    t.cancel()
            await asyncio.to_thread(shutil.rmtree, self.dir, True)

    # ------------------------------------------------------------------------------------------ status
    def phase(self) -> str:
        if self._failed_message:
            return "Failed"
        inits = [c for c in self.containers if c.init]
        mains = [c for c in self.containers if not c.init]
        failed_init = any(c.done and c.exit_code not in (None, 0) for c in inits)
        if failed_init:
            return "Failed"
        if not self.initialized and not self.terminating:
            return "Pending"
        if all(c.done for c in mains) and mains:
            return "Succeeded" if all(c.exit_code == 0 for c in mains) else "Failed"
        if any(c.running() or c.restart_count > 0 or "terminated" in c.last_state for c in mains):
            return "Running"
        if self.terminating and all(c.done for c in mains):
            return "Failed"
        return "Pending"

    def _condition(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        previous = self._transitions.get(ctype)
        if previous is None or previous[0] != status:
            self._transitions[ctype] = (status, now_rfc3339())
        cond: Obj = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[ctype][1],
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    @staticmethod
    def _container_status(c: Container) -> Obj:
        status: Obj = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready and c.running(),
            "restartCount": c.restart_count,
            "started": c.started and c.running(),
            "state": c.state,
            "lastState": c.last_state,
        }
        if c.container_id:
            status["containerID"] = c.container_id
        return status

    def compute_status(self) -> Obj:
        phase = self.phase()
        mains = [c for c in self.containers if not c.init]
        unready = [c.name for c in mains if not (c.ready and c.running())]
        inits_pending = [c.name for c in self.containers if c.init and not c.done]
        terminal = phase in ("Succeeded", "Failed")
        conditions = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready and not terminal),
            self._condition(
                "Initialized",
                self.initialized or not inits_pending,
                "" if not inits_pending else "ContainersNotInitialized",
                "" if not inits_pending else f"containers with incomplete status: [{' '.join(inits_pending)}]",
            ),
        ]
        if terminal:
            ready_reason, ready_message = "PodCompleted", ""
            all_ready = False
        else:
            all_ready = not unready and phase == "Running"
            ready_reason = "" if all_ready else "ContainersNotReady"
            ready_message = "" if all_ready else f"containers with unready status: [{' '.join(unready)}]"
        conditions.append(self._condition("ContainersReady", all_ready, ready_reason, ready_message))
        conditions.append(self._condition("Ready", all_ready, ready_reason, ready_message))
        ours = {c["type"] for c in conditions}
        others = [c for c in (self.pod.get("status") or {}).get("conditions") or [] if c["type"] not in ours]
        status: Obj = {
            "phase": phase,
            "conditions": others + conditions,
            "hostIP": self.agent.network.node_ip,
            "hostIPs": [{"ip": self.agent.network.node_ip}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(c) for c in mains],
        }
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        inits = [c for c in self.containers if c.init]
        if inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in inits]
        if self._failed_message:
            status["message"] = self._failed_message
            status["reason"] = "NodeAgentError"
        return status

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce a burst of changes into one patch
            await self._flush_status()

    async def _flush_status(self) -> None:
        if not self._dirty.is_set() or self.removed:
            return
        self._dirty.clear()
        status = self.compute_status()
        comparable = json.dumps(status, sort_keys=True)
        if self._last_status is not None and json.dumps(self._last_status, sort_keys=True) == comparable:
            return
        try:
            await self.agent.kube.merge_patch(
                path_of("v1", "pods", self.namespace, self.name) + "/status", {"status": status}
            )
            self._last_status = status
        except KubeError as err:
            if err.code == 404:
                return
            log.warning("pod %s: status update failed (%s); retrying", self.key, err)
            await asyncio.sleep(1)
            self._dirty.set()
        except httpx.HTTPError as err:
            log.warning("pod %s: status update failed (%s); retrying", self.key, err)
            await asyncio.sleep(1)
            self._dirty.set()


async def _pump(stream: asyncio.StreamReader, name: str, out: Any) -> None:
    """Copy a container's stdout/stderr into its log file in the CRI format the kubelet serves
    (`<RFC3339Nano> <stream> <F|P> <line>`), splitting lines longer than 16 KiB into partial records."""
    buffer = b""
    while True:
        data = await stream.read(65536)
        if not data:
            break
        buffer += data
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            _write_record(out, name, "F", buffer[:newline])
            buffer = buffer[newline + 1 :]
        while len(buffer) > _LOG_CHUNK:
            _write_record(out, name, "P", buffer[:_LOG_CHUNK])
            buffer = buffer[_LOG_CHUNK:]
    if buffer:
        _write_record(out, name, "F", buffer)


def _write_record(out: Any, stream: str, tag: str, line: bytes) -> None:
    out.write(f"{_nano_timestamp()} {stream} {tag} ".encode() + line + b"\n")
    out.flush()


def _read(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _log_tail(path: Path, lines: int, limit: int) -> str:
    try:
        records = path.read_bytes().splitlines()[-lines:]
    except OSError:
        return ""
    text = "\n".join(r.split(b" ", 3)[-1].decode("utf-8", "replace") for r in records)
    return text[-limit:]


def _host_dir(path: Path, kind: str | None) -> Path:
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        raise EnvError(f"{path} does not exist")
    return path


def _netns_differs(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def file_mode_ok(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether `uid` (with groups `gids`) may traverse to and execute/read `path` (mode bits only)."""
    p = path.resolve()
    chain = [*reversed(p.parents), p]
    for i, part in enumerate(chain):
        try:
            st = part.stat()
        except OSError:
            return False
        need = stat.S_IXOTH if i < len(chain) - 1 else stat.S_IXOTH | stat.S_IROTH
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid in gids:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if bits & need != need:
            return False
    return True
