"""ONNX Runtime INT8 that keeps the FP32 model's AP: calibration method and FP32 layers chosen
per model on the validation split (never the test split).

Search (each candidate quantized from the same pre-processed graph, calibrated once per method):
  1. every calibration method in `calibrations`, all convolutions INT8;
  2. with the best method of step 1: each layer group of `fp32_candidates` kept in FP32 alone,
     then all of them together.
With `early_exit` (the demo's setting) the search stops at the first candidate whose validation
AP is within `tolerance` of the FP32 model's (or above it): on the demo the first (minmax, all
INT8) usually is, and each candidate costs a calibration, a quantization and a validation pass.
Where validation AP saturates (KSDD1: 1.0) it cannot tell candidates apart, so by default every
candidate runs and, among those within tolerance, the one whose decision
logits stay closest to FP32's (mean |difference|) wins: validation AP on a few dozen defects
moves by a whole ranking swap, the logits show every image. When no candidate is within
tolerance, the highest validation AP wins. Every candidate tried is recorded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .checkpoint import Threshold
from .data.dataset import KSDD2Dataset
from .evaluation import classification_metrics, predict
from .runtimes.base import FP32_GROUPS, INT8_CALIBRATIONS
from .runtimes.onnxruntime_runtime import OnnxRuntime, conv_nodes, prepare_for_quantization, quantize_prepared


@dataclass(frozen=True)
class Int8Search:
    """What the search may try; from `deploy.int8_*` in the config."""

    calibrations: tuple[str, ...] = ("minmax", "entropy", "percentile")
    fp32_candidates: tuple[str, ...] = ("first_conv", "seg_head", "decision_head")
    op_types: tuple[str, ...] = ("Conv",)
    tolerance: float = 0.005  # validation AP below FP32's that still counts as kept
    early_exit: bool = False  # stop at the first candidate within tolerance

    def __post_init__(self) -> None:
        bad = [c for c in self.calibrations if c not in INT8_CALIBRATIONS]
        bad += [g for g in self.fp32_candidates if g not in FP32_GROUPS]
        if bad or not self.calibrations:
            raise ValueError(f"INT8 search: unknown {bad or 'empty calibrations'}; calibrations "
                             f"{', '.join(INT8_CALIBRATIONS)}; FP32 layer groups {', '.join(FP32_GROUPS)}")

    @classmethod
    def from_config(cls, deploy) -> "Int8Search":
        return cls(tuple(deploy.int8_calibrations), tuple(deploy.int8_fp32_candidates), tuple(deploy.int8_op_types),
                   deploy.int8_ap_tolerance, deploy.int8_early_exit)


@dataclass
class Int8Choice:
    """What was chosen for one model, and why (stored in the INT8 file and the results file)."""

    calibration: str
    fp32_layers: list[str]
    val_ap: float
    val_ap_fp32: float
    logit_error: float  # mean |INT8 - FP32| decision logit on validation images
    within_tolerance: bool
    tolerance: float
    val_images: int
    candidates: list[dict] = field(default_factory=list)
    early_exit: bool = False  # the search stopped at the first candidate within tolerance

    def to_dict(self) -> dict:
        return asdict(self)


def _logits(scores: np.ndarray) -> np.ndarray:
    p = np.clip(scores.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _pick(rows: list[dict], ref_ap: float, tolerance: float) -> dict:
    """Closest logits to FP32 among those that keep validation AP; else the best validation AP."""
    kept = [r for r in rows if r["val_ap"] >= ref_ap - tolerance]
    return min(kept, key=lambda r: r["logit_error"]) if kept else max(rows, key=lambda r: r["val_ap"])


def choose_int8(fp32_path: Path, calibration: np.ndarray, validation: KSDD2Dataset, search: Int8Search = Int8Search(),
                on_candidate: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, Int8Choice, Threshold]:
    """The chosen INT8 graph, the choice, and the INT8 model's own validation best-F1 threshold
    (its scores shift a little from FP32's)."""
    import torch

    labels = validation.labels
    threads = torch.get_num_threads()  # this process's share of the cores (a `run --workers` worker: not all)
    ref = predict(OnnxRuntime(fp32_path, threads=threads), validation, batch_size=8).scores
    ref_ap = classification_metrics(labels, ref)["ap"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre = prepare_for_quantization(fp32_path, tmp / "pre.onnx")
        graph = onnx.load(str(pre), load_external_data=False)

        def trial(method: str, groups: Sequence[str]) -> dict:
            t0 = time.perf_counter()
            name = f"{method}" + "".join(f"+fp32:{g}" for g in groups)
            if on_candidate:
                on_candidate(name)
            exclude = conv_nodes(graph, [p for g in groups for p in FP32_GROUPS[g]])
            path = quantize_prepared(pre, tmp / f"c{len(rows)}.onnx", calibration, search.op_types, method, exclude,
                                     cache=tmp / f"{method}.json")
            preds = predict(OnnxRuntime(path, threads=threads, precision="int8"), validation, batch_size=8)
            m = classification_metrics(labels, preds.scores)
            rows.append({"calibration": method, "fp32_layers": list(groups), "val_ap": m["ap"],
                         "logit_error": float(np.mean(np.abs(_logits(preds.scores) - _logits(ref)))),
                         "seconds": time.perf_counter() - t0, "path": path, "scores": preds.scores})
            return rows[-1]

        def holds(row: dict) -> bool:
            return row["val_ap"] >= ref_ap - search.tolerance

        def order():
            """The candidates in search order; step 2 starts from step 1's best calibration."""
            yield from ((m, ()) for m in search.calibrations)
            best = _pick(rows, ref_ap, search.tolerance)["calibration"]
            groups = list(search.fp32_candidates)
            yield from ((best, (g,)) for g in groups)
            if len(groups) > 1:
                yield best, tuple(groups)

        stopped = False
        for method, groups in order():
            if holds(trial(method, groups)) and search.early_exit:
                stopped = True
                break
        chosen = rows[-1] if stopped else _pick(rows, ref_ap, search.tolerance)
        kept = holds(chosen)
        m = classification_metrics(labels, chosen["scores"])
        model = onnx.load(str(chosen["path"]))
    choice = Int8Choice(chosen["calibration"], chosen["fp32_layers"], chosen["val_ap"], ref_ap, chosen["logit_error"],
                        kept, search.tolerance, len(labels),
                        [{k: v for k, v in r.items() if k not in ("path", "scores")} for r in rows], stopped)
    return model, choice, Threshold(m["best_threshold"], "validation best-F1 (INT8 model)", m["best_f1"])
