"""DeepSeekTraining reconcile benchmark on a real kube-apiserver (deepseek_testbed: etcd + kube-apiserver).

    .venv/bin/python bench/operator_reconcile.py                 # 1,000 trainings, 60 latency samples
    .venv/bin/python bench/operator_reconcile.py --trainings 200 # a quicker look

The operator runs as the `deepseek-operator` command (its own process, JSON logs, as in the chart), so its
memory and CPU are measured alone. Measured in one run, side by side:

1. apply -> Job created: a training is created; the time until its train Job is seen on a watch. Baseline:
   the time from creating a ConfigMap to seeing it on a watch (the floor for any controller's reaction on
   this machine). Reported: p50/p99 of both and their ratio.
2. 1,000 trainings created at once (8 client threads): time until every one has its Job and a status with
   observedGeneration; operator RSS (idle before, peak, after) and CPU seconds. Baseline: a minimal client
   that performs the same API writes (the same children from the same builders, plus a status patch) with
   64 concurrent requests and no watching or deciding: the API server's own cost for the work. Reported:
   both times and the ratio operator/baseline.
3. Idle: CPU the operator spends over one resync interval once nothing changes.

No kube-controller-manager runs: Jobs stay without pods, so the numbers are the operator's and the API
server's, not the Job controller's. Results: bench/results/operator_reconcile.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

import httpx2  # noqa: E402
import psutil  # noqa: E402
from deepseek_operator import k8s  # noqa: E402
from deepseek_operator.api import parse_training  # noqa: E402
from deepseek_operator.builders import training as build  # noqa: E402
from deepseek_operator.config import OperatorConfig  # noqa: E402
from deepseek_testbed import ControlPlane, wait_until  # noqa: E402
from lightkube import AsyncClient, Client, KubeConfig, codecs  # noqa: E402
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402
from lightkube.resources.batch_v1 import Job  # noqa: E402
from lightkube.resources.core_v1 import ConfigMap, Namespace, ServiceAccount  # noqa: E402
from lightkube.types import PatchType  # noqa: E402

from tests.fixtures.training import training_manifest  # noqa: E402

RESYNC_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_client(kube: ControlPlane) -> Client:
    # Generous timeouts: the point is to measure a loaded API server, not to give up on it.
    return Client(config=KubeConfig.from_file(str(kube.kubeconfig)), timeout=httpx2.Timeout(120.0))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class FirstSeen:
    """Records when each object of a kind (in a namespace) first appears on a watch."""

    def __init__(self, kube: ControlPlane, resource: Any, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._client = bench_client(kube)
        self._stop = threading.Event()
        self._ready = threading.Event()
        threading.Thread(target=self._run, args=(resource, namespace), daemon=True).start()
        self._ready.wait(10)

    def _run(self, resource: Any, namespace: str) -> None:
        while not self._stop.is_set():
            try:
                self._ready.set()
                for _, obj in self._client.watch(resource, namespace=namespace, server_timeout=30):
                    self.seen.setdefault(obj.metadata.name, time.monotonic())
                    if self._stop.is_set():
                        return
            except Exception:
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def namespace(client: Client, name: str) -> str:
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    client.create(ServiceAccount(metadata=ObjectMeta(name="default", namespace=name)), namespace=name)
    return name


def create_training(client: Client, ns: str, name: str) -> Any:
    body = training_manifest(name)
    body["metadata"]["namespace"] = ns
    return client.create(codecs.from_dict(body), namespace=ns)


class OperatorProcess:
    def __init__(self, kube: ControlPlane, ns: str, log: Path) -> None:
        self.metrics_port = free_port()
        env = {
            **kube.env(),
            "DEEPSEEK_WATCH_NAMESPACES": ns,
            "POD_NAMESPACE": ns,
            "DEEPSEEK_METRICS_PORT": str(self.metrics_port),
            "DEEPSEEK_LIVENESS_PORT": str(free_port()),
            "DEEPSEEK_LISTEN_HOST": "127.0.0.1",
            "DEEPSEEK_RESYNC_SECONDS": str(RESYNC_SECONDS),
        }
        self._log = log.open("w")
        exe = str(Path(sys.executable).parent / "deepseek-operator")
        self.proc = subprocess.Popen([exe], env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0
        self._sampling = threading.Event()

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def sample(self) -> None:
        self._sampling.set()

        def loop() -> None:
            while self._sampling.is_set():
                self.peak_rss = max(self.peak_rss, self.rss())
                time.sleep(0.25)

        threading.Thread(target=loop, daemon=True).start()

    def reconciles(self) -> float:
        """deepseek_operator_reconcile_total for trainings, from the operator's /metrics."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        prefix = 'deepseek_operator_reconcile_total{kind="DeepSeekTraining"'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def stop_sampling(self) -> None:
        self._sampling.clear()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def bench_latency(kube: ControlPlane, client: Client, ns: str, samples: int) -> dict[str, Any]:
    jobs = FirstSeen(kube, Job, ns)
    cms = FirstSeen(kube, ConfigMap, ns)
    operator_ms: list[float] = []
    watch_ms: list[float] = []
    create_training(client, ns, "warm-up")  # the first reconcile also warms caches; not counted
    wait_until(lambda: build.names("warm-up").train_job in jobs.seen, timeout=60, what="warm-up Job")
    for i in range(samples):
        name = f"lat-{i:03d}"
        t0 = time.monotonic()
        create_training(client, ns, name)
        job = build.names(name).train_job
        wait_until(lambda job=job: job in jobs.seen, timeout=60, what=f"Job {job}", interval=0.005)
        operator_ms.append(1000 * (jobs.seen[job] - t0))
        t1 = time.monotonic()
        client.create(ConfigMap(metadata=ObjectMeta(name=f"probe-{i:03d}", namespace=ns), data={"a": "b"}))
        wait_until(lambda i=i: f"probe-{i:03d}" in cms.seen, timeout=60, what="probe ConfigMap", interval=0.005)
        watch_ms.append(1000 * (cms.seen[f"probe-{i:03d}"] - t1))
        time.sleep(0.1)
    jobs.stop()
    cms.stop()
    out = {
        "samples": samples,
        "applyToJobMs": {"p50": pct(operator_ms, 0.5), "p99": pct(operator_ms, 0.99), "max": max(operator_ms)},
        "watchFloorMs": {"p50": pct(watch_ms, 0.5), "p99": pct(watch_ms, 0.99), "max": max(watch_ms)},
    }
    out["ratioP50"] = out["applyToJobMs"]["p50"] / out["watchFloorMs"]["p50"]
    out["ratioP99"] = out["applyToJobMs"]["p99"] / out["watchFloorMs"]["p99"]
    return out


def create_many(client: Client, ns: str, names: list[str]) -> list[Any]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda n: create_training(client, ns, n), names))


