"""Does pruning make the shipped model faster? Measured side by side, in one run.

Baseline and one method's r20/r40/r60 models in PyTorch, ONNX Runtime FP32 and INT8, and OpenVINO
FP32 and INT8 where built (CPU, fixed threads): batch-1 latency (interleaved rounds across all
models), speedup versus the baseline in the same runtime next to the MAC reduction, and test AP
per runtime. (benchmarks/cpu_runtimes.py times the CPU runtimes on random weights at two sizes.) Needs a run that has been trained, pruned,
exported, calibrated and built (see docs/getting-started.md).

    python benchmarks/runtimes.py --config configs/demo.toml --method naive_l1
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from segdec_prune.artifacts import write_json
from segdec_prune.checkpoint import load_checkpoint
from segdec_prune.config import load_config
from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for
from segdec_prune.deploy import onnx_path, open_runtime, openvino_path
from segdec_prune.evaluation import classification_metrics, interleaved_latency, predict
from segdec_prune.profiling import macs_and_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--method", default="naive_l1")
    ap.add_argument("--ratios", nargs="*", type=int, default=[20, 40, 60])
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    console = Console()
    cfg = load_config(args.config)
    run, dep = cfg.run_dir, cfg.deploy
    test_set = KSDD2Dataset(load_split(cfg.data.root, "test", preprocessing_for(cfg.data, cfg.train)))
    one = test_set[0]["image"].numpy()
    names = ["baseline_best"] + [f"{args.method}_r{r}" for r in args.ratios]
    artifacts = {"torch": lambda n: run / "models" / f"{n}.pth",
                 "onnxruntime-fp32": lambda n: onnx_path(run, n),
                 "onnxruntime-int8": lambda n: onnx_path(run, n, "int8"),
                 "openvino-fp32": lambda n: openvino_path(run, n, "fp32"),
                 "openvino-int8": lambda n: openvino_path(run, n, "int8")}
    rows, runtimes = [], []
    for name in names:
        for runtime, where in artifacts.items():
            path = where(name)
            if not path.is_file():
                console.print(f"[yellow]missing {path}: skipped[/]")
                continue
            rt, info = open_runtime(path, threads=dep.threads)
            preds = predict(rt, test_set, batch_size=dep.throughput_batch)
            row = {"model": name, "runtime": runtime, "ap": classification_metrics(preds.labels, preds.scores)["ap"],
                   **preds.throughput()}
            if runtime == "torch":
                row["macs"] = macs_and_params(load_checkpoint(path).model, info.spec.height, info.spec.width)[0]
            rows.append(row)
            runtimes.append(rt)
    # One interleaved measurement of every model x runtime: drift in a noisy machine's speed hits all alike.
    for row, summary in zip(rows, interleaved_latency(runtimes, one, dep.warmup, dep.runs)):
        row.update(summary)
        console.print(f"{row['model']:>16} {row['runtime']:>17}: {row['latency_ms_median']:.2f} ms, AP {row['ap']:.4f}")
    macs = {r["model"]: r["macs"] for r in rows if "macs" in r}
    base = {r["runtime"]: r["latency_ms_median"] for r in rows if r["model"] == "baseline_best"}
    table = Table(Column("model", no_wrap=True), Column("runtime", no_wrap=True), "MAC red.", "median ms", "p90 ms", "speedup", "vs ORT FP32", "img/s", "test AP",
                  title=f"batch 1, {dep.threads} threads, {platform.processor() or platform.machine()} ({os.cpu_count()} cores)")
    for r in rows:
        r["mac_reduction"] = 1 - macs[r["model"]] / macs["baseline_best"] if r["model"] in macs else None
        r["speedup"] = base[r["runtime"]] / r["latency_ms_median"] if r["runtime"] in base else None
        trained = base.get("onnxruntime-fp32")  # the baseline as trained, the figure a user asks for
        r["speedup_vs_onnxruntime_fp32"] = trained / r["latency_ms_median"] if trained and r["runtime"] != "torch" else None
        table.add_row(r["model"], r["runtime"], f"{r['mac_reduction']:.1%}" if r["mac_reduction"] is not None else "-",
                      f"{r['latency_ms_median']:.2f}", f"{r['latency_ms_p90']:.2f}",
                      f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                      f"{r['speedup_vs_onnxruntime_fp32']:.2f}x" if r["speedup_vs_onnxruntime_fp32"] else "-",
                      f"{r['throughput_ips']:.1f}", f"{r['ap']:.4f}")
    console.print(table)
    for rt in ("onnxruntime", "openvino"):
        fp32 = {r["model"]: r for r in rows if r["runtime"] == f"{rt}-fp32"}
        for r in rows:
            if r["runtime"] == f"{rt}-int8" and r["model"] in fp32:
                f = fp32[r["model"]]
                console.print(f"{r['model']} {rt}: INT8 vs FP32 speedup {f['latency_ms_median'] / r['latency_ms_median']:.2f}x, "
                              f"AP change {100 * (r['ap'] - f['ap']):+.2f} points")
    out = Path(args.output or run / "runtime_benchmark.json")
    write_json({"threads": dep.threads, "cpu": platform.processor() or platform.machine(), "rows": rows}, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
