"""Evaluate every model of a run on every runtime built for it -> real_evaluation_results.json.

One record per model x runtime (`runtime` + `dtype`: fp32, fp16 or int8): all metrics of `evaluation`, batch-1 latency and throughput
with the device and thread count, and the model's method, ratio, widths, parameters, MACs and
reductions (from profiling_results.json). Two speed-ups: against the baseline in the same runtime
and dtype (what pruning gave), and against the baseline as trained, in ONNX Runtime FP32 on the
same CPU (what pruning plus the runtime gave: the figure a user asks for). Runtimes that cannot run here are listed as skipped
with the reason, never silently left out.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from . import __version__
from .artifacts import strict_json, write_json
from .config import Config
from .data.dataset import KSDD2Dataset, load_split, preprocessing_for
from .deploy import artifact_path, model_paths, onnx_info, onnx_path, open_runtime
from .evaluation import evaluate_predictions, interleaved_latency, predict
from .profiling import profile_run
from .runtimes.base import CPU_RUNTIMES

SCHEMA_VERSION = 5  # 2: budget, predicted latency; 3: threshold = the model's validation threshold, int8 choice;
#                    4: openvino records, speedup_vs_onnxruntime_fp32; 5: int8.calibration "inputs:<method>"
RESULTS_FILE = "real_evaluation_results.json"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "real_evaluation_results.schema.json"


def validate_results(doc: dict) -> None:
    """Raise ValueError naming the first field of `doc` that breaks the published JSON schema."""
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(strict_json(doc)))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"results break {SCHEMA_FILE.name} at {where}: {error.message}")


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import sklearn
    import torch
    import torch_pruning

    versions = {"segdec_prune": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "torch_pruning": torch_pruning.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "scikit_learn": sklearn.__version__, "numpy": np.__version__}
    try:  # read, not imported: importing NNCF takes seconds, and OpenVINO's import sends telemetry
        versions.update(openvino=metadata.version("openvino"), nncf=metadata.version("nncf"))
    except metadata.PackageNotFoundError:
        pass
    return versions


def artifacts_of(run_dir: Path, name: str) -> list[tuple[str, str, Path]]:
    """(runtime, precision, path) of every artifact of one model that exists on disk."""
    from .stages import BUILDS

    candidates = [(rt, dt, artifact_path(run_dir, name, rt, dt))
                  for rt, dt in (("torch", "fp32"), ("onnxruntime", "fp32"), *BUILDS)]
    return [c for c in candidates if c[2].is_file()]


def evaluate_run(cfg: Config, on_step: Callable[[str], None] | None = None) -> dict:
    run_dir = cfg.run_dir
    dep = cfg.deploy
    profile_file = run_dir / "profiling_results.json"
    paths = model_paths(run_dir)
    names = [p.stem for p in paths]
    profile = json.loads(profile_file.read_text())["models"] if profile_file.is_file() else {}
    if any(profile.get(p.stem, {}).get("file_bytes") != p.stat().st_size for p in paths):
        profile = profile_run(run_dir)["models"]  # missing or stale: profile again
    test_set = KSDD2Dataset(load_split(cfg.data.root, "test", preprocessing_for(cfg.data, cfg.train)))
    sample = test_set[0]["image"].numpy()
    records, skipped, opened = [], [], []
    for name in names:
        prof = profile.get(name, {})
        for runtime, precision, path in artifacts_of(run_dir, name):
            if on_step:
                on_step(f"{name} {runtime} {precision}")
            try:
                rt, info = open_runtime(path, threads=dep.threads)
            except Exception as exc:  # e.g. an engine on a machine without TensorRT, an IR without OpenVINO
                skipped.append({"model": name, "runtime": runtime, "dtype": precision, "reason": str(exc)})
                continue
            if info.threshold is None and onnx_path(run_dir, name).is_file():
                # A checkpoint from before thresholds were stored: its export computed one on the
                # validation split for the same weights; use that, so every runtime of a model decides alike.
                info.threshold = onnx_info(onnx_path(run_dir, name)).threshold
            t0 = time.perf_counter()
            preds = predict(rt, test_set, dep.throughput_batch, getattr(rt, "sync", None))
            metrics = evaluate_predictions(preds, test_set, info.decision_threshold)
            records.append({
                "model": name, "method": prof.get("method"), "ratio": prof.get("ratio"),
                "runtime": runtime, "dtype": precision, "artifact": str(path), "artifact_bytes": path.stat().st_size,
                "device": getattr(rt, "device", "cpu") if runtime not in CPU_RUNTIMES + ("torch",) else
                platform.processor() or platform.machine(),
                "threads": dep.threads,
                **{k: prof.get(k) for k in ("widths", "parameters", "macs", "param_reduction", "mac_reduction", "budget")},
                **metrics, "threshold_source": info.threshold_source, "int8": info.metadata.get("int8"),
                **preds.throughput(), "eval_seconds": time.perf_counter() - t0,
            })
            opened.append(rt)
    _add_latency(records, opened, sample, dep.warmup, dep.runs, on_step)
    for runtime, reason in _unavailable().items():
        skipped.append({"runtime": runtime, "reason": reason})
    _add_predicted_latency(records, cfg)
    _add_speedups(records)
    result = {"schema_version": SCHEMA_VERSION, "run": str(run_dir), "data": cfg.data.root, "split": "test",
              "input_size": [cfg.data.input_height, cfg.data.input_width], "profiling": str(profile_file),
              "libraries": library_versions(), "records": records, "skipped": skipped}
    validate_results(result)  # a file that breaks its own schema is a bug here, not the reader's problem
    write_json(result, run_dir / RESULTS_FILE)
    return result


def _add_speedups(records: list[dict]) -> None:
    """speedup_vs_baseline (same runtime and dtype) and speedup_vs_onnxruntime_fp32 (CPU runtimes
    against the baseline as trained, in ONNX Runtime FP32: same machine, same threads)."""
    base = {(r["runtime"], r["dtype"]): r["latency_ms_median"] for r in records if r["model"] == "baseline_best"}
    trained = base.get(("onnxruntime", "fp32"))
    for r in records:
        ref = base.get((r["runtime"], r["dtype"]))
        r["speedup_vs_baseline"] = ref / r["latency_ms_median"] if ref else None
        cpu = r["runtime"] in CPU_RUNTIMES
        r["speedup_vs_onnxruntime_fp32"] = trained / r["latency_ms_median"] if trained and cpu else None


def pareto_front(records: list[dict], runtime: str | Sequence[str] | None = CPU_RUNTIMES) -> list[dict]:
    """The records no other beats on both test AP and batch-1 latency, fastest first.

    `runtime` restricts the candidates (default: the CPU deployment runtimes, ONNX Runtime and
    OpenVINO, timed side by side on the same machine); with none of them present, every record competes.
    """
    allowed = (runtime,) if isinstance(runtime, str) else tuple(runtime or ())
    rows = [r for r in records if r.get("ap") is not None and r.get("latency_ms_median")]
    rows = [r for r in rows if r["runtime"] in allowed] or rows
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r["latency_ms_median"], -r["ap"])):
        if r["ap"] > best:
            front.append(r)
            best = r["ap"]
    return front


def ship_rows(records: list[dict]) -> list[dict]:
    """"Which model to ship": the baseline as trained (ONNX Runtime FP32, else the front's runtime
    in FP32), then the Pareto front (empty: nothing to rank)."""
    front = pareto_front(records)
    if not front:
        return []
    bases = [r for r in records if r["model"] == "baseline_best"]
    base = [r for r in bases if (r["runtime"], r["dtype"]) == ("onnxruntime", "fp32")] or \
        [r for r in bases if r["runtime"] == front[0]["runtime"] and r["dtype"] == "fp32"]
    return base[:1] + [r for r in front if r not in base[:1]]


def _add_latency(records: list[dict], runtimes: list, sample, warmup: int, runs: int,
                 on_step: Callable[[str], None] | None) -> None:
    """Latency of every model x runtime of one device, interleaved (all CPU runtimes together; a GPU
    runtime on its own), so the ratios between models and between runtimes are like for like."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        on_cpu = r["runtime"] in CPU_RUNTIMES or str(getattr(runtimes[i], "device", "cpu")) == "cpu"
        groups.setdefault("cpu" if on_cpu else r["runtime"], []).append(i)
    for device, idx in groups.items():
        if on_step:
            on_step(f"latency {device} ({len(idx)} model x runtime records, interleaved)")
        rts = [runtimes[i] for i in idx]
        summaries = interleaved_latency(rts, sample, warmup, runs, syncs=[getattr(rt, "sync", None) for rt in rts])
        for i, summary in zip(idx, summaries):
            records[i].update(summary)


