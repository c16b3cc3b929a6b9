"""The dev cluster's node agent runs real pods: its own small Python pods here, the operator's in test_e2e.

Every pod passes Pod Security `restricted` (the test namespaces enforce it) and runs `python -c` in the
project's environment on the `local-exec` node, scheduled by the real scheduler, owned by real controllers.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

from deepseek_testbed import wait_until

from tests.e2e.conftest import Kubectl

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def python_container(name: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "python:3.11",
        "command": ["python", "-u", "-c", textwrap.dedent(code)],
        "securityContext": RESTRICTED_CONTAINER,
        **extra,
    }


def pod_spec(*containers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"securityContext": RESTRICTED_POD, "containers": list(containers), **extra}


def pod(name: str, *containers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec(*containers, **extra)}


def phase(kube: Kubectl, name: str) -> str:
    return str(kube.get("pod", name).get("status", {}).get("phase", ""))


def wait_phase(kube: Kubectl, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = kube.get("pod", name)
        return obj if obj.get("status", {}).get("phase") in phases else None

    result: dict[str, Any] = wait_until(probe, timeout=timeout, what=f"pod {name} to be {'/'.join(phases)}")
    return result


def wait_ready(kube: Kubectl, name: str, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = kube.get("pod", name)
        conditions = obj.get("status", {}).get("conditions", [])
        return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    result: dict[str, Any] = wait_until(probe, timeout=timeout, what=f"pod {name} to be Ready")
    return result


def container_status(obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    statuses = obj["status"].get("containerStatuses", [])
    return next(s for s in statuses if name is None or s["name"] == name)


WEB = """
import http.server, json, os, ssl, sys, urllib.request

report = {"config": open("/etc/app/settings.json").read(), "pod": os.environ["POD_NAME"],
          "namespace": os.environ["POD_NAMESPACE"], "ip": os.environ["POD_IP"], "node": os.environ["NODE"],
          "memory_mi": os.environ["MEMORY_MI"], "greeting": os.environ["GREETING"], "uid": os.getuid(),
          "hostname": os.uname().nodename, "pid": os.getpid()}
open("/data/hello.txt", "w").write("written by " + os.environ["POD_NAME"])
open("/tmp/scratch", "w").write("emptyDir is writable")
try:
    open("/usr/written-by-pod", "w")
    report["root_fs"] = "writable"
except OSError as err:
    report["root_fs"] = err.strerror
report["hidden"] = os.path.exists(sys.argv[1]) if len(sys.argv) > 1 else None
report["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = "https://%s:%s/api/v1/namespaces/%s/pods/%s" % (os.environ["KUBERNETES_SERVICE_HOST"],
      os.environ["KUBERNETES_SERVICE_PORT"], open(sa + "/namespace").read(), os.environ["POD_NAME"])
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read()})
try:
    urllib.request.urlopen(request, context=ssl.create_default_context(cafile=sa + "/ca.crt"))
except urllib.error.HTTPError as err:
    # A pod's default service account may not read pods: a 403 from RBAC proves TLS and the token worked.
    report["api"] = err.code