def all_reconciled(client: Client, ns: str, count: int) -> bool:
    done = 0
    for t in client.list(k8s.DeepSeekTraining, namespace=ns):
        st = t.status or {}
        if st.get("observedGeneration") == 1 and st.get("startTime"):
            done += 1
    if done < count:
        return False
    return sum(1 for _ in client.list(Job, namespace=ns)) >= count


def bench_scale(kube: ControlPlane, client: Client, ns: str, op: OperatorProcess, count: int) -> dict[str, Any]:
    rss_idle, cpu0 = op.rss(), op.cpu()
    op.sample()
    t0 = time.monotonic()
    create_many(client, ns, [f"t{i:04d}" for i in range(count)])
    created = time.monotonic() - t0
    wait_until(lambda: all_reconciled(client, ns, count), timeout=1800, interval=1.0, what=f"{count} reconciled")
    elapsed = time.monotonic() - t0
    op.stop_sampling()
    # Let the tail of the burst drain (status writes coming back through the watch, queued wake-ups) before
    # measuring a quiet resync: until the reconcile count stops moving for 5 s (at most 3 minutes).
    settle_end = time.monotonic() + 180
    last = op.reconciles()
    while time.monotonic() < settle_end:
        time.sleep(5)
        now_count = op.reconciles()
        if now_count == last:
            break
        last = now_count
    cpu1, rss_after, reconciles1 = op.cpu(), op.rss(), op.reconciles()
    time.sleep(RESYNC_SECONDS + 2)  # one full resync of every resource with nothing to change
    idle_cpu = op.cpu() - cpu1
    idle_reconciles = op.reconciles() - reconciles1
    return {
        "trainings": count,
        "createSeconds": created,
        "reconcileAllSeconds": elapsed,
        "perTrainingMs": 1000 * elapsed / count,
        "operatorCpuSeconds": cpu1 - cpu0,
        "rssIdleBeforeMiB": rss_idle / 2**20,
        "rssPeakMiB": op.peak_rss / 2**20,
        "rssAfterMiB": rss_after / 2**20,
        "rssPerTrainingKiB": (rss_after - rss_idle) / 1024 / count,
        "idleResyncCpuSeconds": idle_cpu,
        "idleResyncCpuPercent": 100 * idle_cpu / (RESYNC_SECONDS + 2),
        "idleReconciles": idle_reconciles,
    }


