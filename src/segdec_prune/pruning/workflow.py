"""Prune to the planned widths (`plan.py`) -> fine-tune (early-stopped on validation AP, with
distillation when configured, in one or several rounds) -> save, for one method and one target."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.progress import Progress

from .. import distributed
from ..calibration import select
from ..checkpoint import Checkpoint, Threshold, save_checkpoint
from ..config import Config, TrainConfig
from ..data.dataset import KSDD2Dataset
from ..model import SegDecNet, count_parameters, prunable_convs, reset_decision
from ..training import (EpochRecord, batches_per_epoch, resolve_device, train, val_scores, validate,
                        validate_seg_heads)
from . import recipe
from .allocate import Budget
from .criteria import Batch
from .distill import Distillation, TeacherOutputs, VolumeDistillation, kept_after, summed
from .memo import SourceMemo
from .methods import Method
from .plan import Target, criterion_options, plan_target, target_name
from .prune import prune_to_widths, round_widths
from .refit import refit_seg_head

if TYPE_CHECKING:
    from ..latency_table import LatencyTable

log = logging.getLogger(__name__)


@dataclass
class PruneOutcome:
    name: str
    path: Path
    widths: dict
    val_ap_pruned: float  # before fine-tuning
    val_ap: float  # after fine-tuning (= pruned when no fine-tuning)
    seconds: float
    plan: dict
    epochs: int = 0  # fine-tuning epochs run, over all rounds (early stopping ends most before the cap)
    finetune_seconds: float = 0.0  # of `seconds`; the rest is scoring, pruning and the first validation
    val_ap_unfitted: float | None = None  # with prune.refit_seg_head: before the refit (val_ap_pruned is after)
    validation_seconds: float = 0.0  # of `finetune_seconds`: the validation pass after each epoch
    precision: str = "fp32"  # fine-tuning's forward pass (prune.finetune_precision where the device has it)


def calibration_batches(dataset: KSDD2Dataset, count: int, batch_size: int, seed: int) -> list[Batch]:
    """`count` batches from the training split, half defective where possible, seeded, shuffled."""
    idx = select(dataset.labels, count * batch_size, 0.5, seed)
    items = [dataset[int(i)] for i in np.random.default_rng(seed).permutation(idx)]
    return [
        {k: torch.stack([it[k] for it in items[s : s + batch_size]]) for k in items[0]}
        for s in range(0, len(items), batch_size)
    ]


def finetune_config(cfg: Config, epochs: int) -> TrainConfig:
    """Fine-tuning: the training loop with the recovery recipe of `prune.*` (fixed loss weights:
    the model is already trained; momentum and schedule as configured; every epoch validated, or
    with `finetune_keep = "last"` only the last, which `train` always validates). With `finetune_lr =
    "auto"` lr and momentum here are placeholders until `recipe.choose` sets them."""
    p = cfg.prune
    lr = p.finetune_lr if p.finetune_lr != "auto" else p.probe_lrs[0]
    epochs = max(epochs, 1)
    return dataclasses.replace(cfg.train, epochs=epochs, lr=lr, momentum=p.finetune_momentum,
                               lr_schedule=p.finetune_schedule, dyn_balanced_loss=p.finetune_dyn_balanced,
                               seg_weight=p.finetune_seg_weight, validate_every=1 if p.finetune_keep == "best" else epochs,
                               precision=p.finetune_precision)


def distillation(cfg: Config, teacher: TeacherOutputs | None, train_set: KSDD2Dataset) -> Distillation | None:
    """The distillation term for fine-tuning, or None when `prune.distill` is off."""
    p = cfg.prune
    if not p.distill:
        return None
    if teacher is None:
        raise ValueError("prune.distill is on but no teacher outputs were given")
    return Distillation(teacher, train_set, p.distill_temperature, p.distill_dec_weight, p.distill_seg_weight)


def sparsity_penalty(lam: float):
    """Network Slimming's L1 penalty on the FeatureNorm scales of the prunable blocks."""

    def penalty(model: SegDecNet, *_: object) -> torch.Tensor:
        blocks = [m for m in list(model.volume) if isinstance(m, torch.nn.Sequential)]
        return lam * sum(b[1].scale.abs().sum() for b in blocks)

    return penalty


@dataclass
class RecoveryData:
    """What pruning and recovery read besides the model: the training split (with its
    validation hold-out), the calibration batches for scoring, the teacher's cached outputs,
    and what was computed from a source model and these batches already (`memo`: share one
    RecoveryData, or its memo, between prunings of one model)."""

    train_set: KSDD2Dataset
    val_set: KSDD2Dataset
    batches: Sequence[Batch]
    teacher: TeacherOutputs | None = None
    memo: SourceMemo = dataclasses.field(default_factory=SourceMemo)


