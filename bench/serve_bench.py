"""Serving benchmark: the same model, machine and texts; one run; servers side by side; reported as ratios.

    .venv/bin/python bench/serve_bench.py [--quick] [--skip-competitors]

Measures, for the fine-tuned MiniLM (Reuters R8) on held-out R8 texts of at most 128 tokens:

* the model itself, in-process (the same backend the server loads, a TorchScript trace): the p50 of one bare
  forward pass (one text), and the best batched throughput over batch sizes 1..64, arrival order and
  length-sorted, on one thread and on as many threads at once as the machine has CPUs per OpenMP thread: the
  physical limit of this machine;
* servers under a bounded closed-loop load (N connections, each sending its next request when the previous
  answer arrived, a fixed number of requests) at concurrency 1, 8, 32, 64: throughput, p50, p99 —
  unbatched FastAPI (one forward per request), this server with batching off (maxBatchSize 1), this server
  with its default of one batch at a time, this server with one batch per CPU (concurrentBatches), LitServe
  with batching, Ray Serve with @serve.batch (the last two from the bench venv, see bench/serve_setup_venv.sh);
* goal rounds: the two goals that compare the server with the model alone, interleaved in rounds.

Servers run one at a time, each as its own process, with the same settings (batches of at most 32, 5 ms wait).
Results: bench/results/serve_bench.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCH_VENV = Path(os.environ.get("DEEPSEEK_BENCH_VENV", Path.home() / ".cache/deepseek-operator/bench-venv"))
CONCURRENCY = (1, 8, 32, 64)
BATCHING = {"maxBatchSize": 32, "maxQueueDelayMs": 5, "maxQueueSize": 1024, "requestTimeoutSeconds": 300}


def model_dir() -> Path:
    """The shared fine-tuned MiniLM from the test fixture's cache (trained there if missing)."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.ml import trained_minilm_r8

    return trained_minilm_r8() / "fp32"


def workload(path: Path, n: int) -> list[str]:
    from deepseek_workers.builtin_data import reuters_r8
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    rows = [r.text for r in (reuters_r8().test or [])]
    random.Random(0).shuffle(rows)
    return [t for t in rows if len(tok(t)["input_ids"]) <= 128][:n]


# ---------------------------------------------------------------------------------------------------------
# The model alone


class BareModel:
    """The model in this process (no HTTP): what the goals compare the server with."""

    def __init__(self, path: Path, texts: list[str]) -> None:
        import torch
        from deepseek_workers.serving.backends import TextClassifier, load_backend

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        backend = load_backend(str(path), "fp32")
        assert isinstance(backend, TextClassifier)
        self.backend = backend
        self.ids = [backend.encode(t) for t in texts]
        for x in self.ids[:8]:
            backend.predict([x])

    def forward_seconds(self, i: int) -> float:
        """One bare forward pass of text ``i``."""
        t0 = time.perf_counter()
        self.backend.predict([self.ids[i]])
        return time.perf_counter() - t0

    def batched_rps(self, order: str, batch: int, workers: int = 1) -> float:
        """Throughput over the first 128 texts (enough for a stable rate) in batches of ``batch``, run by
        ``workers`` threads at once (the traced model takes no GIL while it computes)."""
        ids = self.ids[:128]
        seq = sorted(ids, key=len) if order == "length-sorted" else ids
        batches = [seq[i : i + batch] for i in range(0, len(seq), batch)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self.backend.predict, batches[:workers]))  # first call on each thread
            t0 = time.perf_counter()
            list(pool.map(self.backend.predict, batches))
            return len(seq) / (time.perf_counter() - t0)


def bare_model(bare: BareModel, scale: float, workers: int) -> dict[str, Any]:
    # Exactly the texts the concurrency-1 level sends (its added p50 compares like with like), three rounds.
    single = [bare.forward_seconds(i) for _round in range(3) for i in range(requests_at(1, scale))]
    best: dict[str, Any] = {"throughput_rps": 0.0}
    table = []
    for w in sorted({1, workers}):
        for order in ("arrival", "length-sorted"):
            for b in (1, 16, 32) if scale < 1.0 else (1, 4, 8, 16, 32, 64):
                rps = bare.batched_rps(order, b, w)
                table.append({"order": order, "batch": b, "workers": w, "throughput_rps": round(rps, 1)})
                if rps > best["throughput_rps"]:
                    best = {"order": order, "batch": b, "workers": w, "throughput_rps": rps}
    return {"single_forward_p50_ms": statistics.median(single) * 1e3, "best_batched": best, "table": table}


