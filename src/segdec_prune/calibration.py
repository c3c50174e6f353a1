"""The INT8 calibration set: N training images, preprocessed exactly as for training.

Stored once per run (`calibration/calibration.npz`: float32 images [N,C,H,W] in [0,1], ids,
labels) so every runtime (ONNX Runtime static INT8, TensorRT INT8) calibrates on the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import atomic_write
from .config import Config
from .data.dataset import load_split, preprocessing_for
from .data.ksdd2 import DatasetError

FILE = "calibration.npz"


def calibration_path(cfg: Config) -> Path:
    return cfg.run_dir / "calibration" / FILE


def select(labels: np.ndarray, n: int, positive_fraction: float, seed: int) -> np.ndarray:
    """Indices of n samples, `positive_fraction` of them defective where there are enough."""
    rng = np.random.default_rng(seed)
    pos, neg = rng.permutation(np.flatnonzero(labels)), rng.permutation(np.flatnonzero(~labels))
    n = min(n, len(labels))
    k = min(len(pos), int(round(n * positive_fraction)), n)
    k = max(k, n - len(neg))
    return np.sort(np.concatenate([pos[:k], neg[: n - k]]))


def build_calibration_set(cfg: Config) -> Path:
    samples = load_split(cfg.data.root, "train", preprocessing_for(cfg.data, cfg.train))
    labels = np.array([s["label"] for s in samples])
    idx = select(labels, cfg.deploy.calibration_images, cfg.deploy.calibration_positive_fraction, cfg.deploy.seed)
    if len(idx) == 0:
        raise DatasetError("no training images to calibrate on")
    images = np.stack([samples[i]["image"].transpose(2, 0, 1) for i in idx]).astype(np.float32) / 255.0
    ids = np.array([samples[i]["id"] for i in idx])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, images=images, ids=ids, labels=labels[idx])

    return atomic_write(calibration_path(cfg), write)


def load_calibration(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no calibration set at {path}; run `segdec-prune calibrate --config ...` first")
    with np.load(path) as data:
        return data["images"]