@dataclass
class Recovered:
    """A pruned, fine-tuned model and what each round of pruning did."""

    model: SegDecNet
    val_ap_pruned: float  # right after the first pruning round, before any fine-tuning
    val_ap: float
    rounds: list[dict]
    plan: dict
    threshold: Threshold  # validation best-F1 of the returned model
    recipe: dict | None = None  # the fine-tuning recipe (and the probe's candidates when it chose)
    val_scores: np.ndarray | None = None  # validation scores of the returned model


def prune_and_recover(source: SegDecNet, method: Method, target: Target, cfg: Config, data: RecoveryData,
                      finetune_epochs: int, progress: Progress | None = None, description: str = "fine-tune",
                      table: LatencyTable | None = None, on_plan: Callable[[dict], None] | None = None,
                      on_pruned: Callable[[SegDecNet], None] | None = None,
                      on_epoch: Callable[[SegDecNet, EpochRecord], None] | None = None) -> Recovered:
    """Plan the widths for `target` (`on_plan` sees the plan before any fine-tuning, `on_pruned`
    the model right after the first round's pruning, e.g. to test it: no second pruning; `on_epoch`
    each fine-tuning epoch's model, as `train` gives it), then prune
    `source` to them in `prune.steps` rounds (scores recomputed on the current model each round),
    fine-tuning after each round; the rounds share `finetune_epochs` epochs of batches equally,
    so one-shot and iterative get the same total fine-tuning."""
    p, train_set, val_set = cfg.prune, data.train_set, data.val_set
    size = (cfg.data.input_height, cfg.data.input_width)
    planned = plan_target(source, method, target, cfg, data.batches, table, data.memo.scores)
    if on_plan:
        on_plan(planned.info)
    plan = round_widths(source.widths, planned.widths, p.steps)
    ft_cfg = finetune_config(cfg, finetune_epochs)
    total = finetune_epochs * batches_per_epoch(train_set, ft_cfg.batch_size)
    extra = distillation(cfg, data.teacher, train_set) if total else None
    device = resolve_device(cfg.train.device)
    options = criterion_options(cfg)
    model, rounds, chosen = source, [], None
    last_conv = {m: n for n, m in source.named_modules()}[prunable_convs(source)[-1]]  # the volume's output conv
    kept = list(range(source.widths.volume[-1]))  # the teacher's indices of the volume channels still there
    for i, widths in enumerate(plan):
        before = model
        ranking = None  # the channel scores; later rounds score the current model afresh
        if i == 0:
            ranking = planned.scores if planned.scores is not None else \
                data.memo.scores(model, method, data.batches, p.include_extractor, options, p.seed)
        model, removed = prune_to_widths(model, method, widths, data.batches, size, p.include_extractor, options,
                                         p.seed + i, ranking)
        kept = kept_after(kept, removed[last_conv])
        if i == 0 and on_pruned:
            on_pruned(model)
        record: dict = {"widths": widths.to_dict(), "removed_channels": removed}
        if p.refit_seg_head:  # the map read off the pruned volume again, before anything is measured
            unfitted = copy.deepcopy(model.seg_mask)
            teacher = data.memo.seg_targets(before, data.batches) if i == 0 else before  # the source's: once
            record["seg_refit_r2"] = refit_seg_head(model, teacher, data.batches)
            before_refit, just_pruned = validate_seg_heads(model, val_set, device, [unfitted, model.seg_mask])
            record["val_ap_unfitted"] = before_refit.ap
        else:
            just_pruned = validate(model, val_set, device)
        scores = just_pruned.scores
        threshold = just_pruned.threshold
        record["val_ap_pruned"] = just_pruned.ap
        iterations = total * (i + 1) // len(plan) - total * i // len(plan)
        if iterations:
            if i == 0:  # after measuring what pruning did; never without fine-tuning after it
                reset_decision(model, p.reset_decision)
            chosen = chosen or recipe.choose(model, cfg, ft_cfg, train_set, val_set, extra, progress,
                                             description.replace("fine-tune", "probe"))  # once, in round 1
            round_cfg = dataclasses.replace(ft_cfg, seed=ft_cfg.seed + i, lr=chosen.lr, momentum=chosen.momentum)
            step = f" {i + 1}/{len(plan)}" if len(plan) > 1 else ""
            volume = VolumeDistillation(source, model, kept, p.distill_volume_weight) if p.distill_volume_weight else None
            try:
                result = train(model, train_set, val_set, round_cfg, None, None, extra_loss=summed(extra, volume),
                               progress=progress, description=description + step, iterations=iterations,
                               patience=p.finetune_patience, on_epoch=on_epoch)
            finally:
                if volume is not None:
                    volume.close()
            record.update(val_ap=result.best_val_ap, iterations=iterations, training=result.to_dict(),
                          recipe=chosen.to_dict(), stuck_dec_loss=recipe.stuck(result.history))
            threshold, scores = result.best_threshold, result.best_scores  # of the weights train() kept
            if record["stuck_dec_loss"] is not None:
                log.warning("%s: the decision loss is still %.3f after fine-tuning (chance %.3f): not recovered; "
                            "validation AP %.3f. Try more epochs (check whether validation AP was still rising) or a lower ratio",
                            description, record["stuck_dec_loss"], recipe.CHANCE_DEC_LOSS, result.best_val_ap)
        else:
            record["val_ap"] = record["val_ap_pruned"]
        rounds.append(record)
        model.cpu()
    return Recovered(model, rounds[0]["val_ap_pruned"], rounds[-1]["val_ap"], rounds, planned.info, threshold,
                     chosen.to_dict() if chosen else None, scores)


