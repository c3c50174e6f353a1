"""Compare the pruning criteria side by side on one trained baseline.

For every method (plus the `random` control) at every ratio and for several seeds (the seed
drives calibration sampling, the random control and fine-tuning), measure test AP before and
after fine-tuning and the MAC reduction; print mean, spread and each method's margin over
random; write the table as JSON.

    python benchmarks/criteria.py --config configs/demo.toml --seeds 3 --output runs/demo/criteria_benchmark.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import Bench, mean_sd
from segdec_prune.artifacts import write_json
from segdec_prune.config import load_config
from segdec_prune.profiling import macs_and_params
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.plan import criterion_options
from segdec_prune.pruning.prune import prune_model
from segdec_prune.pruning.workflow import RecoveryData, calibration_batches, prune_and_recover


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=None, help="default: prune.methods + random")
    ap.add_argument("--ratios", nargs="*", type=float, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    console = Console()
    cfg = load_config(args.config)
    methods = args.methods or [*cfg.prune.methods, "random"]
    ratios = args.ratios or cfg.prune.ratios
    epochs = cfg.prune.finetune_epochs if args.finetune_epochs is None else args.finetune_epochs
    bench = Bench(cfg)
    baseline, spec = bench.baseline, bench.baseline.input_spec
    train_set, val_set = bench.sets
    base_macs, _ = macs_and_params(baseline.model, spec.height, spec.width)
    base_ap = bench.test_metrics(baseline.model)["ap"]
    teacher = bench.teacher if cfg.prune.distill and epochs > 0 else None
    console.print(f"baseline test AP {base_ap:.4f}, {base_macs / 1e9:.3f} GMACs at {spec.height}x{spec.width}; "
                  f"recipe: {epochs} epochs, distill {cfg.prune.distill}, steps {cfg.prune.steps}")
    rows: dict[tuple[str, float], dict] = {}
    for seed in range(args.seeds):
        scfg = load_config(args.config, [f"prune.seed={seed}", f"train.seed={seed}"])
        batches = calibration_batches(train_set, cfg.prune.calibration_batches, cfg.train.batch_size, seed)
        for name in methods:
            method = get_method(name)
            for ratio in ratios:
                t0 = time.perf_counter()
                row = rows.setdefault((name, ratio), {"before": [], "after": [], "dice": [], "seconds": []})

                def measure(pruned) -> None:  # right after pruning, before any fine-tuning
                    row["macs"], _ = macs_and_params(pruned, spec.height, spec.width)
                    row["before"].append(bench.test_metrics(pruned)["ap"])

                if epochs > 0:  # prune once: the recovery measures the pruned model on its way
                    data = RecoveryData(train_set, val_set, batches, teacher)
                    out = prune_and_recover(baseline.model, method, ratio, scfg, data, epochs, on_pruned=measure)
                    m = bench.test_metrics(out.model)
                    row["after"].append(m["ap"])
                    row["dice"].append(m["dice"])
                else:
                    measure(prune_model(baseline.model, method, ratio, batches, (spec.height, spec.width),
                                        cfg.prune.round_to, cfg.prune.include_extractor, criterion_options(cfg),
                                        seed)[0])
                row["seconds"].append(time.perf_counter() - t0)
                console.print(f"seed {seed} {name} r{ratio:.2f}: AP {row['before'][-1]:.4f} -> "
                              f"{row['after'][-1] if row['after'] else float('nan'):.4f} ({row['seconds'][-1]:.0f} s)")

    table = Table("method", "ratio", "MAC red.", "AP pruned", "AP fine-tuned", "Dice", "margin vs random",
                  title=f"criteria on {cfg.data.root} (test AP, mean ± sd over {args.seeds} seeds; baseline {base_ap:.4f})")
    records = []
    for (name, ratio), row in rows.items():
        b_mean, b_sd = mean_sd(row["before"])
        a_mean, a_sd = mean_sd(row["after"])
        rnd = rows.get(("random", ratio))
        key = "after" if row["after"] else "before"
        margin = mean_sd(row[key])[0] - mean_sd(rnd[key])[0] if rnd else float("nan")
        red = 1 - row["macs"] / base_macs
        d_mean, d_sd = mean_sd(row["dice"])
        records.append({"method": name, "ratio": ratio, "mac_reduction": red, "macs": row["macs"],
                        "ap_pruned_mean": b_mean, "ap_pruned_sd": b_sd, "ap_finetuned_mean": a_mean,
                        "ap_finetuned_sd": a_sd, "dice_mean": d_mean, "dice_sd": d_sd, "margin_over_random": margin,
                        "seeds": args.seeds,
                        "ap_pruned": row["before"], "ap_finetuned": row["after"], "dice": row["dice"]})
        table.add_row(name, f"{ratio:.2f}", f"{red:.1%}", f"{b_mean:.4f} ± {b_sd:.4f}", f"{a_mean:.4f} ± {a_sd:.4f}",
                      f"{d_mean:.3f} ± {d_sd:.3f}", f"{margin:+.4f}")
    console.print(table)
    out = Path(args.output or cfg.run_dir / "criteria_benchmark.json")
    write_json({"config": args.config, "baseline_test_ap": base_ap, "baseline_macs": base_macs,
                "finetune_epochs": epochs, "recipe": {k: v for k, v in vars(cfg.prune).items()
                                                      if k.startswith(("finetune_", "distill", "steps"))},
                "rows": records}, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
