"""`deepseek-worker quantize`: trained fp32 model -> INT8 (+ ONNX) -> measured -> published artifact.

Reads ``<outputUri>/trained/<artifactVersion>`` (the train step's artifact), evaluates fp32 and every derived
variant on the evaluation split, and publishes ``<outputUri>/<artifactVersion>`` atomically. An INT8 variant
that loses more than ``quantization.maxAccuracyDrop`` is not published (QuantizationOverBudget): fp32 stays
the served variant, and metrics.json, the manifest and the final progress report all say so.
"""

from __future__ import annotations

import logging
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from deepseek_workers import artifact as art_mod
from deepseek_workers.builtin_data import TextExample
from deepseek_workers.errors import BadArtifactError, BadDataError, WorkerError
from deepseek_workers.progress import ProgressReporter, make_report
from deepseek_workers.runconfig import TrainRunConfig
from deepseek_workers.storage import Storage, StorageError

log = logging.getLogger(__name__)

STEPS: Final = ("load", "evaluate-fp32", "quantize", "onnx", "speed", "publish")
OVER_BUDGET_REASON: Final = "QuantizationOverBudget"
WEIGHT_SUFFIXES: Final = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".index.json")
SPEED_ROUNDS: Final = 5


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


@dataclass
class VariantResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    published: bool = True
    note: str | None = None

    def info(self) -> dict[str, Any]:
        """The facts worth repeating in the manifest's variant entry."""
        keys = ("exporter", "opset", "runtime", "maxAbsDiffVsTorch", "top1AgreementVsTorch")
        return {k: self.metrics[k] for k in keys if k in self.metrics}


class _Progress:
    def __init__(self, cfg: TrainRunConfig, reporter: ProgressReporter) -> None:
        self.cfg = cfg
        self.reporter = reporter

    def step(self, name: str, message: str) -> None:
        log.info("quantize: %s", message)
        self.reporter.report(
            make_report(
                stage="quantize", state="running", step=STEPS.index(name), totalSteps=len(STEPS), message=message
            ),
            final=True,  # few, slow steps: every one is worth sending
        )

    def done(self, artifact_uri: str, metrics: dict[str, float], over_budget: bool, message: str) -> None:
        self.reporter.report(
            make_report(
                stage="quantize",
                state="succeeded",
                step=len(STEPS),
                totalSteps=len(STEPS),
                artifactUri=artifact_uri,
                metrics=metrics,
                overBudget=over_budget,
                message=message,
            ),
            final=True,
        )

    def failed(self, message: str) -> None:
        self.reporter.report(make_report(stage="quantize", state="failed", message=message[:2000]), final=True)


def _reporter(cfg: TrainRunConfig) -> ProgressReporter:
    local = Storage.from_uri(cfg.output_uri).local_path()
    return ProgressReporter(cfg.progress, local)


def run_quantization(cfg: TrainRunConfig) -> None:
    try:
        Storage.from_uri(cfg.output_uri)
    except StorageError as err:
        raise BadArtifactError(f"outputUri: {err}") from None
    progress = _Progress(cfg, _reporter(cfg))
    try:
        _run(cfg, progress)
    except WorkerError as err:
        progress.failed(f"{type(err).__name__}: {err.message}")
        raise
    except Exception as err:
        progress.failed(f"{type(err).__name__}: {err}")
        raise


