"""Budgets side by side: uniform vs global allocation at the same MACs, and latency targets.

For each seed x method: prune the run's baseline (a) uniformly, at the ratio whose widths keep at
most F of the baseline's MACs, and (b) by global allocation to F (`--target-macs F`), then for a
latency target T (a share of the baseline's measured latency) planned (c) as `prune` plans it
(prune.align, the latency table with its channel step) and (d) without alignment and with a
smooth latency model (align 1, the table's step ignored). Every model gets the config's
fine-tuning recipe, then test AP and Dice; all models are exported to ONNX and timed together,
interleaved, in ONNX Runtime (deploy.threads, batch 1). Prints mean ± sd over seeds, the MAC
and latency prediction errors and the share of the ideal speedup (baseline MACs / model MACs)
each reaches; with --paper-size the same widths (random weights) are also timed at KSDD2's
640x232, where fixed per-layer overheads weigh less. Writes runs/<name>/budget_benchmark.json.

    python benchmarks/budget.py --config configs/demo.toml --seeds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from common import Bench, fmt, mean_sd
from segdec_prune.artifacts import write_json
from segdec_prune.config import load_config
from segdec_prune.evaluation import interleaved_latency
from segdec_prune.export import export_onnx
from segdec_prune.model import Widths, conv_macs
from segdec_prune.profiling import macs_and_params
from segdec_prune.pruning.allocate import Budget
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.prune import target_widths
from segdec_prune.pruning.workflow import RecoveryData, calibration_batches, prune_and_recover
from segdec_prune.runtimes.onnxruntime_runtime import OnnxRuntime


def uniform_ratio(widths: Widths, share: float, channels: int, height: int, width: int) -> float:
    """The smallest uniform ratio whose widths keep at most `share` of the MACs (bisection)."""
    base = conv_macs(widths, channels, height, width)
    lo, hi = 0.0, 0.99
    for _ in range(40):
        mid = (lo + hi) / 2
        if conv_macs(target_widths(widths, mid), channels, height, width) / base > share:
            lo = mid
        else:
            hi = mid
    return hi


def paper_speedups(rows: dict, base_model, channels: int, tmp: Path, cfg, console: Console) -> None:
    """Each row's last-seed widths (random weights) timed at 640x232 beside the baseline: speedup / ideal."""
    from segdec_prune.model import SegDecNet
    from segdec_prune.profiling import PAPER_SIZE

    models = [base_model.widths, *(Widths.from_dict(r["widths"]) for r in rows.values())]
    rts = []
    for i, w in enumerate(models):
        path = tmp / f"paper_{i}.onnx"
        path.write_bytes(export_onnx(SegDecNet(channels, w), *PAPER_SIZE).SerializeToString())
        rts.append(OnnxRuntime(path, cfg.deploy.threads))
    console.print(f"timing {len(rts)} architectures at {PAPER_SIZE[0]}x{PAPER_SIZE[1]}, interleaved ...")
    sample = np.random.default_rng(0).random((channels, *PAPER_SIZE), dtype=np.float32)
    timed = interleaved_latency(rts, sample, 2, 10)
    base_ms, base_macs = timed[0]["latency_ms_median"], conv_macs(models[0], channels, *PAPER_SIZE)
    for row, w, t in zip(rows.values(), models[1:], timed[1:]):
        speedup, ideal = base_ms / t["latency_ms_median"], base_macs / conv_macs(w, channels, *PAPER_SIZE)
        row["paper"] = {"baseline_ms": base_ms, "ms": t["latency_ms_median"], "speedup": speedup, "ideal": ideal,
                        "share_of_ideal": speedup / ideal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--methods", nargs="*", default=["ours_c4", "naive_l1"])
    ap.add_argument("--macs", nargs="*", type=float, default=[0.4, 0.2], help="shares of the baseline's MACs kept")
    ap.add_argument("--latency-share", type=float, default=0.3, help="latency target / baseline latency (0: skip)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. prune.min_keep=0.25")
    ap.add_argument("--plans", nargs="*", default=["uniform", "global", "latency"], choices=["uniform", "global", "latency"],
                    help="which rows to run (uniform and global at every --macs share; latency: both alignments)")
    ap.add_argument("--paper-size", action="store_true", help="also time every architecture at 640x232")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    console = Console(width=170)
    cfg = load_config(args.config, args.set)
    bench = Bench(cfg)
    base_model, spec = bench.baseline.model, bench.baseline.input_spec
    size = (spec.height, spec.width)
    train_set, val_set = bench.sets
    table, reused = bench.latency_table("onnxruntime", "fp32")
    smooth = dataclasses.replace(table, step=1)
    base = bench.test_metrics(base_model)
    base_macs = macs_and_params(base_model, *size)[0]
    target_ms = args.latency_share * table.baseline_ms
    console.print(f"baseline test AP {base['ap']:.4f}, Dice {base['dice']:.4f}; latency table "
                  f"{'reused' if reused else 'measured'}: baseline {table.baseline_ms:.2f} ms, channel step {table.step}")
    jobs: list[tuple[str, object, list[str], object]] = []  # (label, target, overrides, table to plan with)
    for share in args.macs:
        r = uniform_ratio(base_model.widths, share, spec.channels, *size)
        jobs += [(f"uniform m{share * 100:.0f} (r={r:.3f})", r, [], table)] * ("uniform" in args.plans)
        jobs += [(f"global m{share * 100:.0f}", Budget("macs", share), [], table)] * ("global" in args.plans)
    if args.latency_share > 0 and "latency" in args.plans:
        jobs += [(f"latency {target_ms:.2f} ms, align {cfg.prune.align}", Budget("latency", target_ms), [], table),
                 (f"latency {target_ms:.2f} ms, align 1, smooth", Budget("latency", target_ms), ["prune.align=1"], smooth)]
    rows: dict[tuple[str, str], dict] = {}
    runtimes: list[tuple[tuple[str, str], OnnxRuntime]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            batches = calibration_batches(train_set, cfg.prune.calibration_batches, cfg.train.batch_size, seed)
            data = RecoveryData(train_set, val_set, batches, bench.teacher if cfg.prune.distill else None)
            for label, target, overrides, plan_table in jobs:
                scfg = load_config(args.config, [*args.set, *overrides, f"prune.seed={seed}", f"train.seed={seed}"])
                for mname in args.methods:
                    t0 = time.perf_counter()
                    out = prune_and_recover(base_model, get_method(mname), target, scfg, data,
                                            scfg.prune.finetune_epochs, table=plan_table)
                    m = bench.test_metrics(out.model)
                    path = Path(tmp) / f"{len(runtimes)}.onnx"
                    path.write_bytes(export_onnx(out.model, *size).SerializeToString())
                    runtimes.append(((label, mname), OnnxRuntime(path, cfg.deploy.threads)))
                    row = rows.setdefault((label, mname), {k: [] for k in ("ap", "dice", "macs", "predicted_ms")})
                    row.update(target=target, widths=out.model.widths.to_dict())
                    for key, value in (("ap", m["ap"]), ("dice", m["dice"]), ("macs", macs_and_params(out.model, *size)[0]),
                                       ("predicted_ms", out.plan["predicted_latency_ms"])):
                        row[key].append(value)
                    console.print(f"seed {seed} {label} {mname}: widths {out.model.widths.volume}, test AP {m['ap']:.4f}, "
                                  f"Dice {m['dice']:.4f}, MACs {row['macs'][-1] / base_macs:.1%}, predicted "
                                  f"{row['predicted_ms'][-1]:.2f} ms ({time.perf_counter() - t0:.0f} s)")
        base_path = Path(tmp) / "baseline.onnx"
        base_path.write_bytes(export_onnx(base_model, *size).SerializeToString())
        console.print(f"timing {len(runtimes) + 1} models, interleaved ...")
        sample = bench.test_set[0]["image"].numpy()
        timed = interleaved_latency([OnnxRuntime(base_path, cfg.deploy.threads), *(rt for _, rt in runtimes)], sample,
                                    cfg.deploy.warmup, cfg.deploy.runs)
        base_ms = timed[0]["latency_ms_median"]
        for ((label, mname), _), t in zip(runtimes, timed[1:]):
            rows[label, mname].setdefault("measured_ms", []).append(t["latency_ms_median"])
        if args.paper_size:
            paper_speedups(rows, base_model, spec.channels, Path(tmp), cfg, console)

    out_rows, view = [], Table("plan", "method", "test AP", "Dice", "MACs kept", "MAC err", "ms measured", "pred err",
                               "target err", "speedup / ideal", "at 640x232", title=f"budgets on {cfg.data.root} ({args.seeds} seeds; "
                               f"baseline AP {base['ap']:.4f}, Dice {base['dice']:.4f}, {base_ms:.2f} ms ORT FP32)")
    for (label, mname), row in rows.items():
        target = row["target"]
        macs = np.array(row["macs"], float)
        measured, predicted = np.array(row["measured_ms"]), np.array(row["predicted_ms"], float)
        speedup, ideal = base_ms / measured, base_macs / macs
        mac_err = macs / base_macs / target.value - 1 if isinstance(target, Budget) and target.kind == "macs" else None
        target_err = measured / target.value - 1 if isinstance(target, Budget) and target.kind == "latency" else None
        rec = {"plan": label, "method": mname, "seeds": args.seeds, "target": dataclasses.asdict(target)
               if isinstance(target, Budget) else {"ratio": target}, "widths_last_seed": row["widths"],
               "test_ap": row["ap"], "dice": row["dice"], "mac_fraction": (macs / base_macs).tolist(),
               "measured_ms": measured.tolist(), "predicted_ms": predicted.tolist(),
               "prediction_error": (measured / predicted - 1).tolist(), "speedup": speedup.tolist(),
               "ideal_speedup": ideal.tolist(), "share_of_ideal": (speedup / ideal).tolist(),
               "mac_error": None if mac_err is None else mac_err.tolist(),
               "target_error": None if target_err is None else target_err.tolist(), "paper_size": row.get("paper")}
        out_rows.append(rec)
        view.add_row(label, mname, fmt(row["ap"]), fmt(row["dice"]), f"{macs.mean() / base_macs:.1%}",
                     "-" if mac_err is None else f"{mac_err.mean():+.1%}", f"{measured.mean():.2f}",
                     f"{(measured / predicted - 1).mean():+.1%}", "-" if target_err is None else f"{target_err.mean():+.1%}",
                     f"{speedup.mean():.2f}x / {ideal.mean():.2f}x = {(speedup / ideal).mean():.2f}",
                     f"{row['paper']['share_of_ideal']:.2f}" if "paper" in row else "-")
    console.print(view)
    out_path = Path(args.output or cfg.run_dir / "budget_benchmark.json")
    write_json({"config": args.config, "overrides": args.set, "data": cfg.data.root, "seeds": args.seeds,
                "baseline_test_ap": base["ap"], "baseline_dice": base["dice"], "baseline_ms": base_ms,
                "baseline_macs": base_macs, "latency_target_ms": target_ms, "latency_table": table.path,
                "channel_step": table.step, "rows": out_rows, "ap_mean_sd": {f"{r['plan']}|{r['method']}": mean_sd(r["test_ap"])
                                                                              for r in out_rows}}, out_path)
    console.print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
