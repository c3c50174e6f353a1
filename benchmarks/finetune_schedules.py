"""How many fine-tuning epochs, and which to validate? Every epoch's weights measured, schedules replayed.

Per seed and model (the config's methods x ratios, and its MAC budgets): prune the run's baseline and
fine-tune for `prune.finetune_epochs`, recording after each epoch its validation AP and loss (what the
recipe selects by), the seconds it trained and validated, and the test AP and Dice of that epoch's
weights (measured, never used to choose). Then the selection is replayed offline for other schedules:
validating only some epochs, or fewer epochs (with a constant learning rate, no momentum and fixed loss
weights, as the demo fine-tunes, the first k epochs of the run are exactly a k-epoch run). Validation
picks as `train` does (best validation AP, ties: lower validation loss, then the earlier epoch; the
last epoch always validates).

    python benchmarks/finetune_schedules.py --config configs/demo.toml --seeds 3 --part 0/2 --out a.json
    python benchmarks/finetune_schedules.py --config configs/demo.toml --seeds 3 --part 1/2 --out b.json
    python benchmarks/finetune_schedules.py --merge a.json b.json

`--set KEY=VALUE` changes the config for every job, e.g. `--set prune.finetune_precision=bf16`; with
`prune.finetune_keep = "last"` in the config, add `--set prune.finetune_keep=best` so every epoch validates
(validation does not change training).

One thread per process (as a pipeline worker fine-tunes); split the jobs over processes with --part.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from common import Bench, mean_sd
from segdec_prune.config import load_config
from segdec_prune.pruning.allocate import Budget
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.plan import target_name
from segdec_prune.pruning.workflow import RecoveryData, calibration_batches, prune_and_recover

# (label, epochs run, epochs validated: None = every one); the last epoch run always validates
SCHEDULES = (("4 epochs, validate each (the demo's recipe)", 4, None), ("4 epochs, validate 2 and 4", 4, (2, 4)),
             ("4 epochs, validate 3 and 4", 4, (3, 4)), ("4 epochs, the last", 4, (4,)),
             ("3 epochs, validate each", 3, None), ("3 epochs, the last", 3, (3,)), ("2 epochs, validate each", 2, None))


def measure(args: argparse.Namespace, console: Console) -> tuple[list[dict], float]:
    """Fine-tune this part's (seed, target) jobs, one row per job with every epoch's figures; and the
    baseline's test AP."""
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.set)
    bench = Bench(cfg)
    train_set, val_set = bench.sets
    p = cfg.prune
    targets = [*p.ratios, *(Budget("macs", m) for m in p.target_macs)]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(seed, name, t) for seed in seeds for name in p.methods for t in targets
            if not isinstance(t, Budget) or name in p.budget_methods]
    part, parts = map(int, args.part.split("/"))
    rows = []
    for seed, name, target in jobs[part::parts]:
        scfg = load_config(args.config, [*args.set, f"prune.seed={seed}", f"train.seed={seed}"])
        batches = calibration_batches(train_set, p.calibration_batches, cfg.train.batch_size, seed)
        epochs: list[dict] = []
        last = [time.perf_counter()]

        def on_epoch(model, rec) -> None:
            spent = time.perf_counter() - last[0]  # training + validating since the last call
            m = bench.test_metrics(model)
            epochs.append({"val_ap": rec.val_ap, "val_loss": rec.val_loss, "train_seconds": rec.seconds,
                           "val_seconds": spent - rec.seconds, "test_ap": m["ap"], "dice": m["dice"]})
            last[0] = time.perf_counter()

        method = get_method(name)
        prune_and_recover(bench.baseline.model, method, target, scfg, RecoveryData(train_set, val_set, batches),
                          p.finetune_epochs, on_pruned=lambda _: last.__setitem__(0, time.perf_counter()),
                          on_epoch=on_epoch)
        rows.append({"seed": seed, "model": target_name(method, target), "epochs": epochs})
        console.print(f"seed {seed} {rows[-1]['model']}: test AP by epoch "
                      + " ".join(f"{e['test_ap']:.3f}" for e in epochs)
                      + "; val AP " + " ".join(f"{e['val_ap']:.3f}" for e in epochs))
    return rows, bench.test_metrics(bench.baseline.model)["ap"]


def chosen(epochs: list[dict], run: int, validated: tuple[int, ...] | None) -> dict:
    """The epoch `train` keeps when it runs `run` epochs and validates `validated` (1-based)."""
    seen = [e for i, e in enumerate(epochs[:run], 1) if validated is None or i in validated or i == run]
    best = seen[0]
    for e in seen[1:]:
        if (e["val_ap"], -e["val_loss"]) > (best["val_ap"], -best["val_loss"]):
            best = e
    return best


def replay(rows: list[dict], baseline_ap: float | None, console: Console) -> None:
    """Per schedule: mean test AP over the models (mean and sd over seeds), the best r60 model's,
    the lowest Dice, and the fine-tuning seconds it would take (trained epochs + validation passes)."""
    seeds = sorted({r["seed"] for r in rows})
    console.print(f"{len(rows)} fine-tunings, seeds {seeds}" + (f"; baseline test AP {baseline_ap:.4f}" if baseline_ap else ""))
    for label, run, validated in SCHEDULES:
        mean_ap, best_r60, low_dice, seconds = [], [], [], 0.0
        for s in seeds:
            picked = {r["model"]: chosen(r["epochs"], run, validated) for r in rows if r["seed"] == s}
            mean_ap.append(sum(e["test_ap"] for e in picked.values()) / len(picked))
            best_r60.append(max((e["test_ap"] for m, e in picked.items() if m.endswith("_r60")), default=float("nan")))
            low_dice.append(min(e["dice"] for e in picked.values()))
        for r in rows:
            n_val = run if validated is None else len(set(validated) & set(range(1, run)) | {run})
            later = r["epochs"][1:] or r["epochs"]  # the first epoch's figure also holds the refit and the pass before
            per_val = sum(e["val_seconds"] for e in later) / len(later)
            seconds += sum(e["train_seconds"] for e in r["epochs"][:run]) + n_val * per_val
        (m, sd), (b, bsd) = mean_sd(mean_ap), mean_sd(best_r60)
        console.print(f"  {label:44s} test AP mean {m:.4f} ± {sd:.4f}, best r60 {b:.4f} ± {bsd:.4f}, "
                      f"lowest Dice {min(low_dice):.3f}, fine-tuning {seconds / len(seeds):.0f} s per seed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds from this one on")
    ap.add_argument("--part", default="0/1", help="i/n: this process's share of the jobs")
    ap.add_argument("--out", type=Path, help="write the rows (JSON)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--merge", type=Path, nargs="*", help="replay the rows of these files instead of measuring")
    args = ap.parse_args()
    console = Console()
    if args.merge:
        rows = [r for path in args.merge for r in json.loads(path.read_text())["rows"]]
        baseline = next((json.loads(p.read_text()).get("baseline_ap") for p in args.merge), None)
    else:
        rows, baseline = measure(args, console)
        if args.out:
            args.out.write_text(json.dumps({"config": args.config, "set": args.set, "baseline_ap": baseline, "rows": rows}))
    replay(rows, baseline, console)


if __name__ == "__main__":
    main()