def _add_predicted_latency(records: list[dict], cfg: Config) -> None:
    """What the run's latency table (when one matches the runtime, dtype, threads and machine)
    predicted beside what was measured, so the table's error is on record for every model."""
    from .latency_table import cached_for
    from .model import Widths

    base = next((r for r in records if r["model"] == "baseline_best" and r.get("widths")), None)
    tables: dict[tuple[str, str], object] = {}
    for r in records:
        rt = (r["runtime"], r["dtype"])
        if rt not in tables:
            tables[rt] = base and cached_for(cfg, *rt, Widths.from_dict(base["widths"]))
        table = tables[rt]
        predicted = table.predict(Widths.from_dict(r["widths"])) if table and r.get("widths") else None
        r["predicted_latency_ms"] = predicted
        r["latency_prediction_error"] = r["latency_ms_median"] / predicted - 1 if predicted else None


def _unavailable() -> dict[str, str]:
    from .runtimes.base import OPTIONAL_RUNTIMES, unavailable_reason

    reasons = {rt: unavailable_reason(rt) for rt in OPTIONAL_RUNTIMES}
    return {k: v for k, v in reasons.items() if v}


def evaluate_time_line(records: list[dict], seconds: float) -> str:
    """Where evaluate's time went: the test passes per runtime and dtype (each is also the throughput
    timing), and the rest (loading, the interleaved latency runs)."""
    passes: dict[str, float] = {}
    for r in records:
        key = f"{r['runtime']} {r['dtype']}"
        passes[key] = passes.get(key, 0.0) + float(r.get("eval_seconds") or 0.0)
    total = sum(passes.values())
    parts = ", ".join(f"{k} {v:.0f}" for k, v in passes.items())
    return f"test passes {total:.0f} s ({parts}), the rest {max(seconds - total, 0):.0f} s (loading, latency)"
