"""SegDecNet (Bozic et al., Computers in Industry 2021), parametrised by its channel widths.

Module names and order follow the paper's reference code, so a `state_dict` trained with that
code loads here unchanged. A pruned model is this same class with narrower widths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .architecture import DECISION_RESETS

DEFAULT_VOLUME = (32, 64, 64, 64, 64, 64, 64, 64, 1024)
DEFAULT_EXTRACTOR = (8, 16, 32)
# (kernel, padding) of the nine volume convs and the three extractor convs.
_VOLUME_KERNELS = (5, 5, 5, 5, 5, 5, 5, 5, 15)
_POOL_BEFORE = {1, 4, 8}  # a 2x2 max-pool precedes these volume convs
FEATURENORM_EPS = 1e-3


@dataclass(frozen=True)
class Widths:
    """Output channels of every prunable conv: nine in the volume, three in the extractor."""

    volume: tuple[int, ...] = DEFAULT_VOLUME
    extractor: tuple[int, ...] = DEFAULT_EXTRACTOR

    def __post_init__(self) -> None:
        if len(self.volume) != 9 or len(self.extractor) != 3:
            raise ValueError(f"widths need 9 volume and 3 extractor entries, got {self}")
        if min(self.volume + self.extractor) < 1:
            raise ValueError(f"every width must be >= 1, got {self}")
        object.__setattr__(self, "volume", tuple(int(w) for w in self.volume))
        object.__setattr__(self, "extractor", tuple(int(w) for w in self.extractor))

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Widths":
        return cls(volume=tuple(d["volume"]), extractor=tuple(d["extractor"]))


class FeatureNorm(nn.Module):
    """Per-sample, per-channel normalisation over H and W, as in the paper's code.

    y = scale * (x - mean) / sqrt(std + eps) + bias, with the unbiased std. The std is written
    as mean/variance arithmetic (not `torch.std`) so that every ONNX exporter handles it.
    """

    def __init__(self, num_features: int, eps: float = FEATURENORM_EPS) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2] * x.shape[-1]
        rounded = x.dtype != torch.float32  # a bf16 conv output (autocast): statistics in FP32
        if rounded:
            x = x.float()
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        var = (centred * centred).sum(dim=(2, 3), keepdim=True) / (n - 1)
        if rounded:  # a channel bf16 rounded to a constant has var 0, where sqrt's gradient is infinite
            var = var.clamp_min(1e-12)  # a zero gradient there, not NaN; FP32 and its ONNX graph unchanged
        return self.scale * centred / (var.sqrt() + self.eps).sqrt() + self.bias


class GradientMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward (paper: 0 = stop)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def conv_block(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Conv (no bias, Xavier-normal) -> FeatureNorm -> ReLU, 'same' padding."""
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    nn.init.xavier_normal_(conv.weight)
    return nn.Sequential(conv, FeatureNorm(cout), nn.ReLU())