print(json.dumps(report), flush=True)
http.server.HTTPServer(("0.0.0.0", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_pod_runs_with_volumes_env_probe_and_api_access(kube: Kubectl, dev_cluster: Any) -> None:
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}, "data": {"settings.json": "{}"}},
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            },
            pod(
                "web",
                python_container(
                    "web",
                    WEB,
                    args=[str(dev_cluster.workdir / "pki")],
                    env=[
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {
                            "name": "MEMORY_MI",
                            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                        },
                        {"name": "WHO", "value": "world"},
                        {"name": "GREETING", "value": "hello $(WHO) from $(POD_NAME), $$(kept)"},
                    ],
                    ports=[{"name": "http", "containerPort": 8080}],
                    readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    resources={"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                    volumeMounts=[
                        {"name": "app", "mountPath": "/etc/app"},
                        {"name": "data", "mountPath": "/data"},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                ),
                volumes=[
                    {"name": "app", "configMap": {"name": "app"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            ),
        ]
    )
    obj = wait_ready(kube, "web")
    assert obj["spec"]["nodeName"] == "local-exec"
    ip = obj["status"]["podIP"]
    report = json.loads(kube("logs", "web").splitlines()[0])
    assert report["config"] == "{}"
    assert report["pod"] == "web"
    assert report["namespace"] == kube.namespace
    assert report["ip"] == ip
    assert report["node"] == "local-exec"
    assert report["memory_mi"] == "256"
    assert report["greeting"] == "hello world from web, $(kept)"
    assert report["hostname"] == "web"
    assert report["pid"] == 1  # its own PID namespace, as in a container
    assert report["root_fs"] == "Read-only file system"
    assert report["hidden"] is False  # the control plane's keys are not visible in pods
    assert report["cap_eff"] == "0000000000000000"
    assert report["api"] == 403
    # The readiness probe and this test reach the pod at its own IP.
    with urllib.request.urlopen(f"http://{ip}:8080/data/hello.txt", timeout=10) as resp:
        assert resp.status == 200
    # The claim was bound to a provisioned local volume, and the pod's file is in it.
    pvc = kube.get("pvc", "data")
    assert pvc["status"]["phase"] == "Bound"
    pv = dev_cluster.cp.kubectl("get", "pv", pvc["spec"]["volumeName"], "-o", "json").stdout
    host_path = Path(json.loads(pv)["spec"]["hostPath"]["path"])
    assert (host_path / "hello.txt").read_text() == "written by web"
    status = container_status(obj)
    assert status["ready"] is True
    assert status["started"] is True
    assert "running" in status["state"]


def test_failing_job_pod_reports_exit_code_and_termination_message(kube: Kubectl) -> None:
    code = """
    import sys
    print("about to fail", flush=True)
    open("/dev/termination-log", "w").write("bad input: field x")
    sys.exit(3)
    """
    kube.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fails"},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", **pod_spec(python_container("work", code))}},
            },
        }
    )

    def job_failed() -> bool:
        conditions = kube.get("job", "fails").get("status", {}).get("conditions", [])
        return any(c["type"] == "Failed" and c["status"] == "True" for c in conditions)

    wait_until(job_failed, timeout=120, what="the Job to fail")
    pods = json.loads(kube("get", "pods", "-l", "job-name=fails", "-o", "json"))["items"]
    assert len(pods) == 1
    assert pods[0]["status"]["phase"] == "Failed"
    terminated = container_status(pods[0])["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "bad input: field x"
    assert kube("logs", pods[0]["metadata"]["name"]).strip() == "about to fail"


def test_on_failure_restarts_then_succeeds_and_previous_logs(kube: Kubectl) -> None:
    code = """
    import os, sys
    if not os.path.exists("/work/tried"):
        open("/work/tried", "w").write("1")
        print("first attempt fails")
        sys.exit(7)
    print("second attempt succeeds")
    """
    kube.apply(
        pod(
            "retry",
            python_container(
                "work", code, volumeMounts=[{"name": "work", "mountPath": "/work"}]
            ),  # may hide the venv: bound back
            restartPolicy="OnFailure",
            volumes=[{"name": "work", "emptyDir": {}}],
        )
    )
    obj = wait_phase(kube, "retry", "Succeeded", timeout=120)
    status = container_status(obj)
    assert status["restartCount"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["lastState"]["terminated"]["exitCode"] == 7
    assert kube("logs", "retry").strip() == "second attempt succeeds"
    assert kube("logs", "retry", "--previous").strip() == "first attempt fails"


def test_init_container_runs_first_and_deletion_runs_pre_stop_then_sigterm(kube: Kubectl) -> None:
    init = python_container("prepare", 'open("/shared/ready", "w").write("prepared")')
    main = python_container(
        "main",
        """
        import os, signal, sys, time
        def stop(signum, frame):
            print("got SIGTERM after preStop:", os.path.exists("/shared/pre-stop"), flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("init left:", open("/shared/ready").read(), flush=True)
        while True:
            time.sleep(0.1)
        """,
        volumeMounts=[{"name": "shared", "mountPath": "/shared"}],
        lifecycle={"preStop": {"exec": {"command": ["python", "-c", "open('/shared/pre-stop', 'w')"]}}},
    )
    init["volumeMounts"] = [{"name": "shared", "mountPath": "/shared"}]
    kube.apply(pod("graceful", main, initContainers=[init], volumes=[{"name": "shared", "emptyDir": {}}]))
    obj = wait_ready(kube, "graceful")
    init_status = obj["status"]["initContainerStatuses"][0]
    assert init_status["state"]["terminated"]["exitCode"] == 0
    wait_until(lambda: "init left: prepared" in kube("logs", "graceful", "-c", "main"), timeout=30, what="main's log")
    # Follow the log while the pod is deleted: the stream ends when the container exits.
    follow = dev_follow(kube, "graceful", "main")
    kube("delete", "pod", "graceful", "--wait=true", "--timeout=60s")
    output = follow()
    assert output.startswith("init left: prepared")
    assert "got SIGTERM after preStop: True" in output
    assert kube.try_get("pod", "graceful") is None


def dev_follow(kube: Kubectl, name: str, container: str) -> Any:
    """Start `kubectl logs -f` in the background; the returned function waits for it and gives its output."""
    import subprocess

    cp = kube.cluster.cp
    proc = subprocess.Popen(
        [
            str(cp.bin_dir / "kubectl"),
            f"--kubeconfig={cp.kubeconfig}",
            "-n",
            kube.namespace,
            "logs",
            "-f",
            name,
            "-c",
            container,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the stream is open (it starts with what was logged so far)

    def result() -> str:
        out, _ = proc.communicate(timeout=60)
        return first + out

    return result


def test_liveness_probe_failure_restarts_the_container(kube: Kubectl) -> None:
    code = """
    import os, time
    print("started", flush=True)
    if not os.path.exists("/state/restarted"):
        open("/state/restarted", "w").write("x")
    else:
        open("/state/alive", "w").write("x")
    time.sleep(3600)
    """
    kube.apply(
        pod(
            "lively",
            python_container(
                "main",
                code,
                volumeMounts=[{"name": "state", "mountPath": "/state"}],
                livenessProbe={
                    "exec": {
                        "command": ["python", "-c", "import os, sys; sys.exit(not os.path.exists('/state/alive'))"]
                    },
                    "initialDelaySeconds": 1,
                    "periodSeconds": 1,
                    "failureThreshold": 2,
                },
            ),
            terminationGracePeriodSeconds=1,
            volumes=[{"name": "state", "emptyDir": {}}],
        )
    )

    def restarted_and_running() -> bool:
        obj = kube.get("pod", "lively")
        status = obj["status"].get("containerStatuses", [{}])[0]
        return status.get("restartCount", 0) >= 1 and "running" in status.get("state", {})

    wait_until(restarted_and_running, timeout=120, what="the container to be restarted by its liveness probe")
    events = kube("get", "events", "--field-selector", "involvedObject.name=lively", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Unhealthy", "Killing"} <= reasons
    assert phase(kube, "lively") == "Running"


def test_missing_config_map_waits_then_starts(kube: Kubectl) -> None:
    kube.apply(
        pod(
            "waits",
            python_container(
                "main",
                'print(open("/cfg/value").read(), flush=True)',
                volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}],
            ),
            restartPolicy="Never",
            volumes=[{"name": "cfg", "configMap": {"name": "late"}}],
        )
    )

    def failed_mount() -> bool:
        events = json.loads(kube("get", "events", "--field-selector", "involvedObject.name=waits", "-o", "json"))
        return any(e["reason"] == "FailedMount" and "late" in e["message"] for e in events["items"])

    wait_until(failed_mount, timeout=60, what="a FailedMount event")
    obj = kube.get("pod", "waits")
    assert obj["status"]["phase"] == "Pending"
    assert container_status(obj)["state"]["waiting"]["reason"] == "ContainerCreating"
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}, "data": {"value": "now"}})
    wait_phase(kube, "waits", "Succeeded", timeout=120)
    assert kube("logs", "waits").strip() == "now"


