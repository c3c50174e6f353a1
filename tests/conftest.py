"""Shared fixtures: tiny data sets in the exact KSDD2 layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdec_prune.config import from_dict
from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for, train_val_datasets
from segdec_prune.data.ksdd2 import Preprocessing
from segdec_prune.model import SegDecNet, Widths
from segdec_prune.pruning.workflow import calibration_batches
from segdec_prune.data.synthetic import SynthSpec, write_dataset


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A small synthetic KSDD2-format set with enough positives for a split."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, SynthSpec(train=30, test=16, positive_fraction=0.35, seed=3))
    return root


SMALL = Widths((8, 16, 16, 16, 16, 16, 16, 16, 64), (8, 16, 32))
SIZE = (128, 64)


@pytest.fixture(scope="session")
def batches(tiny_synth):
    """Calibration batches (half defective) from the tiny training split at 128x64."""
    ds = KSDD2Dataset(load_split(tiny_synth, "train", Preprocessing(*SIZE)))
    return calibration_batches(ds, count=3, batch_size=4, seed=0)


@pytest.fixture(scope="session")
def trained(batches):
    """A narrow SegDecNet given a few SGD steps, so its weights and scores are not init-symmetric."""
    torch.manual_seed(0)
    model = SegDecNet(widths=SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        for b in batches:
            dec, seg = model(b["image"])
            loss = F.binary_cross_entropy_with_logits(dec, b["label"]) + F.binary_cross_entropy_with_logits(seg, b["seg"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture
def tiny_config(tiny_synth, tmp_path):
    """A config that trains the real model on tiny images in seconds."""
    return from_dict({
        "data": {"root": str(tiny_synth), "input_height": 128, "input_width": 64, "val_fraction": 0.3},
        "train": {"epochs": 2, "batch_size": 2, "validate_every": 1, "device": "cpu"},
        "run": {"name": "tiny", "dir": str(tmp_path / "runs")},
    })


@pytest.fixture
def sets(tiny_config):
    """The tiny config's (training, validation) splits."""
    return train_val_datasets(tiny_config.data, preprocessing_for(tiny_config.data, tiny_config.train))


def write_pair(folder: Path, sid: str, size=(631, 229), defect: bool = False, mask_size=None) -> None:
    """Write <sid>.png and <sid>_GT.png; (height, width) sizes like the real archive's."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(sid)) % 2**32)
    cv2.imwrite(str(folder / f"{sid}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    mask = np.zeros(mask_size or size, np.uint8)
    if defect:
        mask[100:120, 50:60] = 255
    cv2.imwrite(str(folder / f"{sid}_GT.png"), mask)


@pytest.fixture(scope="session")
def shipped(tiny_synth, tmp_path_factory):
    """A run with a trained baseline and one pruned model, exported, calibrated, INT8 built (and
    OpenVINO FP32 and INT8, where it is installed). Shared by the ship and fault tests: a test that
    changes it works on a copy."""
    from typer.testing import CliRunner

    from segdec_prune.cli import app
    from segdec_prune.runtimes.openvino_runtime import unavailable_reason

    runner = CliRunner()
    tmp = tmp_path_factory.mktemp("ship")
    cfg = tmp / "tiny.toml"
    cfg.write_text(
        f'[data]\nroot = "{tiny_synth}"\ninput_height = 128\ninput_width = 64\nval_fraction = 0.3\n'
        '[train]\nepochs = 2\nbatch_size = 2\nvalidate_every = 1\ndevice = "cpu"\n'
        '[prune]\nfinetune_epochs = 1\ncalibration_batches = 2\n'
        '[deploy]\ncalibration_images = 8\nint8_calibrations = ["minmax", "percentile"]\n'
        'int8_fp32_candidates = ["first_conv"]\nint8_early_exit = false\n'  # the full search: every candidate
        f'[run]\nname = "s"\ndir = "{tmp / "runs"}"\n'
    )
    openvino = [["build", "--runtime", "openvino", "--precision", p] for p in ("fp32", "int8")
                if unavailable_reason() is None]
    for args in (["train", "--quiet"], ["prune", "--method", "naive_l1", "--ratio", "0.5"], ["export"], ["calibrate"],
                 ["build", "--precision", "int8"], *openvino):
        r = runner.invoke(app, [args[0], "--config", str(cfg), *args[1:]])
        assert r.exit_code == 0, (args, r.output)
    return cfg, tmp / "runs" / "s"


@pytest.fixture
def images(tiny_synth, tmp_path):
    """A folder of test images at their native sizes (one resized), plus one corrupt file."""
    folder = tmp_path / "new"
    folder.mkdir()
    src = sorted(p for p in (tiny_synth / "test").glob("*.png") if not p.stem.endswith("_GT"))[:5]
    for p in src:
        (folder / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(folder / "wide.jpg"), cv2.resize(cv2.imread(str(src[0])), (301, 517)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return folder
