"""Where fine-tuning time goes on a CPU, and what the throughput levers give, side by side in one run.

For the config's input size and a baseline-sized and an r60-sized SegDecNet (timing only: random
weights): seconds per fine-tuning epoch (the balanced epoch of the training split, as `train`
draws it) split into the training batches and one validation pass, at 1 and 2 intra-op threads,
with and without channels-last memory; then the same epoch run by two 1-thread processes at once
(what `run --workers 2` does) against one 2-thread process. Ratios are measured in this run.
The bf16 row (CPU autocast) is throughput only: fine-tuning under it diverged on the demo (NaN
decision loss at lr 0.03, also with FeatureNorm in fp32), so nothing ships it.

    python benchmarks/finetune_speed.py --config configs/demo.toml
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import default_collate

from segdec_prune.config import load_config
from segdec_prune.data.dataset import preprocessing_for, train_val_datasets
from segdec_prune.model import DEFAULT_EXTRACTOR, DEFAULT_VOLUME, SegDecNet, Widths
from segdec_prune.training import batches_per_epoch, output_losses, validate


def widths_at(ratio: float) -> Widths:
    keep = lambda ws: tuple(max(1, round(w * (1 - ratio))) for w in ws)  # noqa: E731
    return Widths(keep(DEFAULT_VOLUME), DEFAULT_EXTRACTOR)


def epoch_seconds(cfg, sets, ratio: float, threads: int, channels_last: bool, batches: int | None = None,
                  bf16: bool = False) -> tuple[float, float]:
    """(training batches, validation pass) seconds of one fine-tuning epoch (`bf16`: the
    training forward under CPU autocast to bfloat16)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train_set, val_set = sets
    model = SegDecNet(cfg.data.channels, widths_at(ratio))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    n = batches or batches_per_epoch(train_set, cfg.train.batch_size)
    bs = cfg.train.batch_size
    model.train()
    t0 = time.perf_counter()
    for b in range(n):
        idx = [(b * bs + k) % len(train_set) for k in range(bs)]
        batch = default_collate([train_set[i] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(batch["image"].contiguous(memory_format=fmt))
        seg, dec = output_losses(tuple(o.float() for o in out), batch)
        opt.zero_grad()
        (3 * seg + dec).backward()
        opt.step()
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    validate(model, val_set, torch.device("cpu"))
    return t_train, time.perf_counter() - t0


def _worker(cfg_path: str, ratio: float, batches: int, barrier, times) -> None:
    """One 1-thread process: read the data, wait for the other, then time one epoch of batches."""
    cfg = load_config(cfg_path)
    sets = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    epoch_seconds(cfg, sets, ratio, 1, False, 3)  # warm-up
    barrier.wait()  # both start together, their data already read
    t0 = time.perf_counter()
    epoch_seconds(cfg, sets, ratio, 1, False, batches)
    times.put(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.6])
    args = ap.parse_args()
    cfg = load_config(args.config)
    sets = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    console = Console()
    table = Table("model", "threads", "channels-last / bf16", "train s", "validate s", "epoch s", "vs 2 threads",
                  title=f"one fine-tuning epoch at {cfg.data.input_height}x{cfg.data.input_width}, batch "
                        f"{cfg.train.batch_size}, {len(sets[1])} validation images")
    for ratio in args.ratios:
        epoch_seconds(cfg, sets, ratio, 2, False, 3)  # warm-up
        variants = [(t, cl, False) for t in (2, 1) for cl in (False, True)] + [(2, False, True)]
        rows = {v: epoch_seconds(cfg, sets, ratio, v[0], v[1], bf16=v[2]) for v in variants}
        ref = sum(rows[2, False, False])
        for (t, cl, bf), (tr, va) in rows.items():
            table.add_row(f"r{round(ratio * 100)}", str(t), f"{cl} / {bf}", f"{tr:.1f}", f"{va:.1f}",
                          f"{tr + va:.1f}", f"{ref / (tr + va):.2f}x")
    console.print(table)
    # Two 1-thread processes, one epoch of training batches each (timed together, after their data
    # is read), against one 2-thread process doing both.
    batches = batches_per_epoch(sets[0], cfg.train.batch_size)
    for ratio in args.ratios:
        t0 = time.perf_counter()
        for _ in range(2):
            epoch_seconds(cfg, sets, ratio, 2, False, batches)
        serial = time.perf_counter() - t0
        ctx = mp.get_context("spawn")
        barrier, times = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(args.config, ratio, batches, barrier, times)) for _ in range(2)]
        for p in procs:
            p.start()
        parallel = max(times.get() for _ in procs)  # the pair's wall time, data reading excluded
        for p in procs:
            p.join()
        console.print(f"r{round(ratio * 100)}: two epochs, one 2-thread process {serial:.1f} s; two 1-thread "
                      f"processes at once {parallel:.1f} s: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
