"""Pruning criteria: one torch-pruning `Importance` per criterion, in a registry.

Each criterion scores the output channels of a conv block (conv -> FeatureNorm -> ReLU); the
group's root is that conv. torch-pruning's own importances read only Conv/Linear/BN/LN (its
BN-scale importance ignores FeatureNorm), hence these. Scores that need data are computed once
in `prepare` from calibration batches of the training split, on the unpruned model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ..model import SegDecNet
from ..training import Batch, batch_losses

CRITERIA: dict[str, type["Criterion"]] = {}


def register(name: str) -> Callable[[type["Criterion"]], type["Criterion"]]:
    def wrap(cls: type[Criterion]) -> type[Criterion]:
        cls.name = name
        CRITERIA[name] = cls
        return cls

    return wrap


def conv_blocks(model: SegDecNet) -> dict[nn.Conv2d, nn.Sequential]:
    """Every conv block of the volume and the extractor, keyed by its conv."""
    return {m[0]: m for m in list(model.volume) + list(model.extractor) if isinstance(m, nn.Sequential)}


class Criterion(tp.importance.Importance):
    """Scores per output channel of each block's conv; higher = keep."""

    name = "base"

    def __init__(self, seed: int = 0, **options: float) -> None:
        self.seed = seed
        self.options = options
        self.scores: dict[nn.Conv2d, torch.Tensor] = {}

    def prepare(self, model: SegDecNet, batches: Sequence[Batch]) -> None:
        with torch.no_grad():
            self.scores = {conv: self.score_block(conv, block).detach().float() for conv, block in conv_blocks(model).items()}

    def score_block(self, conv: nn.Conv2d, block: nn.Sequential) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, group: tp.Group) -> torch.Tensor:
        root, idxs = group[0].dep.target.module, group[0].idxs
        if root not in self.scores:
            raise KeyError(f"{self.name}: no scores for {root}; call prepare() on this model first")
        return self.scores[root][list(idxs)]


def l1_filters(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.abs().sum(dim=(1, 2, 3))


@register("l1")
class L1(Criterion):
    """L1 norm of each output filter's weights."""

    def score_block(self, conv, block):
        return l1_filters(conv)


@register("fn_scale")
class FeatureNormScale(Criterion):
    """|FeatureNorm scale| per channel (Network Slimming's gamma)."""

    def score_block(self, conv, block):
        return block[1].scale.abs().flatten()


@register("random")
class Random(Criterion):
    """Seeded random scores: the control every criterion must beat."""

    def score_block(self, conv, block):
        gen = torch.Generator().manual_seed(self.seed * 1000 + conv.out_channels * 7 + conv.kernel_size[0])
        return torch.rand(conv.out_channels, generator=gen)


def _capture(model: SegDecNet, keep_grad: bool) -> tuple[dict[nn.Conv2d, torch.Tensor], list]:
    """Hook every block's output (after ReLU); returns (conv -> activation, hook handles)."""
    acts: dict[nn.Conv2d, torch.Tensor] = {}
    handles = []
    for conv, block in conv_blocks(model).items():
        def hook(_m, _inp, out, conv=conv):
            if keep_grad:
                out.retain_grad()
            acts[conv] = out
        handles.append(block.register_forward_hook(hook))
    return acts, handles


@register("defect_grad_act")
class DefectGradAct(Criterion):
    """C2: |sum over positions of activation x d(decision loss)/d(activation)| per channel,
    averaged over defective calibration images (full decision gradient, no flow adjustment)."""

    def prepare(self, model, batches):
        model.eval()
        scale, model.decision_grad_scale = model.decision_grad_scale, 1.0
        sums: dict[nn.Conv2d, torch.Tensor] = {}
        count = 0
        acts, handles = _capture(model, keep_grad=True)
        try:
            for batch in batches:
                pos = batch["label"][:, 0] > 0.5
                if not pos.any():
                    continue
                model.zero_grad()
                dec, _ = model(batch["image"][pos])
                F.binary_cross_entropy_with_logits(dec, batch["label"][pos], reduction="sum").backward()
                for conv, a in acts.items():
                    per_image = (a * a.grad).sum(dim=(2, 3)).abs().detach()  # [B, C]
                    sums[conv] = sums.get(conv, 0) + per_image.sum(dim=0)
                count += int(pos.sum())
        finally:
            for h in handles:
                h.remove()
            model.decision_grad_scale = scale
            model.zero_grad()
        if count == 0:
            raise ValueError("ours_c2 needs defective images in the calibration batches")
        self.scores = {conv: s / count for conv, s in sums.items()}


@register("l1_decorrelated")
class L1Decorrelated(Criterion):
    """C3: (L1 / max L1 of the layer) x (1 - lambda x strongest |Pearson r| with another channel),
    correlations of activations over calibration images. Constant channels count as r = 1."""

    def prepare(self, model, batches):
        lam = float(self.options.get("lam", 0.5))
        model.eval()
        stats: dict[nn.Conv2d, list] = {}
        acts, handles = _capture(model, keep_grad=False)
        try:
            with torch.no_grad():
                for batch in batches:
                    model(batch["image"])
                    for conv, a in acts.items():
                        x = a.transpose(0, 1).reshape(a.shape[1], -1).double()  # [C, positions]
                        s = stats.setdefault(conv, [0, 0.0, 0.0])
                        s[0] += x.shape[1]
                        s[1] = s[1] + x.sum(dim=1)
                        s[2] = s[2] + x @ x.T
        finally:
            for h in handles:
                h.remove()
        self.scores = {}
        for conv, (n, sx, sxx) in stats.items():
            mean = sx / n
            cov = sxx / n - torch.outer(mean, mean)
            std = cov.diagonal().clamp_min(0).sqrt()
            corr = cov / torch.outer(std, std)
            corr = torch.where(torch.isfinite(corr), corr.abs(), torch.ones_like(corr)).fill_diagonal_(0)
            strongest = corr.max(dim=1).values if len(corr) > 1 else torch.zeros(1, dtype=corr.dtype)
            l1 = l1_filters(conv).double()
            self.scores[conv] = (l1 / l1.max() * (1 - lam * strongest.clamp(0, 1))).float().detach()


@register("taylor")
class TaylorFO(Criterion):
    """C4: sum over each filter of |w x dL/dw|, L = segmentation + delta x decision loss,
    gradients accumulated over the calibration batches (full gradient flow)."""

    def prepare(self, model, batches):
        delta = float(self.options.get("delta", 1.0))
        model.eval()
        scale, model.decision_grad_scale = model.decision_grad_scale, 1.0
        convs = list(conv_blocks(model))
        model.zero_grad()
        try:
            for batch in batches:
                loss_seg, loss_dec = batch_losses(model, batch, weighted=True)
                (loss_seg + delta * loss_dec).backward()
            self.scores = {c: (c.weight * c.weight.grad).abs().sum(dim=(1, 2, 3)).detach() for c in convs}
        finally:
            model.decision_grad_scale = scale
            model.zero_grad()


def _check_method_table() -> None:
    """Every method names a registered criterion (methods.py is a leaf module, so check here)."""
    from .methods import METHODS

    missing = {m.name: m.criterion for m in METHODS.values() if m.criterion not in CRITERIA}
    if missing:
        raise RuntimeError(f"methods name unregistered criteria: {missing}")


_check_method_table()
