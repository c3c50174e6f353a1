"""Global channel allocation: the widths that meet a budget (MACs or predicted latency) while
removing the least importance per unit of cost saved.

Each criterion's scores are normalised within their layer to shares of the layer's total
(a channel's score = the fraction of its layer's importance it carries), so layers of 32 and
1024 channels compare. Channels go in chunks of `align` (the widths stay multiples of it, which
is what the runtime runs fast), from the layer whose next chunk loses the least importance per
unit of cost saved (see `retention_loss`), until the budget holds; then chunks are given back,
most importance per cost first, while it still holds, so the plan uses the budget rather than
undershooting by a chunk.
Costs are re-evaluated on the current widths at every step: the cost of a channel depends on
its neighbours' widths (a conv's MACs are cin x cout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .methods import BUDGET_KINDS


class BudgetError(ValueError):
    """The budget cannot be met (or makes no sense); the message says what can."""


@dataclass(frozen=True)
class Budget:
    """`macs`: the share of the baseline's MACs to keep, in (0, 1); `latency`: milliseconds of
    batch-1 latency in `runtime` at `precision` (predicted from the run's latency table)."""

    kind: str
    value: float
    runtime: str = "onnxruntime"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise BudgetError(f"unknown budget kind {self.kind!r}; known: {', '.join(BUDGET_KINDS)}")
        if self.kind == "macs" and not 0 < self.value < 1:
            raise BudgetError(f"--target-macs must be in (0, 1) (the share of the baseline's MACs to keep), got {self.value}")
        if self.kind == "latency" and not self.value > 0:
            raise BudgetError(f"--target-latency-ms must be > 0, got {self.value}")


def normalise(scores: np.ndarray) -> np.ndarray:
    """Shares of the layer's total score (uniform when the layer's scores are all zero)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0, None)
    total = s.sum()
    return s / total if total > 0 else np.full(len(s), 1.0 / len(s))


def retention_loss(scores: np.ndarray) -> np.ndarray:
    """loss[k] = -log(share of the layer's importance kept) with its k lowest channels removed.

    Layers act in series: one that keeps a share q of its importance passes on about q of what it
    was given, so the network keeps the product of the q's; minimising the sum of -log q (not
    the sum of shares removed, which is linear and drives one layer to its floor while others
    stay whole) spreads the cuts and keeps every layer's best channels.
    """
    kept = 1.0 - np.concatenate([[0.0], np.cumsum(np.sort(normalise(scores)))])
    return -np.log(np.clip(kept, 1e-12, None))


def floor_width(full: int, min_width: int, align: int, min_keep: float = 0.0) -> int:
    """The narrowest a layer may get: `min_width` channels and `min_keep` of its own, rounded up to
    `align`, never above its width."""
    least = max(min_width, 1, int(np.ceil(min_keep * full)))
    return min(full, -(-least // align) * align)


def allocate(scores: Sequence[np.ndarray], full: Sequence[int], cost: Callable[[tuple[int, ...]], float],
             budget: float, min_width: int = 8, align: int = 1, min_keep: float = 0.0) -> tuple[int, ...]:
    """Widths (one per layer) with cost(widths) <= budget; see the module docstring.

    `scores[l]` holds layer l's per-channel scores (higher = keep; normalised here), `full[l]` its
    current width. A layer only loses its lowest-scoring channels, so the plan is a width per layer.
    """
    if align < 1:
        raise BudgetError(f"align must be >= 1, got {align}")
    layers = range(len(full))
    lost = [retention_loss(s) for s in scores]
    floors = [floor_width(f, min_width, align, min_keep) for f in full]
    widths = list(full)

    def with_width(l: int, w: int) -> tuple[int, ...]:
        return tuple(w if i == l else x for i, x in enumerate(widths))

    def up(l: int) -> int | None:
        return min(full[l], (widths[l] // align + 1) * align) if widths[l] < full[l] else None

    current = cost(tuple(widths))
    while current > budget:
        best: tuple[float, int, int, float] | None = None
        for l in layers:
            w = widths[l]
            while (w := (w - 1) // align * align) >= floors[l]:  # the next narrower width that saves
                if (trial := cost(with_width(l, w))) < current:  # anything (a latency table is flat
                    break  # between the runtime's channel steps)
            else:
                continue
            value = (lost[l][full[l] - w] - lost[l][full[l] - widths[l]]) / (current - trial)
            if best is None or value < best[0]:
                best = (value, l, w, trial)
        if best is None:
            raise BudgetError(f"cannot reach the budget {budget:.6g}: the narrowest widths allowed (prune.min_width "
                              f"{min_width}, prune.min_keep {min_keep}, prune.align {align}) cost {current:.6g}")
        _, l, widths[l], current = best
    while True:
        best = None
        for l in layers:
            if (w := up(l)) is None or (trial := cost(with_width(l, w))) > budget:
                continue
            value = (lost[l][full[l] - widths[l]] - lost[l][full[l] - w]) / max(trial - current, 1e-12)
            if best is None or value > best[0]:
                best = (value, l, w, trial)
        if best is None:
            return tuple(widths)
        _, l, widths[l], current = best


def narrowest(full: Sequence[int], min_width: int, align: int, min_keep: float = 0.0) -> tuple[int, ...]:
    """The widths allocation can reach at most: every layer at its floor."""
    return tuple(floor_width(f, min_width, align, min_keep) for f in full)