class SegDecNet(nn.Module):
    """Segmentation volume + decision head. Returns (decision logit [B,1], seg logits [B,1,H/8,W/8]).

    `decision_grad_scale` scales the gradient flowing from the decision head into the
    segmentation path (the paper's gradient-flow adjustment uses 0). It is a plain attribute,
    not state: training sets it; 1.0 leaves the graph untouched.
    """

    def __init__(self, in_channels: int = 3, widths: Widths | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.widths = widths or Widths()
        self.decision_grad_scale = 1.0
        layers: list[nn.Module] = []
        cin = in_channels
        for i, (cout, k) in enumerate(zip(self.widths.volume, _VOLUME_KERNELS)):
            if i in _POOL_BEFORE:
                layers.append(nn.MaxPool2d(2))
            layers.append(conv_block(cin, cout, k))
            cin = cout
        self.volume = nn.Sequential(*layers)
        seg_conv = nn.Conv2d(cin, 1, 1, bias=False)
        nn.init.xavier_normal_(seg_conv.weight)
        self.seg_mask = nn.Sequential(seg_conv, FeatureNorm(1))
        ext: list[nn.Module] = []
        cin = cin + 1
        for cout in self.widths.extractor:
            ext += [nn.MaxPool2d(2), conv_block(cin, cout, 5)]
            cin = cout
        self.extractor = nn.Sequential(*ext)
        self.fc = nn.Linear(2 * cin + 2, 1)

    def _adjust(self, x: torch.Tensor) -> torch.Tensor:
        if self.decision_grad_scale == 1.0 or not torch.is_grad_enabled():
            return x
        return GradientMultiply.apply(x, self.decision_grad_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.volume(x))

    def heads(self, volume: torch.Tensor, seg_mask: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation and decision on a computed volume; `seg_mask` stands in for the model's
        own seg head (two read-outs of one volume compared without computing it twice)."""
        seg = (self.seg_mask if seg_mask is None else seg_mask)(volume)
        features = self.extractor(self._adjust(torch.cat([volume, seg], dim=1)))
        pooled = [
            features.amax(dim=(2, 3)),
            features.mean(dim=(2, 3)),
            self._adjust(seg.amax(dim=(2, 3))),
            self._adjust(seg.mean(dim=(2, 3))),
        ]
        return self.fc(torch.cat(pooled, dim=1)), seg


def prunable_convs(model: SegDecNet, include_extractor: bool = False) -> list[nn.Conv2d]:
    """The convs whose output channels pruning may remove (never the seg head or the fc)."""
    blocks = [m for m in model.volume if isinstance(m, nn.Sequential)]
    if include_extractor:
        blocks += [m for m in model.extractor if isinstance(m, nn.Sequential)]
    return [b[0] for b in blocks]


@dataclass(frozen=True)
class BlockShape:
    """One prunable conv block as the budget planner sees it: its input (before the max-pool
    that may precede it), its conv's channels and kernel."""

    name: str
    cin: int
    cout: int
    kernel: int
    pool: bool
    height: int  # of the block's input, before the pool
    width: int


def block_shapes(widths: Widths, in_channels: int, height: int, width: int,
                 include_extractor: bool = False) -> list[BlockShape]:
    """The prunable blocks of SegDecNet(widths) at an input of height x width, in order."""
    out, cin, h, w = [], in_channels, height, width
    for i, (cout, k) in enumerate(zip(widths.volume, _VOLUME_KERNELS)):
        out.append(BlockShape(f"volume.{i}", cin, cout, k, i in _POOL_BEFORE, h, w))
        if i in _POOL_BEFORE:
            h, w = h // 2, w // 2
        cin = cout
    if include_extractor:
        cin += 1  # the seg mask joins the volume
        for i, cout in enumerate(widths.extractor):
            out.append(BlockShape(f"extractor.{i}", cin, cout, 5, True, h, w))
            h, w, cin = h // 2, w // 2, cout
    return out


def conv_macs(widths: Widths, in_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of every conv and the fc, from the shapes alone (the budget planner
    calls this thousands of times; torch-pruning's counter, which runs the model, agrees within
    0.3 %: it also counts the element-wise ops)."""
    total = 0
    for b in block_shapes(widths, in_channels, height, width, include_extractor=True):
        h, w = (b.height // 2, b.width // 2) if b.pool else (b.height, b.width)
        total += h * w * b.kernel**2 * b.cin * b.cout
    h, w = height // 8, width // 8
    total += h * w * widths.volume[-1]  # 1x1 seg head
    return total + 2 * widths.extractor[-1] + 2


def reset_decision(model: SegDecNet, part: str) -> None:
    """Make the decision head unsure again after pruning: "fc" zeroes the final linear layer
    (every image scores 0.5), "head" also re-initialises the extractor's convs and norms.
    A head fitted to the unpruned features can be confidently wrong on the pruned ones (the
    tiles: decision loss 1.0 in the first epoch, a coin toss is 0.69). Opt-in: measured on
    the demo only (docs/recovery.md)."""
    if part not in DECISION_RESETS:
        raise ValueError(f"unknown decision reset {part!r}; one of {', '.join(DECISION_RESETS)}")
    if part == "none":
        return
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        if part == "head":
            for block in (m for m in model.extractor if isinstance(m, nn.Sequential)):
                nn.init.xavier_normal_(block[0].weight)
                block[1].scale.fill_(1.0)
                block[1].bias.zero_()


def widths_from_state_dict(state: dict[str, torch.Tensor]) -> Widths:
    """Read the widths off the conv weight shapes (works for the paper's own state_dicts)."""
    try:
        vol = [state[f"volume.{i}.0.weight"].shape[0] for i in _volume_indices()]
        ext = [state[f"extractor.{i}.0.weight"].shape[0] for i in (1, 3, 5)]
    except KeyError as exc:
        raise ValueError(f"not a SegDecNet state_dict: missing {exc}") from None
    return Widths(volume=tuple(vol), extractor=tuple(ext))


def _volume_indices() -> list[int]:
    idx, out = 0, []
    for i in range(9):
        if i in _POOL_BEFORE:
            idx += 1
        out.append(idx)
        idx += 1
    return out




def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
