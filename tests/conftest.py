"""Shared fixtures: tiny data sets in the exact KSDD2 layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segdec_prune.config import from_dict
from segdec_prune.data.synthetic import SynthSpec, write_dataset


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A small synthetic KSDD2-format set with enough positives for a split."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, SynthSpec(train=30, test=16, positive_fraction=0.35, seed=3))
    return root


@pytest.fixture
def tiny_config(tiny_synth, tmp_path):
    """A config that trains the real model on tiny images in seconds."""
    return from_dict({
        "data": {"root": str(tiny_synth), "input_height": 128, "input_width": 64, "val_fraction": 0.3},
        "train": {"epochs": 2, "batch_size": 2, "validate_every": 1, "device": "cpu"},
        "run": {"name": "tiny", "dir": str(tmp_path / "runs")},
    })


def write_pair(folder: Path, sid: str, size=(631, 229), defect: bool = False, mask_size=None) -> None:
    """Write <sid>.png and <sid>_GT.png; (height, width) sizes like the real archive's."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(sid)) % 2**32)
    cv2.imwrite(str(folder / f"{sid}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    mask = np.zeros(mask_size or size, np.uint8)
    if defect:
        mask[100:120, 50:60] = 255
    cv2.imwrite(str(folder / f"{sid}_GT.png"), mask)
