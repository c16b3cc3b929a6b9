"""Serving benchmark: the same model, machine and texts; one run; servers side by side; reported as ratios.

    .venv/bin/python bench/serve_bench.py [--quick] [--skip-competitors]

Measures, for the fine-tuned MiniLM (Reuters R8) on held-out R8 texts of at most 128 tokens:

* the model itself, in-process: the p50 of one bare forward pass (one text), and the best batched throughput
  over batch sizes 1..64 (arrival order and length-sorted): the physical limit of this machine;
* servers under a bounded closed-loop load (N connections, each sending its next request when the previous
  answer arrived, a fixed number of requests) at concurrency 1, 8, 32, 64: throughput, p50, p99 —
  unbatched FastAPI (one forward per request), this server with batching off (maxBatchSize 1), this server,
  LitServe with batching, Ray Serve with @serve.batch (the last two from the bench venv, see
  bench/serve_setup_venv.sh).

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


def bare_model(path: Path, texts: list[str], scale: float) -> dict[str, Any]:
    import torch
    from deepseek_workers.serving.backends import TextClassifier, load_backend

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    backend = load_backend(str(path), "fp32")
    assert isinstance(backend, TextClassifier)
    ids = [backend.encode(t) for t in texts]
    for x in ids[:8]:
        backend.predict([x])
    single = []
    # Exactly the texts the concurrency-1 level sends (its added p50 compares like with like), three rounds.
    for _round in range(3):
        for x in ids[: requests_at(1, scale)]:
            t0 = time.perf_counter()
            backend.predict([x])
            single.append(time.perf_counter() - t0)
    best: dict[str, Any] = {"throughput_rps": 0.0}
    table = []
    ids = ids[:128]  # enough for a stable rate; the model alone is the slow part of the whole run
    for order in ("arrival", "length-sorted"):
        seq = sorted(ids, key=len) if order == "length-sorted" else ids
        for b in (1, 16, 32) if scale < 1.0 else (1, 8, 16, 32, 64):
            backend.predict(seq[:b])
            t0 = time.perf_counter()
            for i in range(0, len(seq), b):
                backend.predict(seq[i : i + b])
            rps = len(seq) / (time.perf_counter() - t0)
            table.append({"order": order, "batch": b, "throughput_rps": round(rps, 1)})
            if rps > best["throughput_rps"]:
                best = {"order": order, "batch": b, "throughput_rps": rps}
    return {"single_forward_p50_ms": statistics.median(single) * 1e3, "best_batched": best, "table": table}


# ---------------------------------------------------------------------------------------------------------
# Load generator: raw keep-alive HTTP/1.1 on loopback, prebuilt requests (cheap, so the client steals little CPU)


def _request(path: str, text: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    return status, await reader.read()


async def closed_loop(port: int, path: str, texts: list[str], concurrency: int, total: int) -> dict[str, Any]:
    requests = [_request(path, t) for t in texts]
    latencies: list[float] = []
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
                status, body = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200 or b"label" not in body:
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


def targets(path: Path, tmp: Path, skip_competitors: bool) -> list[Target]:
    py = str(ROOT / ".venv/bin/python")
    out = [Target("fastapi-unbatched", [py, str(ROOT / "bench/serve_baselines.py"), "fastapi", str(path)])]
    for name, batching in (
        ("deepseek-batching-off", {**BATCHING, "maxBatchSize": 1}),
        ("deepseek", BATCHING),
    ):
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


def scrape_batching(port: int) -> tuple[float, float]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    items = calls = 0.0
    for line in data.decode().splitlines():
        if line.startswith("deepseek_serve_batch_size_sum"):
            items = float(line.rsplit(" ", 1)[1])
        elif line.startswith("deepseek_serve_batch_size_count"):
            calls = float(line.rsplit(" ", 1)[1])
    return items, calls


def requests_at(concurrency: int, scale: float) -> int:
    """Requests measured at one concurrency level (a closed loop sends texts[0], texts[1], ... on connection 0)."""
    return max(int(scale * max(60, 6 * concurrency)), 4 * concurrency)


def run_target(target: Target, texts: list[str], tmp: Path, scale: float) -> dict[str, Any]:
    for _attempt in range(3):
        port = free_port()
        proc = start(target, port, tmp)
        if wait_http(proc, port, _request(target.path, texts[0])):
            break
        stop(proc)
    else:
        raise RuntimeError(f"{target.name} did not start; see {tmp / (target.name + '.log')}")
    try:
        import uvloop

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
    finally:
        stop(proc)


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
    bare = bare_model(path, texts, scale)
    print(
        f"  bare forward p50 {bare['single_forward_p50_ms']:.2f} ms; best batched "
        f"{bare['best_batched']['throughput_rps']:.1f}/s ({bare['best_batched']})",
        flush=True,
    )
    runs = []
    only = {n for n in args.only.split(",") if n}
    for t in targets(path, tmp, args.skip_competitors):
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
    goals: dict[str, Any] = {
        "throughput_c32_vs_model_limit": ours[32]["throughput_rps"] / limit,
        "added_p50_c1_ms": ours[1]["p50_ms"] - bare["single_forward_p50_ms"],
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
        "c32_within_10pct_of_limit": goals["throughput_c32_vs_model_limit"] >= 0.9,
        "added_p50_c1_under_2ms": goals["added_p50_c1_ms"] < 2.0,
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
        f"{bare['best_batched']['order']}).",
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
    lines += ["", "Goals (ratios from this one run):", ""]
    lines.append(
        f"- throughput at concurrency 32 / model's best batched throughput: "
        f"{g['throughput_c32_vs_model_limit']:.2f} (goal >= 0.90)"
    )
    lines.append(f"- added p50 at concurrency 1 over a bare forward pass: {g['added_p50_c1_ms']:.2f} ms (goal < 2 ms)")
    for key in ("throughput_vs_unbatched", "throughput_vs_litserve", "throughput_vs_ray"):
        if key in g:
            ratios = ", ".join(f"c={c}: {v:.2f}x" for c, v in g[key].items())
            lines.append(f"- {key.replace('_', ' ')}: {ratios}")
    lines.append(f"- met: {g['met']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
