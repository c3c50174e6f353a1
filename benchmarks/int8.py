"""Does INT8 keep the FP32 model's AP, and is it still fast? Before and after, side by side.

Per model of a built run: FP32, the plain INT8 the project shipped before the search (MinMax,
every convolution INT8; rebuilt here in a temporary folder) and the INT8 the search chose
(`onnx/{model}_int8.onnx`, with its choice read from the file). Test AP of each, INT8 - FP32 in
points, and batch-1 latency of all three timed in interleaved rounds in one process, so the
FP32/INT8 speed ratios are like for like. Needs a run that has been built (`segdec-prune run`).

    python benchmarks/int8.py --config configs/demo.toml [--models baseline_best ours_c4_m20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from common import gap_summary, paired_ap_interval
from segdec_prune.artifacts import write_json
from segdec_prune.calibration import calibration_path, load_calibration
from segdec_prune.config import load_config
from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for
from segdec_prune.deploy import model_paths, onnx_info, onnx_path
from segdec_prune.evaluation import classification_metrics, interleaved_latency, predict
from segdec_prune.runtimes.onnxruntime_runtime import OnnxRuntime, quantize_int8

VARIANTS = ("fp32", "int8 before", "int8 chosen")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--models", nargs="*", help="default: every model of the run")
    ap.add_argument("--output", default=None, help="JSON file (default RUN/int8_benchmark.json)")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 160))  # the table is wide; a file or CI log keeps it whole
    cfg = load_config(args.config)
    run, dep = cfg.run_dir, cfg.deploy
    names = args.models or [p.stem for p in model_paths(run)]
    test_set = KSDD2Dataset(load_split(cfg.data.root, "test", preprocessing_for(cfg.data, cfg.train)))
    calib = load_calibration(calibration_path(cfg))
    rows, runtimes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            before = quantize_int8(onnx_path(run, name), Path(tmp) / f"{name}_int8.onnx", calib, dep.int8_op_types)
            choice = onnx_info(onnx_path(run, name, "int8")).metadata.get("int8") or {}
            for variant, path in zip(VARIANTS, (onnx_path(run, name), before, onnx_path(run, name, "int8"))):
                rt = OnnxRuntime(path, dep.threads, "fp32" if variant == "fp32" else "int8")
                scores = predict(rt, test_set, dep.throughput_batch).scores
                if variant == "fp32":  # VARIANTS[0]: what the INT8 variants are compared with
                    ref = scores
                rows.append({"model": name, "variant": variant, "ap": classification_metrics(test_set.labels, scores)["ap"],
                             "gap_interval": paired_ap_interval(test_set.labels, scores, ref) if variant != "fp32" else None,
                             **({"choice": {k: choice.get(k) for k in ("calibration", "fp32_layers", "val_ap",
                                                                        "val_ap_fp32")}} if variant == "int8 chosen" else {})})
                runtimes.append(rt)
            console.print(f"{name}: scored ({choice.get('calibration')}, FP32 {choice.get('fp32_layers')})")
        # One interleaved measurement of every model x variant: drift hits all alike.
        for row, summary in zip(rows, interleaved_latency(runtimes, test_set[0]["image"].numpy(), dep.warmup, dep.runs)):
            row.update(summary)
    table = Table(Column("model", no_wrap=True), "FP32 AP", "ms", "INT8 before AP (pts)", "ms", "x", "chosen AP (pts)", "ms",
                  "x", Column("chosen", no_wrap=True), title=f"test AP and batch-1 ms, {dep.threads} threads, interleaved")
    by = {(r["model"], r["variant"]): r for r in rows}
    for name in names:
        f, b, c = (by[name, v] for v in VARIANTS)
        fms = f["latency_ms_median"]
        table.add_row(name, f"{f['ap']:.3f}", f"{fms:.2f}",
                      f"{b['ap']:.3f} ({100 * (b['ap'] - f['ap']):+.1f})", f"{b['latency_ms_median']:.2f}",
                      f"{fms / b['latency_ms_median']:.2f}", f"{c['ap']:.3f} ({100 * (c['ap'] - f['ap']):+.1f})",
                      f"{c['latency_ms_median']:.2f}", f"{fms / c['latency_ms_median']:.2f}",
                      f"{c['choice']['calibration']}; FP32: {', '.join(c['choice']['fp32_layers'] or []) or 'none'}")
    console.print(table)
    for v in VARIANTS[1:]:
        gaps = [100 * (by[n, v]["ap"] - by[n, "fp32"]["ap"]) for n in names]
        speed = [by[n, "fp32"]["latency_ms_median"] / by[n, v]["latency_ms_median"] for n in names]
        apart = sum(lo > 0 or hi < 0 for lo, hi in (by[n, v]["gap_interval"] for n in names))
        console.print(f"{v}: AP - FP32 {gap_summary(gaps)}, told apart from no gap (95 % paired bootstrap): "
                      f"{apart}/{len(names)}; FP32/INT8 speed {min(speed):.2f}-"
                      f"{max(speed):.2f}x, >= 2x: {sum(s >= 2 for s in speed)}/{len(speed)}")
    out = Path(args.output) if args.output else run / "int8_benchmark.json"
    write_json({"config": str(args.config), "threads": dep.threads, "rows": rows}, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
