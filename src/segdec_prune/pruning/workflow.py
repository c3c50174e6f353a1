"""Plan widths (a uniform ratio, or a budget by global allocation) -> prune -> fine-tune (with
distillation, in one or several rounds) -> save, for one method and one target."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.progress import Progress

from ..calibration import select
from ..checkpoint import Checkpoint, save_checkpoint
from ..config import Config, TrainConfig
from ..data.dataset import KSDD2Dataset
from ..model import SegDecNet, Widths, conv_macs, count_parameters, prunable_convs
from ..training import batches_per_epoch, resolve_device, train, validate
from .allocate import Budget, BudgetError, allocate, narrowest
from .criteria import Batch
from .distill import Distillation, TeacherOutputs
from .methods import Method, budget_model_name, model_name
from .prune import channel_scores, prune_to_widths, round_widths, target_widths

if TYPE_CHECKING:
    from ..latency_table import LatencyTable

Target = float | Budget  # a share of every layer's channels to remove, or a budget to meet


@dataclass
class PruneOutcome:
    name: str
    path: Path
    widths: dict
    val_ap_pruned: float  # before fine-tuning
    val_ap: float  # after fine-tuning (= pruned when no fine-tuning)
    seconds: float
    plan: dict


def target_name(method: Method, target: Target) -> str:
    """`ours_c4_r60` for a ratio, `ours_c4_m20` / `ours_c4_t7p5ms` for budgets."""
    if isinstance(target, Budget):
        return budget_model_name(method.name, target.kind, target.value)
    return model_name(method.name, target)


@dataclass
class Planned:
    """The widths to prune to, what they are predicted to cost, and (for budgets) the scores the
    allocation used, so the first pruning round does not score the same model twice."""

    widths: Widths
    info: dict
    scores: list[torch.Tensor] | None = None


PLAN_TOLERANCE, PLAN_CHECKS = 0.05, 3


def verified(widths: Widths, target_ms: float, plan: Callable[[float], Widths],
             table: LatencyTable) -> tuple[Widths, float, list[dict]]:
    """Time the planned architecture itself (random weights, alternating with the baseline and
    scaled to the table's baseline; seconds) and, while it misses the target by more than
    PLAN_TOLERANCE, plan again for the table budget scaled by target/measured.
    The table's sum of isolated blocks is off by up to ~20 % for very narrow networks on a CPU
    (README "Budgets"); this closes the loop before any fine-tuning is spent."""
    from ..latency_table import measure_widths

    budget, checks, best = target_ms, [], None
    for _ in range(PLAN_CHECKS):
        measured = measure_widths(table.key, widths, table.baseline_ms)
        checks.append({"budget_ms": budget, "widths": widths.to_dict(), "predicted_ms": table.predict(widths),
                       "measured_ms": measured})
        if best is None or abs(measured / target_ms - 1) < abs(best[1] / target_ms - 1):
            best = (widths, measured)
        if abs(measured / target_ms - 1) <= PLAN_TOLERANCE:
            break
        budget *= target_ms / measured
        try:
            nxt = plan(budget)
        except BudgetError:
            break
        if nxt == widths:
            break
        widths = nxt
    return best[0], best[1], checks


def plan_target(source: SegDecNet, method: Method, target: Target, cfg: Config, batches: Sequence[Batch],
                table: LatencyTable | None = None) -> Planned:
    """Widths for `target`: one ratio for every layer, or global allocation under a budget
    (MACs from the shapes; latency from `table`, which must be for the budget's runtime)."""
    p, c = cfg.prune, source.in_channels
    size = (cfg.data.input_height, cfg.data.input_width)
    scores, checks, measured = None, [], None
    if isinstance(target, Budget):
        widths, scores = budget_widths(source, method, target, cfg, batches, table)
        if target.kind == "latency":
            arrays = [s.numpy() for s in scores]
            full = [conv.out_channels for conv in prunable_convs(source, p.include_extractor)]

            def replan(budget: float) -> Widths:
                return _as_widths(allocate(arrays, full, _cost(source, target, cfg, table), budget, p.min_width,
                                           p.align, p.min_keep), source.widths)

            widths, measured, checks = verified(widths, target.value, replan, table)
    else:
        widths = target_widths(source.widths, target, p.include_extractor, p.round_to if method.aligned else None)
    macs = conv_macs(widths, c, *size)
    info = {"widths": widths.to_dict(), "macs": macs, "mac_fraction": macs / conv_macs(source.widths, c, *size),
            "predicted_latency_ms": table.predict(widths) if table else None, "measured_plan_ms": measured,
            "plan_checks": checks,
            "latency_table": {k: table.key[k] for k in ("runtime", "precision", "threads")} if table else None,
            "budget": {**dataclasses.asdict(target), "align": p.align, "min_width": p.min_width, "min_keep": p.min_keep}
            if isinstance(target, Budget) else None}
    return Planned(widths, info, scores)


def _as_widths(ws: Sequence[int], like: Widths) -> Widths:
    """Allocation's flat list (volume, then the extractor when it is pruned) as Widths."""
    return Widths(tuple(ws[:9]), tuple(ws[9:]) or like.extractor)


def _cost(source: SegDecNet, target: Budget, cfg: Config, table: LatencyTable | None) -> Callable[[Sequence[int]], float]:
    """The budget's cost of a flat width list: share of the source's MACs, or predicted ms."""
    c, size = source.in_channels, (cfg.data.input_height, cfg.data.input_width)
    if target.kind == "macs":
        base = conv_macs(source.widths, c, *size)
        return lambda ws: conv_macs(_as_widths(ws, source.widths), c, *size) / base
    if table is None or (table.key["runtime"], table.key["precision"]) != (target.runtime, target.precision):
        raise BudgetError(f"a latency target needs the {target.runtime} {target.precision} latency table")
    return lambda ws: table.predict(_as_widths(ws, source.widths))


def budget_widths(source: SegDecNet, method: Method, target: Budget, cfg: Config, batches: Sequence[Batch],
                  table: LatencyTable | None) -> tuple[Widths, list[torch.Tensor]]:
    """Global allocation of `source`'s channels under `target`, and the criterion's scores it used;
    a target the narrowest allowed network cannot meet fails before any scoring."""
    p = cfg.prune
    cost = _cost(source, target, cfg, table)
    full = [conv.out_channels for conv in prunable_convs(source, p.include_extractor)]
    floor = cost(narrowest(full, p.min_width, p.align, p.min_keep))
    if floor > target.value:
        unit, reach = ("", f"{floor:.1%} of the baseline's MACs") if target.kind == "macs" else (" ms", f"{floor:.2f} ms")
        raise BudgetError(f"the target {target.value:g}{unit} is out of reach: the narrowest network allowed (prune."
                          f"min_width {p.min_width}, min_keep {p.min_keep}, align {p.align}) needs {reach}")
    scores = channel_scores(source, method, batches, p.include_extractor, {"lam": p.c3_lambda, "delta": cfg.train.delta},
                            p.seed)
    ws = allocate([s.numpy() for s in scores], full, cost, target.value, p.min_width, p.align, p.min_keep)
    return _as_widths(ws, source.widths), scores


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
    the model is already trained; momentum and schedule as configured)."""
    p = cfg.prune
    return dataclasses.replace(cfg.train, epochs=max(epochs, 1), lr=p.finetune_lr, momentum=p.finetune_momentum,
                               lr_schedule=p.finetune_schedule, dyn_balanced_loss=False,
                               seg_weight=p.finetune_seg_weight, validate_every=1)


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
    validation hold-out), the calibration batches for scoring, the teacher's cached outputs."""

    train_set: KSDD2Dataset
    val_set: KSDD2Dataset
    batches: Sequence[Batch]
    teacher: TeacherOutputs | None = None


@dataclass
class Recovered:
    """A pruned, fine-tuned model and what each round of pruning did."""

    model: SegDecNet
    val_ap_pruned: float  # right after the first pruning round, before any fine-tuning
    val_ap: float
    rounds: list[dict]
    plan: dict


def prune_and_recover(source: SegDecNet, method: Method, target: Target, cfg: Config, data: RecoveryData,
                      finetune_epochs: int, progress: Progress | None = None, description: str = "fine-tune",
                      table: LatencyTable | None = None, on_plan: Callable[[dict], None] | None = None) -> Recovered:
    """Plan the widths for `target` (`on_plan` sees the plan before any fine-tuning), then prune
    `source` to them in `prune.steps` rounds (scores recomputed on the current model each round),
    fine-tuning after each round; the rounds share `finetune_epochs` epochs of batches equally,
    so one-shot and iterative get the same total fine-tuning."""
    p, train_set, val_set = cfg.prune, data.train_set, data.val_set
    size = (cfg.data.input_height, cfg.data.input_width)
    planned = plan_target(source, method, target, cfg, data.batches, table)
    if on_plan:
        on_plan(planned.info)
    plan = round_widths(source.widths, planned.widths, p.steps)
    ft_cfg = finetune_config(cfg, finetune_epochs)
    total = finetune_epochs * batches_per_epoch(train_set, ft_cfg.batch_size)
    extra = distillation(cfg, data.teacher, train_set) if total else None
    device = resolve_device(cfg.train.device)
    options = {"lam": p.c3_lambda, "delta": cfg.train.delta}
    model, rounds = source, []
    for i, widths in enumerate(plan):
        model, removed = prune_to_widths(model, method, widths, data.batches, size, p.include_extractor, options,
                                         p.seed + i, planned.scores if i == 0 else None)
        record = {"widths": widths.to_dict(), "removed_channels": removed,
                  "val_ap_pruned": validate(model, val_set, device)[0]}
        iterations = total * (i + 1) // len(plan) - total * i // len(plan)
        if iterations:
            round_cfg = dataclasses.replace(ft_cfg, seed=ft_cfg.seed + i)
            step = f" {i + 1}/{len(plan)}" if len(plan) > 1 else ""
            result = train(model, train_set, val_set, round_cfg, None, None, extra_loss=extra,
                           progress=progress, description=description + step, iterations=iterations)
            record.update(val_ap=result.best_val_ap, iterations=iterations, training=result.to_dict())
        else:
            record["val_ap"] = record["val_ap_pruned"]
        rounds.append(record)
        model.cpu()
    return Recovered(model, rounds[0]["val_ap_pruned"], rounds[-1]["val_ap"], rounds, planned.info)


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
        "val_ap_pruned": out.val_ap_pruned, "val_ap": out.val_ap,
        "removed_channels": out.rounds[0]["removed_channels"] if len(out.rounds) == 1 else None,
        "rounds": out.rounds, "teacher_sha256": data.teacher.baseline_sha256 if data.teacher and cfg.prune.distill else None,
        "finetune_config": dataclasses.asdict(finetune_config(cfg, finetune_epochs)) if finetune_epochs else None,
        "prune_config": dataclasses.asdict(cfg.prune), "config": cfg.to_dict(),
    }
    path = cfg.run_dir / "models" / f"{name}.pth"
    save_checkpoint(path, pruned, baseline.input_spec, meta)
    return PruneOutcome(name, path, pruned.widths.to_dict(), out.val_ap_pruned, out.val_ap, time.perf_counter() - start,
                        out.plan)


def sparsity_trained(baseline: Checkpoint, cfg: Config, train_set: KSDD2Dataset, val_set: KSDD2Dataset,
                     progress: Progress | None = None) -> SegDecNet:
    """naive_fn's optional first step: K epochs with an L1 penalty on the FeatureNorm scales."""
    model = copy.deepcopy(baseline.model)
    path = cfg.run_dir / "models" / "naive_fn_sparsity.pth"
    train(model, train_set, val_set, finetune_config(cfg, cfg.prune.fn_sparsity_epochs), path, baseline.input_spec,
          {"name": "naive_fn_sparsity", "fn_sparsity_lambda": cfg.prune.fn_sparsity_lambda},
          extra_loss=sparsity_penalty(cfg.prune.fn_sparsity_lambda), progress=progress, description="FN sparsity")
    return model
