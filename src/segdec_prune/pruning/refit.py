"""Least-squares refit of the 1x1 segmentation head after pruning (the reconstruction step of
He et al. 2017 and ThiNet, on the one layer where it is exact and cheap).

Why: the seg head is a linear read-out of the 1024-channel volume followed by a one-channel
FeatureNorm. Pruning the volume removes most of what it reads, and the FeatureNorm divides by
sqrt(std), not std, so the surviving map is both mis-shaped and squashed towards its (negative)
bias: on the demo at r60 no pixel reaches 0.5 right after pruning (Dice 0) and fine-tuning for a
few epochs does not bring the maps back. Solving for the read-out that reproduces the teacher's
pre-norm map from the pruned volume, on the calibration batches, restores the map before any
gradient step (docs/recovery.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..model import SegDecNet
from .criteria import Batch

RIDGE = 1e-3  # relative to the mean squared feature: keeps the solve well-posed on few images


@torch.no_grad()
def seg_targets(teacher: SegDecNet, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """`teacher`'s pre-norm seg map of each batch (on the CPU): what the refit reproduces. The same
    for every model pruned from one teacher, so callers that prune it several times compute it once."""
    target: list[torch.Tensor] = []
    hook = teacher.seg_mask[0].register_forward_hook(lambda m, inp, out: target.append(out.cpu()))
    mode = teacher.training
    try:
        teacher.eval()
        for b in batches:  # where the teacher is (the baseline may sit on a GPU)
            teacher(b["image"].to(next(teacher.parameters()).device))
    finally:
        hook.remove()
        teacher.train(mode)
    return target


@torch.no_grad()
def refit_seg_head(model: SegDecNet, teacher: SegDecNet | Sequence[torch.Tensor], batches: Sequence[Batch],
                   ridge: float = RIDGE) -> float:
    """Set `model`'s 1x1 seg conv to the ridge least-squares fit of the teacher's pre-norm seg
    output (`teacher`: the model, or its `seg_targets` on these batches) from `model`'s own volume,
    over every pixel of `batches`; nothing else changes (device and train/eval mode included).
    Returns the fit's R^2 (1 = the teacher's map reproduced exactly)."""
    target = seg_targets(teacher, batches) if isinstance(teacher, SegDecNet) else list(teacher)
    feats: list[torch.Tensor] = []
    hook = model.seg_mask[0].register_forward_hook(lambda m, inp, out: feats.append(inp[0].cpu()))
    mode = model.training
    try:
        model.eval()
        for b in batches:
            model(b["image"].to(next(model.parameters()).device))
    finally:
        hook.remove()
        model.train(mode)
    x = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats]).double()
    y = torch.cat([t.reshape(-1) for t in target]).double()
    gram = x.T @ x
    gram += ridge * x.pow(2).mean() * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, x.T @ y)
    residual = y - x @ w
    weight = model.seg_mask[0].weight
    weight.copy_(w.to(weight.dtype).view(1, -1, 1, 1).to(weight.device))
    return float(1 - residual.pow(2).sum() / (y - y.mean()).pow(2).sum().clamp_min(1e-12))
