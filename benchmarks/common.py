"""What the benchmark scripts share: the run's baseline, its data splits, held-out metrics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import cached_property

from segdec_prune.checkpoint import Checkpoint, load_checkpoint
from segdec_prune.config import Config
from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for, train_val_datasets
from segdec_prune.evaluation import evaluate_predictions, predict
from segdec_prune.model import SegDecNet
from segdec_prune.pruning.distill import TeacherOutputs, teacher_outputs
from segdec_prune.runtimes import TorchRuntime


@dataclass
class Bench:
    """A trained run (`segdec-prune train --config CFG` first) and its data, loaded once."""

    cfg: Config

    @cached_property
    def baseline(self) -> Checkpoint:
        return load_checkpoint(self.cfg.run_dir / "models" / "baseline_best.pth")

    @cached_property
    def sets(self) -> tuple[KSDD2Dataset, KSDD2Dataset]:
        return train_val_datasets(self.cfg.data, preprocessing_for(self.cfg.data, self.cfg.train))

    @cached_property
    def test_set(self) -> KSDD2Dataset:
        return KSDD2Dataset(load_split(self.cfg.data.root, "test", preprocessing_for(self.cfg.data, self.cfg.train)))

    @cached_property
    def teacher(self) -> TeacherOutputs:
        return teacher_outputs(self.cfg.run_dir, self.cfg.run_dir / "models" / "baseline_best.pth",
                               self.baseline.model, self.sets[0])

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
