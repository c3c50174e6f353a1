"""How well pruned models recover: fine-tuning recipes side by side at one ratio.

For each recipe x fine-tuning epochs x method x seed: prune the run's baseline, fine-tune with
that recipe (`pruning.workflow.prune_and_recover`, the code `run` uses), then measure test AP and
Dice. Prints mean ± sd over seeds, wall seconds, and the baseline's AP and Dice on the same test
split; writes runs/<name>/recovery_benchmark.json.

    python benchmarks/recovery.py --config configs/demo.toml --seeds 3

A recipe is a list of config overrides on top of the config file. Built in:
  default       the config's recipe as it is (the shipped configs: plain SGD, early stopping)
  plain         SGD without momentum, constant lr (--plain-lr), segmentation weight 1, no distillation
  tuned         the demo's recipe until 2026-12-01 without distillation: momentum 0.9, cosine,
                segmentation weight 3, every epoch run
  distill       that recipe with distillation (the demo's default until 2026-12-01), one-shot
  distill_iter  the same in prune.steps = 3 rounds (same total fine-tuning batches)
  auto          distill with lr and momentum chosen per model by the probe
                (prune.finetune_lr = "auto", pruning/recipe.py)
  auto_plain    the probe with plain fine-tuning: constant lr, segmentation weight 1, no distillation
Method "baseline" fine-tunes the unpruned baseline with the recipe: the fair reference when the
baseline was still improving as its training ended.
Add your own with --recipe NAME=section.key=value,section.key=value.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import Bench, fmt, mean_sd
from segdec_prune.artifacts import write_json
from segdec_prune.config import load_config
from segdec_prune.profiling import macs_and_params
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning import recipe
from segdec_prune.pruning.allocate import Budget
from segdec_prune.pruning.workflow import (Recovered, RecoveryData, calibration_batches, distillation, finetune_config,
                                          prune_and_recover)
from segdec_prune.training import resolve_device, train, validate

OLD = ["prune.finetune_momentum=0.9", "prune.finetune_schedule='cosine'", "prune.finetune_seg_weight=3.0",
       "prune.finetune_patience=0"]  # the recipe the demo shipped until 2026-12-01 (with distillation)
RECIPES: dict[str, list[str]] = {
    "default": [],
    "plain": ["prune.distill=false", "prune.steps=1", "prune.finetune_momentum=0.0",
              "prune.finetune_schedule='constant'", "prune.finetune_seg_weight=1.0"],
    "tuned": ["prune.distill=false", "prune.steps=1", *OLD],
    "distill": ["prune.distill=true", "prune.steps=1", *OLD],
    "distill_iter": ["prune.distill=true", "prune.steps=3", *OLD],
    "auto": ["prune.finetune_lr='auto'", "prune.steps=1", "prune.distill=true", *OLD],
    "auto_plain": ["prune.finetune_lr='auto'", "prune.steps=1", "prune.distill=false",
                   "prune.finetune_schedule='constant'", "prune.finetune_seg_weight=1.0"],
}


def parse_recipes(names: list[str], custom: list[str], plain_lr: float) -> dict[str, list[str]]:
    recipes = {n: list(RECIPES[n]) for n in names}
    if "plain" in recipes:
        recipes["plain"].append(f"prune.finetune_lr={plain_lr}")
    for text in custom:
        name, _, overrides = text.partition("=")
        recipes[name] = [o for o in overrides.split(",") if o]
    return recipes


REFERENCE = "baseline"  # as a method: the unpruned baseline fine-tuned with the same recipe


def finetuned_baseline(model, cfg, data: RecoveryData, epochs: int) -> Recovered:
    """The baseline trained on with the recipe, unpruned: what the extra epochs alone give (a
    baseline still improving when its training stopped makes pruned models look better than they are)."""
    model, extra = copy.deepcopy(model), distillation(cfg, data.teacher, data.train_set)
    before = validate(model, data.val_set, resolve_device(cfg.train.device)).ap
    ft_cfg = finetune_config(cfg, epochs)
    chosen = recipe.choose(model, cfg, ft_cfg, data.train_set, data.val_set, extra)  # the probe too, with "auto"
    result = train(model, data.train_set, data.val_set, dataclasses.replace(ft_cfg, lr=chosen.lr, momentum=chosen.momentum),
                   None, None, extra_loss=extra, patience=cfg.prune.finetune_patience)
    record = {"val_ap_pruned": before, "val_ap": result.best_val_ap, "training": result.to_dict()}
    return Recovered(model, before, result.best_val_ap, [record], {}, result.best_threshold, chosen.to_dict())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--target-macs", type=float, default=None, help="a MACs budget instead of --ratio (0.2 = m20)")
    ap.add_argument("--methods", nargs="*", default=["ours_c4", "ours_c2", "naive_l1", "random"])
    ap.add_argument("--recipes", nargs="*", default=["default", "distill"], choices=list(RECIPES))
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=OVERRIDES", help="an extra recipe")
    ap.add_argument("--plain-lr", type=float, default=0.05, help="the plain recipe's lr (the seed's demo value)")
    ap.add_argument("--epochs", nargs="*", type=int, default=None, help="default: the config's prune.finetune_epochs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    console = Console()
    cfg = load_config(args.config)
    bench = Bench(cfg)
    spec = bench.baseline.input_spec
    train_set, val_set = bench.sets
    base = bench.test_metrics(bench.baseline.model)
    base_macs, _ = macs_and_params(bench.baseline.model, spec.height, spec.width)
    target = Budget("macs", args.target_macs) if args.target_macs else args.ratio
    label = f"m{args.target_macs * 100:g}" if args.target_macs else f"r{args.ratio * 100:.0f}"
    console.print(f"baseline test AP {base['ap']:.4f}, Dice {base['dice']:.4f}; {label} on {cfg.data.root}")
    recipes = parse_recipes(args.recipes, args.recipe, args.plain_lr)
    rows: dict[tuple, dict] = {}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        for rname, overrides in recipes.items():
            rcfg = load_config(args.config, [*overrides, f"prune.seed={seed}", f"train.seed={seed}"])
            batches = calibration_batches(train_set, rcfg.prune.calibration_batches, rcfg.train.batch_size, seed)
            teacher = bench.teacher if rcfg.prune.distill else None
            for epochs in args.epochs or [cfg.prune.finetune_epochs]:
                for mname in args.methods:
                    t0 = time.perf_counter()
                    data = RecoveryData(train_set, val_set, batches, teacher)
                    out = (finetuned_baseline(bench.baseline.model, rcfg, data, epochs) if mname == REFERENCE else
                           prune_and_recover(bench.baseline.model, get_method(mname), target, rcfg, data, epochs))
                    m = bench.test_metrics(out.model)
                    row = rows.setdefault((rname, epochs, mname), {"ap": [], "dice": [], "val_ap": [], "seconds": [],
                                                                   "recipe": [], "dec_loss": [], "val_history": []})
                    row["recipe"].append(out.recipe)
                    row["dec_loss"].append(out.rounds[-1].get("training", {}).get("history", [{}])[-1].get("loss_dec"))
                    row["val_history"].append([h.get("val_ap") for h in out.rounds[-1].get("training", {}).get("history", [])])
                    row["macs"] = macs_and_params(out.model, spec.height, spec.width)[0]
                    for key, value in (("ap", m["ap"]), ("dice", m["dice"]), ("val_ap", out.val_ap),
                                       ("seconds", time.perf_counter() - t0)):
                        row[key].append(value)
                    chosen = (f", lr {out.recipe['lr']:g} momentum {out.recipe['momentum']:g} ({out.recipe['source']}, "
                              f"{out.recipe['seconds']:.0f} s)" if out.recipe else "")
                    console.print(f"seed {seed} {rname} {epochs} ep {mname}: test AP {m['ap']:.4f} Dice {m['dice']:.4f} "
                                  f"(val AP {out.val_ap_pruned:.3f} -> {out.val_ap:.3f}, dec loss {row['dec_loss'][-1]:.3f}"
                                  f"{chosen}, {row['seconds'][-1]:.0f} s)")

    table = Table("recipe", "epochs", "method", "test AP", "Dice", "seconds",
                  title=f"recovery at {label} (mean ± sd over {args.seeds} seeds); "
                        f"baseline AP {base['ap']:.4f}, Dice {base['dice']:.4f}")
    records = []
    for (rname, epochs, mname), row in rows.items():
        table.add_row(rname, str(epochs), mname, fmt(row["ap"]), fmt(row["dice"]), f"{mean_sd(row['seconds'])[0]:.0f}")
        records.append({"recipe": rname, "overrides": recipes[rname], "finetune_epochs": epochs, "method": mname,
                        "mac_reduction": 1 - row["macs"] / base_macs, "seeds": args.seeds,
                        "test_ap_mean": mean_sd(row["ap"])[0], "test_ap_sd": mean_sd(row["ap"])[1],
                        "dice_mean": mean_sd(row["dice"])[0], "dice_sd": mean_sd(row["dice"])[1],
                        "seconds_mean": mean_sd(row["seconds"])[0], **{k: row[k] for k in ("ap", "dice", "val_ap", "seconds", "dec_loss", "recipe", "val_history")}})
    console.print(table)
    out_path = Path(args.output or cfg.run_dir / "recovery_benchmark.json")
    write_json({"config": args.config, "data": cfg.data.root, "ratio": args.ratio, "target_macs": args.target_macs,
                "seeds": list(seeds), "baseline_test_ap": base["ap"],
                "baseline_dice": base["dice"], "rows": records}, out_path)
    console.print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
