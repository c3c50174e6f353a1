"""Compare the pruning criteria side by side on one trained baseline.

For every method (plus the `random` control) at every ratio and for several seeds (the seed
drives calibration sampling, the random control and fine-tuning), measure test AP before and
after fine-tuning and the MAC reduction; print mean, spread and each method's margin over
random; write the table as JSON.

    python benchmarks/criteria.py --config configs/demo.toml --seeds 3 --output runs/demo/criteria_benchmark.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from segdec_prune.artifacts import write_json
from segdec_prune.checkpoint import load_checkpoint
from segdec_prune.config import load_config
from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for, train_val_datasets
from segdec_prune.evaluation import classification_metrics, predict
from segdec_prune.profiling import macs_and_params
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.prune import prune_model
from segdec_prune.pruning.workflow import calibration_batches, finetune_config
from segdec_prune.runtimes import TorchRuntime
from segdec_prune.training import train


def heldout_ap(model, test_set: KSDD2Dataset) -> float:
    preds = predict(TorchRuntime(model, "cpu"), test_set, batch_size=16)
    return classification_metrics(preds.labels, preds.scores)["ap"]


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
    baseline = load_checkpoint(cfg.run_dir / "models" / "baseline_best.pth")
    spec = baseline.input_spec
    pre = preprocessing_for(cfg.data, cfg.train)
    train_set, val_set = train_val_datasets(cfg.data, pre)
    test_set = KSDD2Dataset(load_split(cfg.data.root, "test", pre))
    base_macs, _ = macs_and_params(baseline.model, spec.height, spec.width)
    base_ap = heldout_ap(baseline.model, test_set)
    console.print(f"baseline test AP {base_ap:.4f}, {base_macs / 1e9:.3f} GMACs at {spec.height}x{spec.width}")
    rows: dict[tuple[str, float], dict] = {}
    scratch = Path(cfg.run.dir) / f"{cfg.run.name}_criteria_bench"
    for seed in range(args.seeds):
        batches = calibration_batches(train_set, cfg.prune.calibration_batches, cfg.train.batch_size, seed)
        ft_cfg = dataclasses.replace(finetune_config(cfg, max(epochs, 1)), seed=seed)
        for name in methods:
            method = get_method(name)
            for ratio in ratios:
                t0 = time.perf_counter()
                pruned, _ = prune_model(baseline.model, method, ratio, batches, (spec.height, spec.width),
                                     cfg.prune.round_to, cfg.prune.include_extractor,
                                     {"lam": cfg.prune.c3_lambda, "delta": cfg.train.delta}, seed)
                row = rows.setdefault((name, ratio), {"before": [], "after": [], "seconds": []})
                row["macs"], _ = macs_and_params(pruned, spec.height, spec.width)
                row["before"].append(heldout_ap(pruned, test_set))
                if epochs > 0:
                    train(pruned, train_set, val_set, ft_cfg, scratch / f"{name}_{ratio}_{seed}.pth", spec,
                          show_progress=False)
                    row["after"].append(heldout_ap(pruned, test_set))
                row["seconds"].append(time.perf_counter() - t0)
                console.print(f"seed {seed} {name} r{ratio:.2f}: AP {row['before'][-1]:.4f} -> "
                              f"{row['after'][-1] if row['after'] else float('nan'):.4f} ({row['seconds'][-1]:.0f} s)")

    def stats(xs: list[float]) -> tuple[float, float]:
        return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (float("nan"), 0.0)

    table = Table("method", "ratio", "MAC red.", "AP pruned", "AP fine-tuned", "margin vs random",
                  title=f"criteria on {cfg.data.root} (test AP, mean ± sd over {args.seeds} seeds; baseline {base_ap:.4f})")
    records = []
    for (name, ratio), row in rows.items():
        b_mean, b_sd = stats(row["before"])
        a_mean, a_sd = stats(row["after"])
        rnd = rows.get(("random", ratio))
        key = "after" if row["after"] else "before"
        margin = stats(row[key])[0] - stats(rnd[key])[0] if rnd else float("nan")
        red = 1 - row["macs"] / base_macs
        records.append({"method": name, "ratio": ratio, "mac_reduction": red, "macs": row["macs"],
                        "ap_pruned_mean": b_mean, "ap_pruned_sd": b_sd, "ap_finetuned_mean": a_mean,
                        "ap_finetuned_sd": a_sd, "margin_over_random": margin, "seeds": args.seeds,
                        "ap_pruned": row["before"], "ap_finetuned": row["after"]})
        table.add_row(name, f"{ratio:.2f}", f"{red:.1%}", f"{b_mean:.4f} ± {b_sd:.4f}", f"{a_mean:.4f} ± {a_sd:.4f}",
                      f"{margin:+.4f}")
    console.print(table)
    out = Path(args.output or cfg.run_dir / "criteria_benchmark.json")
    write_json({"config": args.config, "baseline_test_ap": base_ap, "baseline_macs": base_macs,
                "finetune_epochs": epochs, "rows": records}, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
