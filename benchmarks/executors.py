"""Wall time of one small pipeline with the local executor and with the Ray executor, side by side.

Both run the same config from scratch on the same synthetic data, one after the other, in fresh
run folders (Ray: a local instance on this machine's CPUs, one CPU per task). Prints the wall
times and their ratio, and each executor's sum of step times (the work), so the gain from
running independent steps at once is separated from Ray's start-up and per-task overhead.

    python benchmarks/executors.py [--cpus 2] [--out /tmp/executors]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = """[data]
root = "{data}"
input_height = 128
input_width = 64
val_fraction = 0.3
[train]
epochs = 2
batch_size = 2
device = "cpu"
[prune]
methods = ["naive_l1", "ours_c2", "ours_c4"]
ratios = [0.4, 0.6]
budget_methods = []
finetune_epochs = 1
calibration_batches = 2
[deploy]
calibration_images = 8
runs = 5
throughput_batch = 2
int8_calibrations = ["minmax"]
int8_fp32_candidates = ["seg_head"]
[run]
name = "{name}"
dir = "{runs}"
"""


def timed_run(out: Path, name: str, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, summed step seconds) of one fresh `segdec-prune run`."""
    cfg = out / f"{name}.toml"
    cfg.write_text(CONFIG.format(data=out / "data", name=name, runs=out / "runs"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "segdec_prune.cli", "run", "--config", str(cfg), *extra], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    steps = json.loads((out / "runs" / name / "manifest.json").read_text())["steps"].values()
    return wall, sum(s["wall_seconds"] for s in steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/segdec_executors"))
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: give a new --out")
    from segdec_prune.data.synthetic import SynthSpec, write_dataset

    write_dataset(args.out / "data", SynthSpec(train=40, test=20, positive_fraction=0.35, seed=3))
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    try:
        local = timed_run(args.out, "local", [])
        on_ray = timed_run(args.out, "ray", ["--executor", "ray", "--address", address])
    finally:
        ray.shutdown()
    print(f"{'executor':<8} {'wall s':>8} {'steps s':>8}")
    for name, (wall, work) in (("local", local), ("ray", on_ray)):
        print(f"{name:<8} {wall:8.1f} {work:8.1f}")
    print(f"ray / local wall time: {on_ray[0] / local[0]:.2f}x ({args.cpus} CPUs, one per Ray task)")


if __name__ == "__main__":
    main()