def _run(cfg: TrainRunConfig, progress: _Progress) -> None:
    out_uri = join_uri(cfg.output_uri, cfg.artifact_version)
    trained_uri = join_uri(cfg.output_uri, "trained", cfg.artifact_version)

    if art_mod.is_complete(out_uri):
        # A retried pod after a successful publish: the artifact is immutable, report what it holds.
        existing = art_mod.open_artifact(out_uri)
        log.info("artifact %s is already published; nothing to do", out_uri)
        progress.done(
            out_uri,
            summary_metrics(existing.metrics),
            existing.manifest.over_budget,
            f"artifact {out_uri} was already published",
        )
        return

    progress.step("load", f"verifying the trained model {trained_uri}")
    trained = art_mod.open_artifact(trained_uri)
    fp32_dir = trained.variant_path("fp32")

    from deepseek_workers.modelio import _load_torch_fp32
    from deepseek_workers.quantization import evaluate as ev

    fp32 = _load_torch_fp32(fp32_dir, "cpu")
    task = fp32.task
    if cfg.model.task != task:
        raise BadArtifactError(f"model.task is {cfg.model.task} but the trained model at {trained_uri} is a {task}")
    rows = _checked_rows(cfg, fp32.labels, task)
    texts = [r.text for r in rows]
    # Causal LMs produce vocabulary-sized logits at every position: smaller batches keep memory in check.
    eval_batch = 32 if task == "text-classification" else 8
    batches = ev.tokenize_batches(fp32.tokenizer, texts, max_length=cfg.dataset.max_length, batch_size=eval_batch)
    speed_fn = ev.torch_logits_fn if task == "text-classification" else ev.torch_lm_step_fn
    label_ids = {label: i for i, label in enumerate(fp32.labels)}
    truth = [label_ids[r.label] for r in rows] if task == "text-classification" else []
    q = cfg.quantization

    with art_mod.write_artifact(out_uri, version=cfg.artifact_version, source=cfg.source, task=task) as art:
        _copy_dir(fp32_dir, art.dir / "fp32")
        art.add_variant("fp32", "fp32", "hf-safetensors")
        if "adapter" in trained.manifest.variants:
            _copy_dir(trained.variant_path("adapter"), art.dir / "adapter")
            art.add_variant("adapter", "adapter", "peft-adapter")

        progress.step("evaluate-fp32", f"evaluating fp32 on {len(rows)} examples")
        results: dict[str, VariantResult] = {}
        fns: dict[str, ev.LogitsFn] = {"fp32": speed_fn(fp32.model)}
        preds: dict[str, list[int]] = {}

        def quality(name: str, fn: ev.LogitsFn, model: Any = None) -> dict[str, float]:
            if task == "text-classification":
                preds[name] = ev.predict_classes(fn, batches, len(rows))
                return ev.classification_metrics(truth, preds[name], len(fp32.labels))
            return ev.lm_metrics(model, batches)

        results["fp32"] = VariantResult(quality("fp32", ev.torch_logits_fn(fp32.model), fp32.model))
        results["fp32"].metrics["sizeBytes"] = _weights_size(art.dir / "fp32")

        runtime = None
        if q.enabled:
            from deepseek_workers.quantization.int8 import (
                Runtime,
                load_int8,
                record_runtime,
                runtime_candidates,
                save_int8,
            )

            progress.step("quantize", f"quantizing to INT8 ({q.method}) and evaluating it")
            meta = save_int8(fp32.model, art.dir / "int8", method=q.method, task=task)
            _copy_dir(fp32_dir, art.dir / "int8", skip_weights=True, overwrite=False)
            # Evaluate the runtimes fastest first, loading exactly as a server does; keep the first within budget.
            tried: dict[Runtime, tuple[Any, dict[str, float]]] = {}
            chosen: Runtime
            fp32_accuracy = results["fp32"].metrics["accuracy"]
            for candidate in runtime_candidates(q.method, task):
                model = load_int8(art.dir / "int8", runtime=candidate)
                tried[candidate] = (model, quality(f"int8:{candidate}", ev.torch_logits_fn(model), model))
                if fp32_accuracy - tried[candidate][1]["accuracy"] <= q.max_accuracy_drop:
                    chosen = candidate
                    break
            else:  # none within budget: report the most accurate (it will not be published)
                chosen = max(tried, key=lambda rt: tried[rt][1]["accuracy"])
            int8_model, int8_quality = tried[chosen]
            record_runtime(art.dir / "int8", chosen)
            runtime = chosen
            fns["int8"] = speed_fn(int8_model)
            results["int8"] = VariantResult(dict(int8_quality))
            results["int8"].metrics.update(
                sizeBytes=_weights_size(art.dir / "int8"),
                runtime=runtime,
                runtimesTried={rt: round(m["accuracy"], 6) for rt, (_, m) in tried.items()},
                method=q.method,
                quantizedModules=len(meta["modules"]),
                keptFloat=meta["keptFloat"],
            )

        if q.export_onnx and task == "text-classification":
            progress.step("onnx", "exporting ONNX (fp32 and INT8) and checking it against torch")
            _onnx(art.dir / "onnx", fp32, fp32_dir, batches, fns, results, quality, int8=q.enabled)
        elif q.export_onnx:
            log.info("ONNX export covers text classification; skipped for a %s", task)

        progress.step("speed", "measuring latency at batch 1 and 32")
        single, large = ev.speed_inputs(batches, batch_size=32)
        speed = ev.measure_speed(fns, single, large, rounds=SPEED_ROUNDS)
        for name, s in speed.items():
            results[name].metrics.update(
                latencyBatch1Ms=round(s.batch1_ms, 3),
                latencyBatch32Ms=round(s.batch32_ms, 3),
                throughputPerSecond=round(s.throughput, 2),
            )

        over_budget = _apply_budget(results, q.max_accuracy_drop)
        for name, rel in (("int8", "int8"), ("onnx-int8", "onnx/model-int8.onnx")):
            if name in results and not results[name].published:
                path = art.dir / rel
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if results.get("int8") and results["int8"].published:
            art.add_variant("int8", "int8", "int8-safetensors", info={"method": q.method, "runtime": runtime})
        if "onnx-fp32" in results and results["onnx-fp32"].published:
            art.add_variant("onnx-fp32", "onnx/model.onnx", "onnx", info=results["onnx-fp32"].info())
        if "onnx-int8" in results and results["onnx-int8"].published:
            art.add_variant("onnx-int8", "onnx/model-int8.onnx", "onnx", info=results["onnx-int8"].info())

        served = "int8" if "int8" in art.variants else "fp32"
        art.served_variant = served
        art.over_budget = over_budget
        metrics = _metrics_document(cfg, task, len(rows), results, served, over_budget, runtime)
        art.metrics = metrics
        art.extra = {
            "labels": fp32.labels,
            "trainedFrom": trained_uri,
            "quantization": metrics["quantization"],
        }
        progress.step("publish", f"publishing {out_uri}")
    summary = summary_metrics(metrics)
    message = _final_message(metrics)
    log.info("quantize: %s", message)
    progress.done(out_uri, summary, over_budget, message)