def prune_one(baseline: Checkpoint, method: Method, target: Target, cfg: Config, data: RecoveryData,
              finetune_epochs: int, progress: Progress | None = None, source: SegDecNet | None = None,
              table: LatencyTable | None = None, on_plan: Callable[[dict], None] | None = None) -> PruneOutcome:
    """Prune `source` (default: the baseline's model), fine-tune, save models/{name}.pth."""
    start = time.perf_counter()
    name = target_name(method, target)
    out = prune_and_recover(source or baseline.model, method, target, cfg, data, finetune_epochs, progress,
                            f"fine-tune {name}", table, on_plan)
    pruned = out.model
    base_params = count_parameters(baseline.model)
    meta = {
        "name": name, "method": method.name, "criterion": method.criterion,
        "ratio": None if isinstance(target, Budget) else target, "plan": out.plan,
        "widths": pruned.widths.to_dict(), "parameters": count_parameters(pruned),
        "param_reduction": 1 - count_parameters(pruned) / base_params,
        "val_ap_pruned": out.val_ap_pruned, "val_ap": out.val_ap, "threshold": out.threshold.to_dict(),
        "val_scores": val_scores(data.val_set, out.val_scores),
        "recipe": out.recipe, "stuck_dec_loss": out.rounds[-1].get("stuck_dec_loss"),
        "removed_channels": out.rounds[0]["removed_channels"] if len(out.rounds) == 1 else None,
        "rounds": out.rounds, "teacher_sha256": data.teacher.baseline_sha256 if data.teacher and cfg.prune.distill else None,
        "finetune_config": ({**dataclasses.asdict(finetune_config(cfg, finetune_epochs)),
                             **({"lr": out.recipe["lr"], "momentum": out.recipe["momentum"]} if out.recipe else {})}
                            if finetune_epochs else None),
        "prune_config": dataclasses.asdict(cfg.prune), "config": cfg.to_dict(),
    }
    path = cfg.run_dir / "models" / f"{name}.pth"
    if distributed.ranks().main:  # under torchrun every rank holds the same model; one writes it
        save_checkpoint(path, pruned, baseline.input_spec, meta)
    distributed.barrier()
    trained = [r["training"] for r in out.rounds if "training" in r]
    tuning = sum(t["seconds"] for t in trained)
    return PruneOutcome(name, path, pruned.widths.to_dict(), out.val_ap_pruned, out.val_ap, time.perf_counter() - start,
                        out.plan, sum(len(t["history"]) for t in trained), tuning, out.rounds[0].get("val_ap_unfitted"),
                        tuning - sum(h["seconds"] for t in trained for h in t["history"]),
                        trained[-1].get("precision", "fp32") if trained else "fp32")


def sparsity_trained(baseline: Checkpoint, cfg: Config, train_set: KSDD2Dataset, val_set: KSDD2Dataset,
                     progress: Progress | None = None) -> SegDecNet:
    """naive_fn's optional first step: K epochs with an L1 penalty on the FeatureNorm scales."""
    model = copy.deepcopy(baseline.model)
    path = cfg.run_dir / "models" / "naive_fn_sparsity.pth"
    train(model, train_set, val_set, finetune_config(cfg, cfg.prune.fn_sparsity_epochs), path, baseline.input_spec,
          {"name": "naive_fn_sparsity", "fn_sparsity_lambda": cfg.prune.fn_sparsity_lambda},
          extra_loss=sparsity_penalty(cfg.prune.fn_sparsity_lambda), progress=progress, description="FN sparsity")
    return model
