"""What to prune to: the widths for a target (a uniform ratio, or a budget met by global
allocation), with what they are predicted to cost; latency plans are checked by measurement."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import Config
from ..model import SegDecNet, Widths, conv_macs, prunable_convs
from .allocate import Budget, BudgetError, allocate, narrowest
from .criteria import Batch
from .methods import Method, budget_model_name, model_name
from .prune import channel_scores, target_widths

if TYPE_CHECKING:
    from ..latency_table import LatencyTable

Target = float | Budget  # a share of every layer's channels to remove, or a budget to meet
# (model, method, batches, include_extractor, options, seed) -> scores per prunable conv: `channel_scores`'s signature
ScoreFn = Callable[[SegDecNet, Method, Sequence[Batch], bool, dict, int], list[torch.Tensor]]


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


def verified(widths: Widths, target_ms: float, budget: float, plan: Callable[[float], Widths],
             table: LatencyTable) -> tuple[Widths, float, list[dict]]:
    """Time the planned architecture itself (random weights, alternating with the baseline and
    scaled to the table's baseline; seconds) and, while it misses the target by more than
    PLAN_TOLERANCE, plan again for the table budget scaled by target/measured.
    The table's sum of isolated blocks is off by up to ~20 % for very narrow networks on a CPU
    (docs/budgets.md); this closes the loop before any fine-tuning is spent."""
    from ..latency_table import network_timer

    checks, best = [], None
    with network_timer(table.key, table.baseline_ms) as time_network:
        for _ in range(PLAN_CHECKS):
            measured = time_network(widths)
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
                table: LatencyTable | None = None, score: ScoreFn = channel_scores) -> Planned:
    """Widths for `target`: one ratio for every layer, or global allocation under a budget
    (MACs from the shapes; latency from `table`, which must be for the budget's runtime; the
    scores it allocates by from `score`, `channel_scores` or a memo of it)."""
    p, c = cfg.prune, source.in_channels
    size = (cfg.data.input_height, cfg.data.input_width)
    scores, checks, measured = None, [], None
    if isinstance(target, Budget):
        replan, scores, budget = budget_plan(source, method, target, cfg, batches, table, score)
        widths = replan(budget)
        if target.kind == "latency":
            widths, measured, checks = verified(widths, target.value, budget, replan, table)
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


def criterion_options(cfg: Config) -> dict:
    """The options the criteria take from the config (C3's lambda, C4's decision-loss weight)."""
    return {"lam": cfg.prune.c3_lambda, "delta": cfg.train.delta}


def budget_plan(source: SegDecNet, method: Method, target: Budget, cfg: Config, batches: Sequence[Batch],
                table: LatencyTable | None, score: ScoreFn = channel_scores
                ) -> tuple[Callable[[float], Widths], list[torch.Tensor], float]:
    """Global allocation of `source`'s channels under `target`: (budget in the cost's units ->
    widths), the criterion's scores it allocates by, and the budget for `target`. A target the
    narrowest allowed network cannot meet (for latency: measured, not predicted) fails before
    any scoring."""
    p = cfg.prune
    cost = _cost(source, target, cfg, table)
    full = [conv.out_channels for conv in prunable_convs(source, p.include_extractor)]
    narrow = narrowest(full, p.min_width, p.align, p.min_keep)
    floor, budget = cost(narrow), target.value  # budget: in the cost's units (MAC share, or table ms)
    if target.kind == "latency" and floor > target.value:  # the table over-predicts narrow networks:
        from ..latency_table import measure_widths  # ask the runtime before saying no

        measured = measure_widths(table.key, _as_widths(narrow, source.widths), table.baseline_ms)
        floor, budget = measured, target.value * floor / measured
    if floor > target.value:
        unit, reach = ("", f"{floor:.1%} of the baseline's MACs") if target.kind == "macs" else (" ms", f"{floor:.2f} ms")
        raise BudgetError(f"the target {target.value:g}{unit} is out of reach: the narrowest network allowed (prune."
                          f"min_width {p.min_width}, min_keep {p.min_keep}, align {p.align}) needs {reach}")
    scores = score(source, method, batches, p.include_extractor, criterion_options(cfg), p.seed)
    arrays = [s.numpy() for s in scores]

    def plan(budget: float) -> Widths:
        return _as_widths(allocate(arrays, full, cost, budget, p.min_width, p.align, p.min_keep), source.widths)

    return plan, scores, budget
