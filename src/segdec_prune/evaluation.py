"""Metrics as pure functions, and the loop that feeds a data set through a runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from .data.dataset import KSDD2Dataset
from .runtimes.base import Runtime


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray  # bool [N]
    scores: np.ndarray  # sigmoid of the decision logit [N]
    seg_probs: np.ndarray  # sigmoid of the segmentation logits [N, H/8, W/8]
    batch_size: int = 1
    inference_seconds: float = float("nan")  # inside runtime.predict only (no data loading)

    def throughput(self) -> dict[str, float | int]:
        """Images per second over the whole pass, at `batch_size`: a figure from every image, not a few repeats."""
        return {"throughput_ips": len(self.labels) / self.inference_seconds, "throughput_batch": self.batch_size}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80, 80)))


def predict(runtime: Runtime, dataset: KSDD2Dataset, batch_size: int = 8,
            sync: Callable[[], None] | None = None) -> Predictions:
    """Run the whole data set through `runtime`, timing only the runtime calls."""
    scores, segs, seconds = [], [], 0.0
    sync = sync or (lambda: None)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = np.stack([it["image"].numpy() for it in items])
        sync()
        t0 = time.perf_counter()
        dec, seg = runtime.predict(batch)
        sync()
        seconds += time.perf_counter() - t0
        scores.append(sigmoid(dec))
        segs.append(sigmoid(seg[:, 0]))
    return Predictions(
        ids=[s["id"] for s in dataset.samples],
        labels=dataset.labels.copy(),
        scores=np.concatenate(scores),
        seg_probs=np.concatenate(segs),
        batch_size=batch_size,
        inference_seconds=seconds,
    )


def _confusion(labels: np.ndarray, decisions: np.ndarray) -> dict[str, int]:
    labels, decisions = labels.astype(bool), decisions.astype(bool)
    return {
        "tp": int(np.sum(decisions & labels)),
        "fp": int(np.sum(decisions & ~labels)),
        "fn": int(np.sum(~decisions & labels)),
        "tn": int(np.sum(~decisions & ~labels)),
    }


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float | int]:
    """Image-level metrics. `ap` is scikit-learn's average precision; `ap_paper` is the area
    under the PR curve (trapezoidal), as the paper's code reports it. P/R/F1 and the confusion
    `*_at_threshold` are at `threshold` (the model's validation threshold, the operating point a
    deployment uses); `best_*` are at the best-F1 threshold of these very scores, which is
    optimistic on a test split (chosen with the answers in hand)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("metrics need both defective and clean images")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1s = 2 * precision * recall / (precision + recall + 1e-8)
    best = int(np.argmax(f1s[:-1])) if len(thresholds) else 0
    best_thr = float(thresholds[best])
    at_best = _confusion(labels, scores >= best_thr)
    at_half = _confusion(labels, scores >= threshold)
    tp, fp, fn = at_half["tp"], at_half["fp"], at_half["fn"]
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {
        "ap": float(average_precision_score(labels, scores)),
        "ap_paper": float(auc(recall, precision)),
        "auroc": float(roc_auc_score(labels, scores)),
        "best_f1": float(f1s[best]),
        "best_threshold": best_thr,
        **{f"{k}_at_best": v for k, v in at_best.items()},
        "threshold": threshold,
        "precision": prec,
        "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "fnr": fn / (tp + fn) if tp + fn else 0.0,
        **{f"{k}_at_threshold": v for k, v in at_half.items()},
    }


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks (1.0 when both are empty)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    inter, total = np.sum(pred & truth), pred.sum() + truth.sum()
    union = total - inter
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


def segmentation_metrics(
    seg_probs: list[np.ndarray] | np.ndarray, masks: list[np.ndarray], threshold: float = 0.5
) -> dict[str, float | int]:
    """Mean Dice/IoU over defective images: predictions upsampled to the mask's size."""
    dices, ious = [], []
    for prob, mask in zip(seg_probs, masks):
        up = cv2.resize(np.asarray(prob, np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
        d, i = dice_iou(up >= threshold, mask > 0)
        dices.append(d)
        ious.append(i)
    if not dices:
        return {"dice": float("nan"), "iou": float("nan"), "seg_images": 0}
    return {"dice": float(np.mean(dices)), "iou": float(np.mean(ious)), "seg_images": len(dices)}


def evaluate_predictions(preds: Predictions, dataset: KSDD2Dataset, threshold: float = 0.5,
                         seg_threshold: float = 0.5) -> dict:
    """Image metrics at the decision `threshold` (and test-optimal), segmentation on defective images."""
    metrics = classification_metrics(preds.labels, preds.scores, threshold)
    pos = [i for i in np.flatnonzero(preds.labels) if dataset.samples[i].get("has_mask", True)]  # not weak labels
    metrics.update(
        segmentation_metrics(preds.seg_probs[pos], [dataset.samples[i]["mask_full"] for i in pos], seg_threshold)
    )
    metrics.update(images=int(len(preds.labels)), positives=int(preds.labels.sum()))
    return metrics


def latency_samples(runtime: Runtime, batch: np.ndarray, runs: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds per `runtime.predict(batch)` call, `runs` times (no warm-up)."""
    sync = sync or (lambda: None)
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        runtime.predict(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def latency_summary(times: list[float]) -> dict[str, float | int]:
    return {
        "latency_ms_median": float(np.median(times) * 1e3),
        "latency_ms_p90": float(np.percentile(times, 90) * 1e3),
        "latency_runs": len(times),
    }


def measure_latency(runtime: Runtime, sample: np.ndarray, warmup: int = 5, runs: int = 30,
                    sync: Callable[[], None] | None = None) -> dict[str, float | int]:
    """Batch-1 latency (median, p90, ms) of one preprocessed image [C,H,W].

    `sync` (e.g. torch.cuda.synchronize) is called before each clock read on asynchronous
    devices. Thread counts are fixed by the runtime. Throughput comes from `predict`'s pass.
    """
    return interleaved_latency([runtime], sample, warmup, runs, rounds=1, syncs=[sync])[0]


def interleaved_latency(runtimes: Sequence[Runtime], sample: np.ndarray, warmup: int = 5, runs: int = 30,
                        rounds: int = 5, syncs: Sequence[Callable[[], None] | None] | None = None) -> list[dict]:
    """Batch-1 latency of several runtimes, timed in `rounds` interleaved blocks of runs/rounds each.

    On a shared machine a slow spell then costs every model a few runs, which the median ignores,
    instead of all runs of whichever model was measured at the time. Each block starts with one
    untimed run (caches, and the previous model's thread pool still spinning).
    """
    one = np.ascontiguousarray(sample[None], dtype=np.float32)
    syncs = list(syncs or [None] * len(runtimes))
    rounds = max(1, min(rounds, runs))
    times: list[list[float]] = [[] for _ in runtimes]
    for rt, sync in zip(runtimes, syncs):
        latency_samples(rt, one, warmup, sync)
    for r in range(rounds):
        block = runs // rounds + (r < runs % rounds)
        for rt, sync, acc in zip(runtimes, syncs, times):
            if r:
                latency_samples(rt, one, 1, sync)
            acc.extend(latency_samples(rt, one, block, sync))
    return [latency_summary(t) for t in times]