# ---------------------------------------------------------------------------------------------------------
# Load generator: raw keep-alive HTTP/1.1 on loopback, prebuilt requests (cheap, so the client steals little CPU)


def _request(path: str, text: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Answer:
    status: int
    body: bytes
    model_ms: float | None  # the server's own timing of the model call (our Server-Timing header)


async def _read_response(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    model_ms = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
        elif k.lower() == "server-timing":
            metrics = dict(m.strip().partition(";dur=")[::2] for m in v.split(","))
            model_ms = float(metrics["model"]) if "model" in metrics else None
    if length is not None:
        return Answer(status, await reader.readexactly(length), model_ms)
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return Answer(status, body, model_ms)
            body += chunk[:-2]
    return Answer(status, await reader.read(), model_ms)


async def closed_loop(port: int, path: str, texts: list[str], concurrency: int, total: int) -> dict[str, Any]:
    requests = [_request(path, t) for t in texts]
    latencies: list[float] = []
    around_model: list[float] = []  # latency minus the server's timing of the model call, per request
    model_times: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                req = requests[(i + offset) % len(requests)]
                t0 = time.perf_counter()
                writer.write(req)
                answer = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if answer.model_ms is not None:
                    around_model.append(latencies[-1] * 1e3 - answer.model_ms)
                    model_times.append(answer.model_ms)
                if answer.status != 200 or b"label" not in answer.body:
                    errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k * 7) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": errors,
        "throughput_rps": total / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "around_model_p50_ms": statistics.median(around_model) if around_model else None,
        "model_p50_ms": statistics.median(model_times) if model_times else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(proc: subprocess.Popen[bytes], port: int, body: bytes, timeout_s: float = 900) -> bool:
    """True once the server answers 200; False if it exited first (e.g. its port was taken meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(body)
                if s.recv(65536).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server on port {port} not serving after {timeout_s} s")


@dataclass
class Target:
    name: str
    argv: list[str]
    path: str = "/classify"
    scrape_metrics: bool = False


def targets(path: Path, tmp: Path, skip_competitors: bool, workers: int) -> list[Target]:
    """The servers; ours runs ``workers`` batches at once (the machine's CPUs over the OpenMP threads)."""
    py = str(ROOT / ".venv/bin/python")
    out = [Target("fastapi-unbatched", [py, str(ROOT / "bench/serve_baselines.py"), "fastapi", str(path)])]
    ours = {**BATCHING, "concurrentBatches": workers}
    variants = [("deepseek-batching-off", {**ours, "maxBatchSize": 1})]
    if workers > 1:
        variants.append(("deepseek-1-batch", BATCHING))  # the default: one batch at a time
    variants.append(("deepseek", ours))
    for name, batching in variants:
        cfg = {
            "kind": "ServeRun",
            "source": {"kind": "DeepSeekInference", "namespace": "bench", "name": name},
            "modelName": "r8",
            "artifactUri": str(path),
            "variant": "fp32",
            "host": "127.0.0.1",
            "port": 0,
            "batching": batching,
        }
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
        out.append(
            Target(
                name,
                [py, "-m", "deepseek_workers.cli", "serve", "--config", str(tmp / f"{name}.json")],
                scrape_metrics=True,
            )
        )
    bench_py = BENCH_VENV / "bin/python"
    if not skip_competitors:
        if not bench_py.exists():
            raise SystemExit(f"no bench venv at {BENCH_VENV}: run bench/serve_setup_venv.sh first")
        for kind in ("litserve", "ray"):
            out.append(Target(kind, [str(bench_py), str(ROOT / "bench/serve_baselines.py"), kind, str(path)]))
    return out


def start(target: Target, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    argv = list(target.argv)
    if argv[-1].endswith(".json"):  # our run config: write the port in
        cfg = json.loads(Path(argv[-1]).read_text())
        cfg["port"] = port
        Path(argv[-1]).write_text(json.dumps(cfg))
    else:
        argv.append(str(port))
    log = open(tmp / f"{target.name}.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True, cwd=ROOT, env=os.environ.copy())


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def scrape_lines(port: int) -> list[str]:
    """The server's /metrics, as lines."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode().splitlines()


def scrape_batching(port: int) -> tuple[float, float]:
    items = calls = 0.0
    for line in scrape_lines(port):
        if line.startswith("deepseek_serve_batch_size_sum"):
            items = float(line.rsplit(" ", 1)[1])
        elif line.startswith("deepseek_serve_batch_size_count"):
            calls = float(line.rsplit(" ", 1)[1])
    return items, calls


def scrape_timings(port: int) -> dict[str, float]:
    """Seconds summed by the server: /classify request durations, and model calls (timed on the model thread
    around the call, so the hand-offs to the model thread and back count as the server's time here)."""
    out = {"request": 0.0, "compute": 0.0}
    for line in scrape_lines(port):
        if line.startswith("deepseek_serve_request_duration_seconds_sum") and 'endpoint="/classify"' in line:
            out["request"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("deepseek_serve_compute_seconds_sum"):
            out["compute"] += float(line.rsplit(" ", 1)[1])
    return out


def requests_at(concurrency: int, scale: float) -> int:
    """Requests measured at one concurrency level (a closed loop sends texts[0], texts[1], ... on connection 0)."""
    return max(int(scale * max(60, 6 * concurrency)), 4 * concurrency)


@contextlib.contextmanager
def serving(target: Target, texts: list[str], tmp: Path) -> Iterator[int]:
    """Start ``target`` on a free port, yield the port once it answers, stop it afterwards."""
    for _attempt in range(3):
        port = free_port()
        proc = start(target, port, tmp)
        if wait_http(proc, port, _request(target.path, texts[0])):
            break
        stop(proc)
    else:
        raise RuntimeError(f"{target.name} did not start; see {tmp / (target.name + '.log')}")
    try:
        yield port
    finally:
        stop(proc)


def run_target(target: Target, texts: list[str], tmp: Path, scale: float) -> dict[str, Any]:
    import uvloop

    with serving(target, texts, tmp) as port:
        levels = []
        for c in CONCURRENCY:
            total = requests_at(c, scale)
            uvloop.run(closed_loop(port, target.path, texts, c, 2 * c))  # warm-up, not measured
            before = scrape_batching(port) if target.scrape_metrics else (0.0, 0.0)
            result = uvloop.run(closed_loop(port, target.path, texts, c, total))
            if target.scrape_metrics:
                after = scrape_batching(port)
                calls = after[1] - before[1]
                result["mean_batch_size"] = (after[0] - before[0]) / calls if calls else None
            levels.append(result)
            print(
                f"  {target.name:24s} c={c:3d} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:7.1f} ms"
                f"  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}",
                flush=True,
            )
        return {"name": target.name, "levels": levels}


def goal_rounds(
    bare: BareModel, target: Target, texts: list[str], tmp: Path, scale: float, rounds: int, best: dict[str, Any]
) -> dict[str, Any]:
    """The two goals that compare the server with the model alone, measured in interleaved rounds.

    Each round times, back to back with one server kept running: the concurrency-1 texts as bare forward
    passes, the same texts served at concurrency 1, the model's best batched configuration, the server at
    concurrency 32, and the model's best again (the c=32 ratio is over the mean of the two). Both sides of
    each ratio see the same minutes of a drifting machine (the model alone moved 13 % between two whole
    runs); the goals are judged on the medians over rounds. Blocks, not alternating
    requests: a bare forward pass right before each served one evicts the server's weights from the shared
    L3 cache (90 MB of weights, 32 MB of cache here), which alternating measured as 2-3 ms of "server overhead".
    """
    import uvloop

    n1, n32 = requests_at(1, scale), requests_at(32, scale)

    def model_best() -> float:
        return bare.batched_rps(best["order"], best["batch"], best["workers"])

    per_round = []
    with serving(target, texts, tmp) as port:
        uvloop.run(closed_loop(port, target.path, texts, 1, 10))  # warm-up, not measured
        uvloop.run(closed_loop(port, target.path, texts, 32, 64))
        for k in range(rounds):
            forward = [bare.forward_seconds(i) for i in range(n1)]
            before = scrape_timings(port)
            served = uvloop.run(closed_loop(port, target.path, texts, 1, n1))  # the texts the bare passes ran
            if served["errors"]:
                raise RuntimeError(f"{served['errors']} failed requests at concurrency 1")
            inside = {key: v - before[key] for key, v in scrape_timings(port).items()}
            # The model's best right before and right after the c=32 block (their mean cancels a steady drift
            # of the machine over the block; the ratio to the "before" figure alone is kept beside it).
            limit_before = model_best()
            c32 = uvloop.run(closed_loop(port, target.path, texts, 32, n32))
            limit = (limit_before + model_best()) / 2
            row = {
                "forward_p50_ms": statistics.median(forward) * 1e3,
                "served_c1_p50_ms": served["p50_ms"],
                "added_p50_c1_ms": served["p50_ms"] - statistics.median(forward) * 1e3,
                # Per request, paired: its latency minus the model call that computed it, as the server timed
                # it on the model thread (Server-Timing). Free of the forward pass's drift between blocks.
                "around_model_p50_ms": served["around_model_p50_ms"],
                # Whether the model call itself is slower inside the server than in this process.
                "model_in_server_minus_bare_ms": served["model_p50_ms"] - statistics.median(forward) * 1e3,
                # The same requests split by the server's own metrics (means): its time outside the model call,
                # and the HTTP transport and client around it.
                "server_outside_model_ms": (inside["request"] - inside["compute"]) / n1 * 1e3,
                "http_and_client_ms": (n1 / served["throughput_rps"] - inside["request"]) / n1 * 1e3,
                "model_limit_rps": limit,
                "c32_rps": c32["throughput_rps"],
                "c32_vs_limit": c32["throughput_rps"] / limit,
                "c32_vs_limit_before": c32["throughput_rps"] / limit_before,
            }
            per_round.append(row)
            added = row["added_p50_c1_ms"]
            c32_rps, ratio = row["c32_rps"], row["c32_vs_limit"]
            print(
                f"  round {k + 1}: added p50 {added:.2f} ms (per request around the model call "
                f"{row['around_model_p50_ms']:.2f} ms), "
                f"c=32 {c32_rps:.1f}/s over the model's {limit:.1f}/s = {ratio:.2f}",
                flush=True,
            )
    keys = (
        "added_p50_c1_ms",
        "around_model_p50_ms",
        "model_in_server_minus_bare_ms",
        "server_outside_model_ms",
        "http_and_client_ms",
        "c32_vs_limit",
        "c32_vs_limit_before",
        "model_limit_rps",
        "c32_rps",
    )
    return {
        "rounds": per_round,
        "median": {key: statistics.median(r[key] for r in per_round) for key in keys},
        "range": {key: (min(r[key] for r in per_round), max(r[key] for r in per_round)) for key in keys},
    }


# ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer requests per level (a smoke run)")
    parser.add_argument("--skip-competitors", action="store_true", help="no LitServe / Ray Serve")
    parser.add_argument("--out", default=str(RESULTS / "serve_bench"))
    parser.add_argument(
        "--only", default="", help="comma-separated server names to run (a profiling aid; goals need all of them)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads for the model everywhere (1: on a shared CPU, 2 spinning OpenMP threads "
        "make a single forward pass up to 20x slower)",
    )
    parser.add_argument(
        "--rounds", type=int, default=11, help="interleaved rounds that judge the two model-relative goals"
    )
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every server process
    # A plain kill must still stop the server started last (run_target's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scale = 0.25 if args.quick else 1.0
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-bench-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    path = model_dir()
    texts = workload(path, 256)
    print(f"model {path.name}; {len(texts)} R8 texts of <= 128 tokens", flush=True)
    model = BareModel(path, texts)
    workers = max(1, (os.cpu_count() or 1) // args.threads)
    bare = bare_model(model, scale, workers)
    print(
        f"  bare forward p50 {bare['single_forward_p50_ms']:.2f} ms; best batched "
        f"{bare['best_batched']['throughput_rps']:.1f}/s ({bare['best_batched']})",
        flush=True,
    )
    runs = []
    only = {n for n in args.only.split(",") if n}
    for t in targets(path, tmp, args.skip_competitors, workers):
        if only and t.name not in only:
            continue
        try:
            runs.append(run_target(t, texts, tmp, scale))
        except (RuntimeError, TimeoutError, OSError) as err:  # a competitor that fails is reported, not fatal
            print(f"  {t.name}: FAILED: {err}", flush=True)
            runs.append({"name": t.name, "error": str(err), "levels": []})
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps({"bare_model": bare, "servers": runs}))
    by = {r["name"]: {lv["concurrency"]: lv for lv in r["levels"]} for r in runs if r["levels"]}
    if only:
        print(json.dumps({"bare_model": bare, "servers": runs}, default=float))
        return
    ours = by["deepseek"]
    limit = bare["best_batched"]["throughput_rps"]
    deepseek = next(t for t in targets(path, tmp, True, workers) if t.name == "deepseek")
    print(f"goal rounds ({args.rounds}), {deepseek.name} against the model alone:", flush=True)
    rounds = goal_rounds(model, deepseek, texts, tmp, scale, args.rounds, bare["best_batched"])
    goals: dict[str, Any] = {
        "rounds_median": rounds["median"],
        "single_pass": {
            "throughput_c32_vs_model_limit": ours[32]["throughput_rps"] / limit,
            "added_p50_c1_ms": ours[1]["p50_ms"] - bare["single_forward_p50_ms"],
        },
        "throughput_vs_unbatched": {
            c: ours[c]["throughput_rps"] / by["fastapi-unbatched"][c]["throughput_rps"] for c in CONCURRENCY
        },
    }
    for other in ("litserve", "ray"):
        if by.get(other):
            goals[f"throughput_vs_{other}"] = {
                c: ours[c]["throughput_rps"] / by[other][c]["throughput_rps"] for c in CONCURRENCY
            }
    goals["met"] = {
        "c32_within_10pct_of_limit": rounds["median"]["c32_vs_limit"] >= 0.9,
        # Judged block against block, as the goal reads ("over a bare forward pass"): the per-request figure
        # leaves out that the model call itself may run slower inside the server than in this process.
        "added_p50_c1_under_2ms": rounds["median"]["added_p50_c1_ms"] < 2.0,
        "ahead_of_litserve_c32": goals.get("throughput_vs_litserve", {}).get(32, 0) > 1.0,
        "ahead_of_ray_c32": goals.get("throughput_vs_ray", {}).get(32, 0) > 1.0,
    }
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": args.threads,
            "load_average_at_end": os.getloadavg(),
        },
        "model": "all-MiniLM-L6-v2 fine-tuned on Reuters R8 (fp32)",
        "workload": f"{len(texts)} held-out R8 texts of <= 128 tokens, closed loop",
        "batching": BATCHING,
        "bare_model": bare,
        "servers": runs,
        "goal_rounds": rounds,
        "goals": goals,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(report))
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    print(json.dumps(goals, indent=2, default=float))


def markdown(r: dict[str, Any]) -> str:
    bare = r["bare_model"]
    lines = [
        f"# Serving benchmark ({r['when']})",
        "",
        f"Model: {r['model']}. Workload: {r['workload']}. Machine: {r['machine']['cpus']} CPUs, "
        f"load average at the end {tuple(round(x, 1) for x in r['machine']['load_average_at_end'])} (shared).",
        f"Bare forward pass (one text) p50: {bare['single_forward_p50_ms']:.2f} ms. Best batched throughput of the "
        f"model alone: {bare['best_batched']['throughput_rps']:.1f}/s (batch {bare['best_batched']['batch']}, "
        f"{bare['best_batched']['order']}, {bare['best_batched']['workers']} thread(s) at once).",
        "",
        "| server | concurrency | throughput (req/s) | p50 (ms) | p99 (ms) | errors | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in r["servers"]:
        if run.get("error"):
            lines.append(f"| {run['name']} | failed: {run['error']} | | | | | |")
        for lv in run["levels"]:
            mb = lv.get("mean_batch_size")
            lines.append(
                f"| {run['name']} | {lv['concurrency']} | {lv['throughput_rps']:.1f} | {lv['p50_ms']:.1f} | "
                f"{lv['p99_ms']:.1f} | {lv['errors']} | {'' if mb is None else f'{mb:.1f}'} |"
            )
    g = r["goals"]
    rounds = r["goal_rounds"]
    lines += [
        "",
        f"Goal rounds ({len(rounds['rounds'])}, interleaved with the model alone, one server kept running):",
        "",
        "| round | bare forward p50 (ms) | served c=1 p50 (ms) | added p50, blocks (ms) | "
        "added p50, per request (ms) | model call in server - bare (ms) | server outside the model (ms) | "
        "HTTP + client (ms) | model's best, before and after (req/s) | c=32 (req/s) | c=32 / model | "
        "c=32 / model before |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, row in enumerate(rounds["rounds"], 1):
        lines.append(
            f"| {k} | {row['forward_p50_ms']:.2f} | {row['served_c1_p50_ms']:.2f} | {row['added_p50_c1_ms']:.2f} | "
            f"{row['around_model_p50_ms']:.2f} | {row['model_in_server_minus_bare_ms']:.2f} | "
            f"{row['server_outside_model_ms']:.2f} | {row['http_and_client_ms']:.2f} | "
            f"{row['model_limit_rps']:.1f} | {row['c32_rps']:.1f} | {row['c32_vs_limit']:.2f} | "
            f"{row['c32_vs_limit_before']:.2f} |"
        )
    med, single = g["rounds_median"], g["single_pass"]
    lines += ["", "Goals (the two model-relative ones on the medians over rounds; the rest from the table):", ""]
    lines.append(
        f"- throughput at concurrency 32 / model's best batched throughput: {med['c32_vs_limit']:.2f} "
        f"(goal >= 0.90; rounds: {rounds['range']['c32_vs_limit'][0]:.2f} to "
        f"{rounds['range']['c32_vs_limit'][1]:.2f}; against the model's best timed only before the block: "
        f"{med['c32_vs_limit_before']:.2f}; the table's single pass: {single['throughput_c32_vs_model_limit']:.2f})"
    )
    lines.append(
        f"- added p50 at concurrency 1 over a bare forward pass, block against block: {med['added_p50_c1_ms']:.2f} ms "
        f"(goal < 2 ms; rounds: {rounds['range']['added_p50_c1_ms'][0]:.2f} to "
        f"{rounds['range']['added_p50_c1_ms'][1]:.2f}; the table's single pass: {single['added_p50_c1_ms']:.2f} ms). "
        f"Split per request: latency minus the model call that computed it (the server's Server-Timing header) "
        f"{med['around_model_p50_ms']:.2f} ms, and the model call inside the server against the bare forward pass "
        f"in the benchmark's process {med['model_in_server_minus_bare_ms']:+.2f} ms (rounds: "
        f"{rounds['range']['model_in_server_minus_bare_ms'][0]:+.2f} to "
        f"{rounds['range']['model_in_server_minus_bare_ms'][1]:+.2f}). "
        f"By the server's metrics (means): {med['server_outside_model_ms']:.2f} ms in the server outside the model "
        f"call plus {med['http_and_client_ms']:.2f} ms of HTTP and client"
    )
    for key in ("throughput_vs_unbatched", "throughput_vs_litserve", "throughput_vs_ray"):
        if key in g:
            ratios = ", ".join(f"c={c}: {v:.2f}x" for c, v in g[key].items())
            lines.append(f"- {key.replace('_', ' ')}: {ratios}")
    lines.append(f"- met: {g['met']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