# ---------------------------------------------------------------------------------------------------------
# Pieces


def _checked_rows(cfg: TrainRunConfig, labels: list[str], task: str) -> list[TextExample]:
    from deepseek_workers.quantization.data import eval_rows

    rows = eval_rows(cfg, model_labels=labels if task == "text-classification" else None)
    if not rows:
        raise BadDataError("the evaluation split is empty")
    if task == "text-classification":
        known = set(labels)
        unknown = sorted({r.label for r in rows} - known)
        if unknown:
            raise BadDataError(
                f"evaluation data has labels the model does not know: {', '.join(unknown[:10])} "
                f"(model labels: {', '.join(labels)})"
            )
    return rows


def _copy_dir(src: Path, dest: Path, *, skip_weights: bool = False, overwrite: bool = True) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.rglob("*")):
        if not f.is_file():
            continue
        if skip_weights and f.name.endswith(WEIGHT_SUFFIXES):
            continue
        target = dest / f.relative_to(src)
        if target.exists() and not overwrite:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)


def _weights_size(path: Path) -> int:
    files = (
        [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    )
    return sum(f.stat().st_size for f in files)


def _onnx(
    directory: Path,
    fp32: Any,
    fp32_dir: Path,
    batches: list[Any],
    fns: dict[str, Any],
    results: dict[str, VariantResult],
    quality: Any,
    *,
    int8: bool,
) -> None:
    from deepseek_workers.quantization import evaluate as ev
    from deepseek_workers.quantization import onnx_export as ox

    check = [(b.input_ids, b.attention_mask) for b in (batches[0], batches[len(batches) // 2], batches[-1])]
    try:
        exporter = ox.export_fp32(fp32.model, check[0][0], check[0][1], directory / ox.FP32_FILE)
        fp32_fn = ev.onnx_logits_fn(ox.session(directory / ox.FP32_FILE))
        c = ox.check_fp32(fns["fp32"], fp32_fn, check)
    except Exception as err:
        log.warning("ONNX export failed: %s: %s", type(err).__name__, err)
        results["onnx-fp32"] = VariantResult(published=False, note=f"export failed: {type(err).__name__}: {err}")
        shutil.rmtree(directory, ignore_errors=True)
        return
    _copy_dir(fp32_dir, directory, skip_weights=True)
    fns["onnx-fp32"] = fp32_fn
    results["onnx-fp32"] = VariantResult(quality("onnx-fp32", fp32_fn))
    results["onnx-fp32"].metrics.update(
        sizeBytes=_weights_size(directory / ox.FP32_FILE),
        exporter=exporter,
        opset=ox.OPSET if exporter == "dynamo" else 17,
        maxAbsDiffVsTorch=c.max_abs_diff,
        tolerance=f"atol {ox.FP32_ATOL} + rtol {ox.FP32_RTOL}",
    )
    if not int8:
        return
    try:
        ox.quantize_onnx(directory / ox.FP32_FILE, directory / ox.INT8_FILE)
        int8_fn = ev.onnx_logits_fn(ox.session(directory / ox.INT8_FILE))
        c8 = ox.check_int8(fns["fp32"], int8_fn, check)
    except Exception as err:
        log.warning("ONNX INT8 quantization failed: %s: %s", type(err).__name__, err)
        results["onnx-int8"] = VariantResult(published=False, note=f"INT8 failed: {type(err).__name__}: {err}")
        (directory / ox.INT8_FILE).unlink(missing_ok=True)
        return
    fns["onnx-int8"] = int8_fn
    results["onnx-int8"] = VariantResult(quality("onnx-int8", int8_fn))
    results["onnx-int8"].metrics.update(
        sizeBytes=_weights_size(directory / ox.INT8_FILE),
        runtime="onnxruntime quantize_dynamic (QInt8 per-channel weights)",
        maxAbsDiffVsTorch=c8.max_abs_diff,
        top1AgreementVsTorch=c8.top1_agreement,
        tolerance=f"max |diff| <= {ox.INT8_MAX_REL_DIFF} x logit range, top-1 agreement >= {ox.INT8_MIN_AGREEMENT}",
    )


def _apply_budget(results: dict[str, VariantResult], max_drop: float) -> bool:
    """Mark INT8 variants that lost more than ``max_drop`` accuracy as unpublished; True if the torch one did."""
    base = results["fp32"].metrics["accuracy"]
    over = False
    for name, ref in (("int8", base), ("onnx-int8", base)):
        r = results.get(name)
        if r is None or not r.published:
            continue
        drop = ref - r.metrics["accuracy"]
        r.metrics["accuracyDrop"] = drop
        if "macroF1" in r.metrics:
            r.metrics["macroF1Drop"] = results["fp32"].metrics["macroF1"] - r.metrics["macroF1"]
        if "perplexity" in r.metrics:
            r.metrics["perplexityRatio"] = r.metrics["perplexity"] / results["fp32"].metrics["perplexity"]
        if drop > max_drop + 1e-12:
            r.published = False
            r.note = f"{OVER_BUDGET_REASON}: accuracy dropped {drop * 100:.2f} points (budget {max_drop * 100:.2f})"
            over = over or name == "int8"
    return over


def _metrics_document(
    cfg: TrainRunConfig,
    task: str,
    examples: int,
    results: dict[str, VariantResult],
    served: str,
    over_budget: bool,
    runtime: str | None,
) -> dict[str, Any]:
    import torch

    fp32 = results["fp32"].metrics
    variants: dict[str, Any] = {}
    for name, r in results.items():
        m = dict(r.metrics)
        m["published"] = r.published
        if r.note:
            m["note"] = r.note
        if name != "fp32" and "latencyBatch1Ms" in m:
            m["speedupBatch1"] = round(fp32["latencyBatch1Ms"] / m["latencyBatch1Ms"], 3)
            m["speedupBatch32"] = round(fp32["latencyBatch32Ms"] / m["latencyBatch32Ms"], 3)
        if name != "fp32" and m.get("sizeBytes"):
            m["sizeRatio"] = round(m["sizeBytes"] / fp32["sizeBytes"], 4)
        variants[name] = m
    q = cfg.quantization
    int8 = results.get("int8")
    return {
        "task": task,
        "primaryMetric": "accuracy" if task == "text-classification" else "nextTokenAccuracy",
        "evalExamples": examples,
        "maxLength": cfg.dataset.max_length,
        "quantization": {
            "enabled": q.enabled,
            "method": q.method,
            "runtime": runtime,
            "maxAccuracyDrop": q.max_accuracy_drop,
            "accuracyDrop": int8.metrics.get("accuracyDrop") if int8 else None,
            "overBudget": over_budget,
            "reason": OVER_BUDGET_REASON if over_budget else None,
            "servedVariant": served,
        },
        "variants": variants,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torchThreads": torch.get_num_threads(),
            "quantizedEngine": torch.backends.quantized.engine,
        },
    }


def summary_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for the progress report (and so for the custom resource's status)."""
    out: dict[str, float] = {}
    prefixes = {"fp32": "fp32", "int8": "int8", "onnx-fp32": "onnxFp32", "onnx-int8": "onnxInt8"}
    keys = ("accuracy", "macroF1", "perplexity", "latencyBatch1Ms", "latencyBatch32Ms", "throughputPerSecond")
    for name, m in metrics.get("variants", {}).items():
        p = prefixes.get(name)
        if p is None:
            continue
        for k in (*keys, "sizeBytes", "speedupBatch1", "speedupBatch32"):
            v = m.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[p + k[0].upper() + k[1:]] = float(v)
    drop = metrics.get("quantization", {}).get("accuracyDrop")
    if isinstance(drop, int | float):
        out["accuracyDrop"] = float(drop)
    return out


def _final_message(metrics: dict[str, Any]) -> str:
    q = metrics["quantization"]
    v = metrics["variants"]
    if not q["enabled"]:
        return f"published fp32 (quantization disabled); accuracy {v['fp32']['accuracy']:.4f}"
    i8 = v.get("int8", {})
    text = (
        f"fp32 accuracy {v['fp32']['accuracy']:.4f}, INT8 ({q['method']}, {q['runtime']}) {i8.get('accuracy', 0):.4f} "
        f"(drop {100 * (q['accuracyDrop'] or 0):.2f} points, budget {100 * q['maxAccuracyDrop']:.2f}); "
        f"speed-up x{i8.get('speedupBatch1', 0):.2f} at batch 1, x{i8.get('speedupBatch32', 0):.2f} at batch 32"
    )
    if q["overBudget"]:
        text = f"{OVER_BUDGET_REASON}: INT8 not published, fp32 is served. " + text
    return text