async def _baseline_writes(kubeconfig: str, bodies: list[Any]) -> None:
    """The API work of reconciling each training, done directly: its children and a status patch."""
    client = AsyncClient(
        config=KubeConfig.from_file(kubeconfig), field_manager="bench-baseline", timeout=httpx2.Timeout(120.0)
    )
    sem = asyncio.Semaphore(64)
    config = OperatorConfig()

    async def one(obj: Any) -> None:
        t = parse_training(obj)
        owner = build.owner_of(t)
        version = build.new_artifact_version(t)
        manifests = [*build.support_children(t, owner, version)]
        manifests.append(build.job(t, owner, config, build.TRAIN, attempt=0, version=version))
        async with sem:
            await asyncio.gather(
                *(client.apply(codecs.from_dict(m), field_manager="bench-baseline", force=True) for m in manifests[:-1])
            )
            await client.apply(codecs.from_dict(manifests[-1]), field_manager="bench-baseline", force=True)
            status = {"phase": "Pending", "startTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
            await client.patch(
                k8s.DeepSeekTraining.Status,
                t.metadata.name,
                {"status": status},
                namespace=t.metadata.namespace,
                patch_type=PatchType.MERGE,
            )

    await asyncio.gather(*(one(b) for b in bodies))
    await client.close()


def bench_baseline(kube: ControlPlane, client: Client, ns: str, count: int) -> dict[str, Any]:
    objs = create_many(client, ns, [f"b{i:04d}" for i in range(count)])
    bodies = [o.to_dict() for o in objs]
    t0 = time.monotonic()
    asyncio.run(_baseline_writes(str(kube.kubeconfig), bodies))
    return {"trainings": count, "writeAllSeconds": time.monotonic() - t0}


def environment() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadAverageAtStart": os.getloadavg()[0],
        "memoryGiB": round(psutil.virtual_memory().total / 2**30, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lat, scale, base = result["latency"], result["scale"], result["baseline"]
    return "\n".join(
        [
            "## DeepSeekTraining reconcile (real kube-apiserver, operator as its own process)",
            "",
            f"Environment: `{json.dumps(result['environment'])}`",
            "",
            f"apply -> train Job seen on a watch ({lat['samples']} trainings, one at a time):",
            "",
            "| | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
            f"| operator: create DeepSeekTraining -> Job | {lat['applyToJobMs']['p50']:.1f} | "
            f"{lat['applyToJobMs']['p99']:.1f} | {lat['applyToJobMs']['max']:.1f} |",
            f"| floor: create ConfigMap -> seen on a watch | {lat['watchFloorMs']['p50']:.1f} | "
            f"{lat['watchFloorMs']['p99']:.1f} | {lat['watchFloorMs']['max']:.1f} |",
            f"| ratio operator / floor | {lat['ratioP50']:.1f}x | {lat['ratioP99']:.1f}x | |",
            "",
            f"{scale['trainings']} trainings created at once (8 client threads, {scale['createSeconds']:.1f} s to "
            "create):",
            "",
            "| | seconds | per training |",
            "|---|---|---|",
            f"| operator: all reconciled (Job + status) | {scale['reconcileAllSeconds']:.1f} | "
            f"{scale['perTrainingMs']:.1f} ms |",
            f"| baseline: the same API writes, 64 concurrent, no operator | {base['writeAllSeconds']:.1f} | "
            f"{1000 * base['writeAllSeconds'] / base['trainings']:.1f} ms |",
            f"| ratio operator / baseline | {result['scaleRatio']:.2f}x | |",
            "",
            f"Operator process: RSS {scale['rssIdleBeforeMiB']:.0f} MiB idle -> peak {scale['rssPeakMiB']:.0f} MiB -> "
            f"{scale['rssAfterMiB']:.0f} MiB holding {scale['trainings']} trainings "
            f"({scale['rssPerTrainingKiB']:.0f} KiB each); {scale['operatorCpuSeconds']:.1f} CPU s to reconcile them; "
            f"a {RESYNC_SECONDS:.0f} s resync of all of them with nothing to change: "
            f"{scale['idleResyncCpuSeconds']:.2f} CPU s ({scale['idleResyncCpuPercent']:.1f}% of a core, "
            f"{scale['idleReconciles']:.0f} reconciles).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainings", type=int, default=1000)
    parser.add_argument("--latency-samples", type=int, default=60)
    parser.add_argument("--name", default="operator_reconcile")
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        kube = ControlPlane(Path(tmp) / "testbed").start()
        try:
            kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            kube.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            client = bench_client(kube)
            ns = namespace(client, "bench")
            base_ns = namespace(client, "bench-baseline")
            op = OperatorProcess(kube, ns, Path(tmp) / "operator.log")
            try:
                wait_until(lambda: op.rss() > 0 and _ready(op), timeout=60, what="the operator")
                latency = bench_latency(kube, client, ns, args.latency_samples)
                scale = bench_scale(kube, client, ns, op, args.trainings)
            finally:
                op.stop()
            baseline = bench_baseline(kube, client, base_ns, args.trainings)
        finally:
            kube.stop()
    result = {
        "environment": env,
        "latency": latency,
        "scale": scale,
        "baseline": baseline,
        "scaleRatio": scale["reconcileAllSeconds"] / baseline["writeAllSeconds"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _ready(op: OperatorProcess) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
