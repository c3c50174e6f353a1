"""Structural surgery: torch-pruning's dependency graph + our criteria at a ratio.

The graph carries every channel dependency (FeatureNorm scale/bias along dim 1, the 1x1 seg
head's inputs, and the cat of the 1024-channel volume with the 1-channel mask feeding the
decision extractor). Scores for every layer are computed on the unpruned model, then each
prunable conv loses its lowest-scoring output channels. Iterative pruning calls this once per
round with the widths `round_widths` plans, so the scores are recomputed on the current model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from ..model import FeatureNorm, SegDecNet, Widths, prunable_convs
from .criteria import CRITERIA, Batch
from .methods import Method

log = logging.getLogger(__name__)


class FeatureNormPruner(BasePruningFunc):
    """Tells torch-pruning how to slice FeatureNorm: scale and bias [1,C,1,1] along dim 1."""

    def prune_out_channels(self, layer: FeatureNorm, idxs: Sequence[int]) -> FeatureNorm:
        keep = sorted(set(range(layer.num_features)) - set(idxs))
        layer.num_features = len(keep)
        layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 1)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 1)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: FeatureNorm) -> int:
        return layer.num_features

    get_in_channels = get_out_channels


def build_graph(model: SegDecNet, example: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(
        model, example, forward_fn=lambda m, x: m(x)[0], customized_pruners={FeatureNorm: FeatureNormPruner()}, verbose=False
    )


def _align(width: int, ratio: float, n: int) -> int:
    """C1: the kept width rounded to the nearest multiple of n (at least n); narrower layers stay."""
    if width <= n:
        return width
    return min(width, max(n, int(round(width * (1 - ratio) / n)) * n))


def target_widths(widths: Widths, ratio: float, include_extractor: bool = False, round_to: int | None = None) -> Widths:
    """Widths after removing `ratio` of each prunable layer's channels (at least one kept)."""
    if not 0 < ratio < 1:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")

    def keep(w: int) -> int:
        if round_to:
            return _align(w, ratio, round_to)
        k = w - int(w * ratio)
        if k < 1:  # unreachable for ratio < 1, but say so rather than build a 0-channel layer
            log.warning("a layer of %d channels would drop to 0 at ratio %.2f; keeping 1", w, ratio)
        return max(1, k)

    ext = tuple(keep(w) for w in widths.extractor) if include_extractor else widths.extractor
    return Widths(volume=tuple(keep(w) for w in widths.volume), extractor=ext)


def round_widths(start: Widths, end: Widths, steps: int) -> list[Widths]:
    """Iterative pruning's widths after each of `steps` rounds: each layer loses an equal share
    (rounded) of the channels it loses in all; the last round ends exactly at `end`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def at(a: tuple[int, ...], b: tuple[int, ...], i: int) -> tuple[int, ...]:
        return tuple(x - round((x - y) * i / steps) for x, y in zip(a, b))

    return [Widths(at(start.volume, end.volume, i), at(start.extractor, end.extractor, i)) for i in range(1, steps + 1)]


def prune_model(
    model: SegDecNet,
    method: Method,
    ratio: float,
    batches: Sequence[Batch],
    input_size: tuple[int, int],
    round_to: int = 32,
    include_extractor: bool = False,
    options: dict | None = None,
    seed: int = 0,
) -> tuple[SegDecNet, dict[str, list[int]]]:
    """A pruned copy of `model` (CPU; the original is untouched) with `ratio` of each prunable
    layer removed and, per pruned conv, the indices of the output channels it removed (kept in
    checkpoint metadata for provenance)."""
    target = target_widths(model.widths, ratio, include_extractor, round_to if method.aligned else None)
    return prune_to_widths(model, method, target, batches, input_size, include_extractor, options, seed)


def channel_scores(model: SegDecNet, method: Method, batches: Sequence[Batch], include_extractor: bool = False,
                   options: dict | None = None, seed: int = 0) -> list[torch.Tensor]:
    """The criterion's score of every output channel of each prunable conv (in `prunable_convs`
    order), computed on a CPU copy of `model` in eval mode, with the full decision gradient."""
    model = copy.deepcopy(model).cpu().eval()
    model.decision_grad_scale = 1.0
    criterion = CRITERIA[method.criterion](seed=seed, **(options or {}))
    criterion.prepare(model, [{k: v.cpu() for k, v in b.items()} for b in batches])
    return [criterion.scores[conv] for conv in prunable_convs(model, include_extractor)]


def prune_to_widths(
    model: SegDecNet,
    method: Method,
    target: Widths,
    batches: Sequence[Batch],
    input_size: tuple[int, int],
    include_extractor: bool = False,
    options: dict | None = None,
    seed: int = 0,
    scores: Sequence[torch.Tensor] | None = None,
) -> tuple[SegDecNet, dict[str, list[int]]]:
    """A pruned copy of `model` with exactly the widths `target`, lowest scores removed
    (`scores`: from `channel_scores` on this same model, when the caller has them already)."""
    if scores is None:
        scores = channel_scores(model, method, batches, include_extractor, options, seed)
    model = copy.deepcopy(model).cpu().eval()
    graph = build_graph(model, torch.rand(1, model.in_channels, *input_size))
    convs = prunable_convs(model, include_extractor)
    keeps = list(target.volume) + (list(target.extractor) if include_extractor else [])
    plan: list[tuple[nn.Conv2d, list[int]]] = []
    for conv, keep, score in zip(convs, keeps, scores, strict=True):
        if not 1 <= keep <= conv.out_channels:
            raise ValueError(f"cannot prune a layer of {conv.out_channels} channels to {keep}")
        order = torch.argsort(score, stable=True)  # ties: lower index pruned first, deterministic
        plan.append((conv, sorted(order[: conv.out_channels - keep].tolist())))
    names = {m: n for n, m in model.named_modules()}
    removed = {names[conv]: drop for conv, drop in plan}
    for conv, drop in plan:
        if drop:
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop).prune()
    model.widths = Widths(
        volume=tuple(c.out_channels for c in prunable_convs(model)),
        extractor=tuple(c.out_channels for c in prunable_convs(model, True)[9:]),
    )
    assert model.widths == target, (model.widths, target)
    return model, removed
