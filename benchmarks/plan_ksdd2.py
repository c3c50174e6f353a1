"""The plan view's estimate for a study never run here (default: real KSDD2), from a measured run.

No GPU and no KSDD2 on this machine, so the per-step costs are a model, said in full: each stage's
mean step time in a measured manifest (default: the demo run on this CPU), scaled by the work
that stage does per step in the target config relative to the measured one:

    train        pixels x (epochs x balanced epoch x 3 + validation passes x validation images)
    prune        pixels x (fine-tune epochs x balanced epoch x 3 + (epochs + 1) x validation images)
    INT8 build   pixels x validation images (its candidates are validation passes)
    evaluate     pixels x test images x models
    export, calibrate, profile   pixels;   charts, report   unscaled

(a training sample costs about 3 forward passes; batch size and per-call overheads are ignored).
The result is in units of the measured machine; the 1 -> N worker ratio carries over to GPUs as
far as every stage speeds up alike. The plan itself (steps, dependencies) is the target config's.

    python benchmarks/plan_ksdd2.py [--measured runs/demo] [--measured-config configs/demo.toml]
        [--config configs/ksdd2.toml] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segdec_prune.config import Config, load_config
from segdec_prune.pipeline import Manifest
from segdec_prune.schedule import estimate, plan_view, stage_times
from segdec_prune.stages import RunState, plan

KSDD2 = {"train": 2331, "train_positive": 246, "test": 1004}  # the published split sizes


def split_sizes(root: Path) -> dict[str, int]:
    """Images and defective images per split of a KSDD2-layout folder (a defect: a non-empty mask)."""
    import cv2

    sizes = {}
    for split in ("train", "test"):
        masks = sorted((root / split).glob("*_GT.png"))
        sizes[split] = len(masks)
        if split == "train":
            sizes["train_positive"] = sum(int(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE).any()) for m in masks)
    return sizes


def work(cfg: Config, sizes: dict[str, int]) -> dict[str, float]:
    """Work per step of each stage, in pixel-samples (the model above)."""
    pixels = cfg.data.input_height * cfg.data.input_width
    val = sizes["train"] * cfg.data.val_fraction
    epoch = 2 * sizes["train_positive"] * (1 - cfg.data.val_fraction)
    t, p = cfg.train, cfg.prune
    models = len(p.methods) * len(p.ratios) + len(p.budget_methods) * (len(p.target_macs) + len(p.target_latency_ms)) + 1
    return {"train": pixels * (t.epochs * epoch * 3 + t.epochs // t.validate_every * val),
            "prune": pixels * (p.finetune_epochs * epoch * 3 + (p.finetune_epochs + 1) * val),
            "build-onnxruntime-int8": pixels * val, "evaluate": pixels * sizes["test"] * models,
            "export": pixels, "calibrate": pixels, "profile": pixels, "charts": 1.0, "report": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", type=Path, default=Path("runs/demo"))
    ap.add_argument("--measured-config", type=Path, default=Path("configs/demo.toml"))
    ap.add_argument("--config", type=Path, default=Path("configs/ksdd2.toml"))
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    measured_cfg, target = load_config(args.measured_config), load_config(args.config)
    have, want = work(measured_cfg, split_sizes(Path(measured_cfg.data.root))), work(target, KSDD2)
    means = stage_times(Manifest.load(args.measured))
    scaled = Manifest(Path("/dev/null"))  # never saved: a manifest of the modelled costs
    steps = plan(target, RunState(target))
    for step in steps:
        stage = step.stage or step.name
        if stage in means and stage in want:
            cost = sum(means[stage]) / len(means[stage]) * want[stage] / have[stage]
            scaled.steps[step.name] = {"status": "done", "stage": stage, "wall_seconds": cost}
    rows = plan_view(steps, scaled)
    print(f"{args.config}: {len(steps)} steps; per-step cost of each stage, in {args.measured}'s machine time:")
    for stage in dict.fromkeys(r.stage for r in rows):
        costs = [r.seconds for r in rows if r.stage == stage]
        known = [c for c in costs if c is not None]
        print(f"  {stage:<24} {len(costs):3d} x " + (f"{known[0] / 3600:8.2f} h" if known else "   unknown (not costed)"))
    for n in (1, args.workers):
        e = estimate(rows, n)
        print(f"{n} worker(s): {e['wall_s'] / 3600:.1f} h wall ({e['work_s'] / 3600:.1f} h of work, critical path "
              f"{e['critical_path_s'] / 3600:.1f} h)")
    one, many = estimate(rows, 1)["wall_s"], estimate(rows, args.workers)["wall_s"]
    train = next(r.seconds for r in rows if r.name == "train")
    print(f"speed-up on {args.workers} workers: {one / many:.2f}x; with the baseline also trained data-parallel on "
          f"{args.workers} (ideal scaling): {one / (many - train + train / args.workers):.2f}x")
    print(json.dumps({"workers_1_h": one / 3600, f"workers_{args.workers}_h": many / 3600}))


if __name__ == "__main__":
    main()
