"""Every CPU runtime x precision side by side: how much faster a shipped model is than the baseline
as trained (ONNX Runtime FP32), at the run's input size and at KSDD2's 640x232.

Random weights (latency does not depend on them): the baseline's widths and those of the run's
models named with --models (read from their checkpoints). Each network is exported once and run
as ONNX Runtime FP32, ONNX Runtime INT8 (QDQ, U8S8), OpenVINO FP32, OpenVINO reading that same
QDQ file, OpenVINO reading the QDQ file of its `inputs:` candidates (Q/DQ only where convolutions
read; what the demo's OpenVINO INT8 search keeps), and OpenVINO INT8 by NNCF (every INT8 calibrated
on random images: fine for timing, not for accuracy). All runtimes of one input size are timed in one interleaved measurement.

    python benchmarks/cpu_runtimes.py --config configs/demo.toml --models ours_c4_m20
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from segdec_prune.artifacts import write_json
from segdec_prune.checkpoint import load_checkpoint
from segdec_prune.config import load_config
from segdec_prune.evaluation import interleaved_latency
from segdec_prune.export import export_onnx
from segdec_prune.model import SegDecNet, Widths
from segdec_prune.runtimes.onnxruntime_runtime import OnnxRuntime, quantize_int8
from segdec_prune.runtimes.openvino_runtime import OpenVinoRuntime, convert, quantize_nncf, unavailable_reason

KINDS = ("ort-fp32", "ort-int8", "ov-fp32", "ov-int8-qdq", "ov-int8-inputs", "ov-int8-nncf")


def runtimes_for(widths: Widths, channels: int, h: int, w: int, threads: int, folder: Path) -> dict:
    """The six runtimes of one random-weight network at h x w."""
    import onnx

    fp32 = folder / f"net{len(list(folder.glob('*.onnx')))}.onnx"
    onnx.save_model(export_onnx(SegDecNet(channels, widths), h, w), str(fp32))
    calib = np.random.default_rng(0).random((8, channels, h, w), dtype=np.float32)
    int8 = quantize_int8(fp32, fp32.with_name(fp32.stem + "_int8.onnx"), calib)
    inputs = quantize_int8(fp32, fp32.with_name(fp32.stem + "_inputs.onnx"), calib, conv_outputs=False,
                           input_range=(0.0, 1.0))
    return {"ort-fp32": OnnxRuntime(fp32, threads), "ort-int8": OnnxRuntime(int8, threads, "int8"),
            "ov-fp32": OpenVinoRuntime(convert(fp32), threads), "ov-int8-qdq": OpenVinoRuntime(convert(int8), threads, "int8"),
            "ov-int8-inputs": OpenVinoRuntime(convert(inputs), threads, "int8"),
            "ov-int8-nncf": OpenVinoRuntime(quantize_nncf(convert(fp32), calib), threads, "int8")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--models", nargs="*", default=["ours_c4_m20"], help="the run's models whose widths to time")
    ap.add_argument("--sizes", nargs="*", default=None, help="HxW; default: the config's size and 640x232")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    console = Console(width=max(Console().width, 150))
    if reason := unavailable_reason():
        raise SystemExit(f"needs OpenVINO: {reason}")
    cfg = load_config(args.config)
    threads, c = cfg.deploy.threads, cfg.data.channels
    widths = {"baseline": Widths()}
    for name in args.models:
        path = cfg.run_dir / "models" / f"{name}.pth"
        if not path.is_file():
            raise SystemExit(f"no checkpoint {path}: run the pipeline first, or leave --models out")
        widths[name] = load_checkpoint(path).model.widths
    sizes = [tuple(map(int, s.lower().split("x"))) for s in args.sizes] if args.sizes else \
        [(cfg.data.input_height, cfg.data.input_width), (640, 232)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in sizes:
            built = [(name, kind, rt) for name, wd in widths.items()
                     for kind, rt in runtimes_for(wd, c, h, w, threads, Path(tmp)).items()]
            x = np.random.default_rng(1).random((c, h, w), dtype=np.float32)
            summaries = interleaved_latency([rt for *_, rt in built], x, cfg.deploy.warmup, args.runs)
            ms = {(name, kind): s["latency_ms_median"] for (name, kind, _), s in zip(built, summaries)}
            trained = ms["baseline", "ort-fp32"]
            for (name, kind), t in ms.items():
                rows.append({"size": f"{h}x{w}", "model": name, "runtime": kind, "latency_ms_median": t,
                             "speedup_vs_onnxruntime_fp32": trained / t,
                             "ov_int8_vs_ort_int8": ms[name, "ort-int8"] / t if kind.startswith("ov-int8") else None})
    table = Table("size", "model", *KINDS, title=f"batch-1 median ms (x = speed-up vs the baseline in ONNX Runtime FP32); "
                  f"{threads} threads, {platform.processor() or platform.machine()} ({os.cpu_count()} cores)")
    for size in dict.fromkeys(r["size"] for r in rows):
        for name in widths:
            cells = {r["runtime"]: r for r in rows if r["size"] == size and r["model"] == name}
            table.add_row(size, name, *(f"{cells[k]['latency_ms_median']:.2f} ({cells[k]['speedup_vs_onnxruntime_fp32']:.1f}x)"
                                        for k in KINDS))
    console.print(table)
    for r in rows:
        if r["ov_int8_vs_ort_int8"]:
            console.print(f"{r['size']} {r['model']}: {r['runtime']} is {r['ov_int8_vs_ort_int8']:.2f}x ONNX Runtime INT8")
    out = Path(args.output or cfg.run_dir / "cpu_runtime_benchmark.json")
    write_json({"threads": threads, "cpu": platform.processor() or platform.machine(), "runs": args.runs, "rows": rows}, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
