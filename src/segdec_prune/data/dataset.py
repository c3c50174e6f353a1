"""Torch datasets over preprocessed KSDD2 samples: validation split, mixed supervision, epochs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .ksdd2 import VAL, DatasetError, Preprocessing, preprocess, scan_split

if TYPE_CHECKING:
    from ..config import DataConfig, TrainConfig

log = logging.getLogger(__name__)

Sample = dict  # the dict returned by ksdd2.preprocess


def load_split(
    root: str | Path, split: str, pre: Preprocessing, on_progress: Callable[[int, int], None] | None = None
) -> list[Sample]:
    """Read and preprocess every sample of a split (threaded: OpenCV releases the GIL)."""
    refs = scan_split(root, split)
    out: list[Sample] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, sample in enumerate(pool.map(lambda r: preprocess(r, pre), refs)):
            out.append(sample)
            if on_progress:
                on_progress(i + 1, len(refs))
    return out


def split_validation(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified, seeded hold-out from train: model selection never looks at test."""
    labels = [s["label"] for s in samples]
    if sum(labels) < 2 or len(labels) - sum(labels) < 2:
        raise DatasetError("the training split needs at least 2 positive and 2 negative images")
    idx = np.arange(len(samples))
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    return [samples[i] for i in sorted(tr)], [samples[i] for i in sorted(va)]


def choose_segmented(
    samples: Sequence[Sample], num_segmented: int | None, seed: int, split_file: str | Path | None = None
) -> list[bool]:
    """Mixed supervision: which samples train with their mask. Negatives always do; positives
    without a mask (weak labels) never do.

    `num_segmented=None` means every positive; otherwise a seeded choice of that many positives.
    A split file (JSON list of ids) names the segmented positives instead.
    """
    pos = [i for i, s in enumerate(samples) if s["label"] and s.get("has_mask", True)]  # weak positives: never
    if split_file:
        wanted = set(map(str, json.loads(Path(split_file).read_text())))
        chosen = {i for i in pos if samples[i]["id"] in wanted}
        unknown = wanted - {samples[i]["id"] for i in pos}
        if unknown:
            log.warning("split file %s names %d ids that are not training positives", split_file, len(unknown))
    elif num_segmented is None or num_segmented >= len(pos):
        if num_segmented is not None and num_segmented > len(pos):
            log.warning("num_segmented=%d > %d training positives: using all", num_segmented, len(pos))
        chosen = set(pos)
    else:
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(pos, size=num_segmented, replace=False).tolist())
    return [not s["label"] or i in chosen for i, s in enumerate(samples)]


class KSDD2Dataset(torch.utils.data.Dataset):
    """Tensors for training/evaluation: image [C,H,W] in [0,1], 1/8 target and weights, label."""

    def __init__(self, samples: Sequence[Sample], segmented: Sequence[bool] | None = None) -> None:
        self.samples = list(samples)
        self.segmented = list(segmented) if segmented is not None else [True] * len(self.samples)
        self.labels = np.array([s["label"] for s in self.samples], dtype=bool)

    def __len__(self) -> int:
        return len(self.samples)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the ids and the preprocessed images, in order: two sets with the same
        fingerprint give any model the same scores (stored scores are reused only then)."""
        h = hashlib.blake2b(digest_size=16)
        for s in self.samples:
            h.update(f"{s['id']}|{s['image'].shape}|".encode())
            h.update(np.ascontiguousarray(s["image"]).data)
        return h.hexdigest()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.samples[i]
        return {
            "image": torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 255.0,
            "seg": torch.from_numpy(s["seg"])[None],
            "weight": torch.from_numpy(s["weight"])[None],
            "label": torch.tensor([float(s["label"])]),
            "segmented": torch.tensor(self.segmented[i]),
            "index": torch.tensor(i),
        }


class EpochSampler(torch.utils.data.Sampler[int]):
    """An epoch = every positive + as many negatives (the paper's balancing).

    With frequency sampling, negatives seen least often so far are favoured (paper's formula).
    """

    def __init__(self, labels: np.ndarray, frequency_sampling: bool, seed: int) -> None:
        self.pos = np.flatnonzero(labels)
        self.neg = np.flatnonzero(~labels)
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise DatasetError("training needs both positive and negative images")
        self.frequency_sampling = frequency_sampling
        self.rng = np.random.default_rng(seed)
        self.seen = np.zeros(len(self.neg))

    def __len__(self) -> int:
        return 2 * len(self.pos)

    def _negatives(self) -> np.ndarray:
        k, n = len(self.pos), len(self.neg)
        if k > n:
            return self.rng.choice(n, size=k, replace=True)
        if not self.frequency_sampling or self.seen.max() == 0:
            return self.rng.permutation(n)[:k]
        p = 1 - self.seen / self.seen.max()
        p = (p - np.median(p) + 1) ** (np.log(n) * 4)
        return self.rng.choice(n, size=k, p=p / p.sum(), replace=False)

    def __iter__(self):
        negs = self._negatives()
        self.seen[negs] += 1
        order = np.concatenate([self.pos, self.neg[negs]])
        return iter(self.rng.permutation(order).tolist())


def preprocessing_for(data: "DataConfig", train: "TrainConfig") -> Preprocessing:
    return Preprocessing(
        height=data.input_height, width=data.input_width, channels=data.channels,
        dilate=data.dilate, weight_p=train.seg_loss_p, weight_max=train.seg_loss_max,
    )


def train_val_datasets(data: "DataConfig", pre: Preprocessing,
                       on_progress: Callable[[int, int], None] | None = None) -> tuple[KSDD2Dataset, KSDD2Dataset]:
    """The training split and its validation split, with mixed supervision.

    The data set's own val/ folder when it has one (`data import` writes it, grouped by part);
    otherwise a stratified hold-out of `data.val_fraction` from train.
    """
    if (Path(data.root) / VAL).is_dir():
        train, val = load_split(data.root, "train", pre, on_progress), load_split(data.root, VAL, pre)
        if not any(s["label"] for s in val) or all(s["label"] for s in val):
            raise DatasetError(f"{Path(data.root) / VAL} needs both defective and defect-free images")
    else:
        samples = load_split(data.root, "train", pre, on_progress)
        train, val = split_validation(samples, data.val_fraction, data.seed)
    segmented = choose_segmented(train, data.segmented_count, data.seed, data.split_file or None)
    return KSDD2Dataset(train, segmented), KSDD2Dataset(val)
