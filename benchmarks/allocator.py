"""What keeping freed memory in the process (`segdec_prune.allocator`) gives PyTorch on a CPU,
side by side in one run: glibc's default malloc against the thresholds every command sets.

Each row is a fresh 1-thread process (the setting is per process): it reads the config's data,
warms up, then times fine-tuning batches and one validation pass of a model at the given ratio
(random weights; timing only), and counts its minor page faults and system time over both.
The two settings alternate, `--repeats` times each; ratios are of the medians.

    python benchmarks/allocator.py --config configs/demo.toml
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics

from rich.console import Console
from rich.table import Table

from finetune_speed import epoch_seconds  # benchmarks/ is the script's folder
from segdec_prune.allocator import keep_freed_memory
from segdec_prune.config import load_config
from segdec_prune.data.dataset import preprocessing_for, train_val_datasets


def _measure(cfg_path: str, ratio: float, batches: int, retain: bool, out) -> None:
    """In a fresh process: (train s, validate s, minor faults, system s) of one setting."""
    if retain and not keep_freed_memory():
        raise SystemExit("glibc's thresholds could not be set here (not Linux/glibc, or SEGDEC_PRUNE_MALLOC=default)")
    cfg = load_config(cfg_path)
    sets = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    epoch_seconds(cfg, sets, ratio, 1, False, 2)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    train, val = epoch_seconds(cfg, sets, ratio, 1, False, batches)
    after = resource.getrusage(resource.RUSAGE_SELF)
    out.put((train, val, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime))


def run(cfg_path: str, ratio: float, batches: int, retain: bool) -> tuple[float, float, int, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_measure, args=(cfg_path, ratio, batches, retain, out))
    p.start()
    result = out.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.6])
    ap.add_argument("--batches", type=int, default=10, help="training batches timed per process")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config)
    table = Table("model", "malloc", "train s", "validate s", "page faults", "system s", "speed-up",
                  title=f"{args.batches} fine-tuning batches + one validation pass, 1 thread, "
                        f"{cfg.data.input_height}x{cfg.data.input_width}, medians of {args.repeats}")
    for ratio in args.ratios:
        rows: dict[bool, list] = {False: [], True: []}
        for _ in range(args.repeats):
            for retain in (False, True):
                rows[retain].append(run(args.config, ratio, args.batches, retain))
        med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
        base = med[False][0] + med[False][1]
        for retain, label in ((False, "glibc default"), (True, "kept (allocator.py)")):
            tr, va, faults, sys_s = med[retain]
            table.add_row(f"r{round(ratio * 100)}", label, f"{tr:.2f}", f"{va:.2f}", f"{faults:,.0f}",
                          f"{sys_s:.2f}", f"{base / (tr + va):.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