def test_replicas_listen_on_the_same_port_and_the_service_resolves(kube: Kubectl, dev_cluster: Any) -> None:
    code = """
    import http.server, os
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["POD_NAME"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
    """
    template = {
        "metadata": {"labels": {"app": "echo"}},
        "spec": pod_spec(
            python_container(
                "echo",
                code,
                env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                ports=[{"name": "http", "containerPort": 8080}],
                readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            )
        ),
    }
    kube.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "echo"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "echo"}}, "template": template},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "echo"},
                "spec": {"selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
            },
        ]
    )

    def two_ready() -> list[str] | None:
        found = dev_cluster.service_endpoints(kube.namespace, "echo", "web")
        return found if len(found) == 2 else None

    endpoints = wait_until(two_ready, timeout=120, what="both replicas behind the Service")
    assert all(e.endswith(":8080") for e in endpoints)
    answers = set()
    for endpoint in endpoints:
        with urllib.request.urlopen(f"http://{endpoint}/", timeout=10) as resp:
            answers.add(resp.read().decode())
    assert len(answers) == 2  # two pods, each on its own IP and the same port
    assert all(a.startswith("echo-") for a in answers)


def test_what_the_agent_cannot_run_is_reported_on_the_pod(kube: Kubectl) -> None:
    """Unsupported input gets a kubelet-style waiting reason and an event naming what is wrong; nothing crashes."""
    no_command = {"name": "main", "image": "busybox:1.36", "securityContext": RESTRICTED_CONTAINER}
    kube.apply(
        [
            pod("no-command", no_command, restartPolicy="Never"),
            pod(
                "csi-volume",
                python_container("main", "print('never runs')", volumeMounts=[{"name": "v", "mountPath": "/v"}]),
                restartPolicy="Never",
                volumes=[{"name": "v", "csi": {"driver": "csi.example.com"}}],
            ),
        ]
    )

    def waiting(name: str, reason: str) -> dict[str, Any] | None:
        obj = kube.get("pod", name)
        state = (obj["status"].get("containerStatuses") or [{}])[0].get("state", {})
        return state["waiting"] if state.get("waiting", {}).get("reason") == reason else None

    config_error = wait_until(
        lambda: waiting("no-command", "CreateContainerConfigError"), timeout=60, what="CreateContainerConfigError"
    )
    assert "sets no command and image 'busybox:1.36' is not one of this repository's images" in config_error["message"]

    def unsupported() -> dict[str, Any] | None:
        state = waiting("csi-volume", "ContainerCreating")
        return state if state and "not supported by the node agent" in state.get("message", "") else None

    mount_error = wait_until(unsupported, timeout=60, what="the FailedMount message on the container status")
    assert "volume 'v': type ['csi'] is not supported by the node agent" in mount_error["message"]
    assert phase(kube, "no-command") == "Pending"
    assert phase(kube, "csi-volume") == "Pending"
    kube("delete", "pod", "no-command", "csi-volume", "--wait=true", "--timeout=60s")
