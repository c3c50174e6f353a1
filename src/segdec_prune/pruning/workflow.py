"""Prune -> fine-tune -> save, for one method at one ratio or the whole sweep."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from ..calibration import select
from ..checkpoint import Checkpoint, InputSpec, save_checkpoint
from ..config import Config, TrainConfig
from ..data.dataset import KSDD2Dataset
from ..model import SegDecNet, count_parameters
from ..training import resolve_device, train, validate
from .criteria import Batch
from .methods import Method, model_name
from .prune import prune_model


@dataclass
class PruneOutcome:
    name: str
    path: Path
    widths: dict
    val_ap_pruned: float  # before fine-tuning
    val_ap: float  # after fine-tuning (= pruned when no fine-tuning)
    seconds: float


def calibration_batches(dataset: KSDD2Dataset, count: int, batch_size: int, seed: int) -> list[Batch]:
    """`count` batches from the training split, half defective where possible, seeded, shuffled."""
    idx = select(dataset.labels, count * batch_size, 0.5, seed)
    items = [dataset[int(i)] for i in np.random.default_rng(seed).permutation(idx)]
    return [
        {k: torch.stack([it[k] for it in items[s : s + batch_size]]) for k in items[0]}
        for s in range(0, len(items), batch_size)
    ]


def finetune_config(cfg: Config, epochs: int) -> TrainConfig:
    """Fine-tuning: the training recipe with fixed loss weights (the model is already trained)."""
    return dataclasses.replace(cfg.train, epochs=epochs, lr=cfg.prune.finetune_lr, dyn_balanced_loss=False,
                               validate_every=1)


def sparsity_penalty(lam: float):
    """Network Slimming's L1 penalty on the FeatureNorm scales of the prunable blocks."""

    def penalty(model: SegDecNet) -> torch.Tensor:
        blocks = [m for m in list(model.volume) if isinstance(m, torch.nn.Sequential)]
        return lam * sum(b[1].scale.abs().sum() for b in blocks)

    return penalty


def prune_one(
    baseline: Checkpoint,
    method: Method,
    ratio: float,
    cfg: Config,
    train_set: KSDD2Dataset,
    val_set: KSDD2Dataset,
    batches: Sequence[Batch],
    finetune_epochs: int,
    progress: Progress | None = None,
    source: SegDecNet | None = None,
) -> PruneOutcome:
    """Prune `source` (default: the baseline's model), fine-tune, save models/{name}.pth."""
    start = time.perf_counter()
    name = model_name(method.name, ratio)
    spec: InputSpec = baseline.input_spec
    options = {"lam": cfg.prune.c3_lambda, "delta": cfg.train.delta}
    pruned, removed = prune_model(source or baseline.model, method, ratio, batches, (spec.height, spec.width),
                         cfg.prune.round_to, cfg.prune.include_extractor, options, cfg.prune.seed)
    val_ap_pruned, _ = validate(pruned, val_set, resolve_device(cfg.train.device))
    pruned.cpu()
    base_params = count_parameters(baseline.model)
    meta = {
        "name": name, "method": method.name, "criterion": method.criterion, "ratio": ratio,
        "widths": pruned.widths.to_dict(), "parameters": count_parameters(pruned),
        "param_reduction": 1 - count_parameters(pruned) / base_params,
        "val_ap_pruned": val_ap_pruned, "removed_channels": removed, "prune_config": dataclasses.asdict(cfg.prune),
        "config": cfg.to_dict(),
    }
    path = cfg.run_dir / "models" / f"{name}.pth"
    if finetune_epochs > 0:
        result = train(pruned, train_set, val_set, finetune_config(cfg, finetune_epochs), path, spec, meta,
                       progress=progress, description=f"fine-tune {name}")
        val_ap = result.best_val_ap
    else:
        save_checkpoint(path, pruned, spec, meta)
        val_ap = val_ap_pruned
    return PruneOutcome(name, path, pruned.widths.to_dict(), val_ap_pruned, val_ap, time.perf_counter() - start)


def sparsity_trained(baseline: Checkpoint, cfg: Config, train_set: KSDD2Dataset, val_set: KSDD2Dataset,
                     progress: Progress | None = None) -> SegDecNet:
    """naive_fn's optional first step: K epochs with an L1 penalty on the FeatureNorm scales."""
    model = copy.deepcopy(baseline.model)
    path = cfg.run_dir / "models" / "naive_fn_sparsity.pth"
    train(model, train_set, val_set, finetune_config(cfg, cfg.prune.fn_sparsity_epochs), path, baseline.input_spec,
          {"name": "naive_fn_sparsity", "fn_sparsity_lambda": cfg.prune.fn_sparsity_lambda},
          extra_loss=sparsity_penalty(cfg.prune.fn_sparsity_lambda), progress=progress, description="FN sparsity")
    return model
