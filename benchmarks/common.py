"""What the benchmark scripts share: the run's state (baseline, splits, teacher), test metrics."""

from __future__ import annotations

import statistics
from functools import cached_property

import numpy as np
from sklearn.metrics import average_precision_score

from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for
from segdec_prune.evaluation import evaluate_predictions, predict
from segdec_prune.model import SegDecNet
from segdec_prune.runtimes import TorchRuntime
from segdec_prune.stages import RunState


class Bench(RunState):
    """A trained run (`segdec-prune train --config CFG` first), as `run` sees it, plus its test split."""

    @cached_property
    def test_set(self) -> KSDD2Dataset:
        return KSDD2Dataset(load_split(self.cfg.data.root, "test", preprocessing_for(self.cfg.data, self.cfg.train)))

    def test_metrics(self, model: SegDecNet) -> dict:
        """AP, AUROC, Dice ... of `model` on the test split (PyTorch, CPU)."""
        return evaluate_predictions(predict(TorchRuntime(model, "cpu"), self.test_set, batch_size=16), self.test_set)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), 0.0
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float]) -> str:
    m, sd = mean_sd(xs)
    return f"{m:.4f} ± {sd:.4f}"


def gap_summary(points: list[float]) -> str:
    """INT8 - FP32 test AP, in points, over models: the range and how many keep FP32's AP."""
    n = len(points)
    return (f"from {min(points):+.2f} to {max(points):+.2f} points; at most 0.5 below FP32: "
            f"{sum(g >= -0.5 for g in points)}/{n}, |gap| <= 0.5: {sum(abs(g) <= 0.5 for g in points)}/{n}")


def paired_ap_interval(labels: np.ndarray, scores: np.ndarray, ref: np.ndarray, draws: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """95 % paired bootstrap interval of AP(scores) - AP(ref) in points: test images drawn with
    replacement, both models scored on the same draw (draws without a defect are skipped). A gap
    inside it is one this test split cannot tell from none."""
    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    gaps = [100 * (average_precision_score(y[i], scores[i]) - average_precision_score(y[i], ref[i]))
            for i in rng.integers(0, len(y), size=(draws, len(y))) if y[i].any()]
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return float(lo), float(hi)
