import logging

import numpy as np
import pytest

from segdec_prune.data.dataset import EpochSampler, KSDD2Dataset, choose_segmented, load_split, split_validation
from segdec_prune.data.ksdd2 import DatasetError, Preprocessing, distance_weights, downsize, scan_split
from segdec_prune.data.synthetic import SynthSpec, render, write_dataset

from .conftest import write_pair

PRE = Preprocessing(height=640, width=232, dilate=15)


def test_real_layout_with_odd_sizes_and_stray_copies(tmp_path, caplog):
    write_pair(tmp_path / "train", "10000", size=(631, 229), defect=True)
    write_pair(tmp_path / "train", "10001", size=(665, 241))
    write_pair(tmp_path / "train", "10301 (copy)", size=(640, 232))  # as in the official archive
    with caplog.at_level(logging.WARNING):
        refs = scan_split(tmp_path, "train")
    assert [r.id for r in refs] == ["10000", "10001"]
    assert "10301 (copy)" in caplog.text
    samples = load_split(tmp_path, "train", PRE)
    pos, neg = samples
    assert pos["image"].shape == (640, 232, 3) and pos["image"].dtype == np.uint8
    assert pos["seg"].shape == (80, 29) and pos["weight"].shape == (80, 29)
    assert pos["label"] and not neg["label"]
    assert 1 < pos["weight"].max() <= 3.0  # distance weights, averaged down to 1/8
    assert neg["seg"].max() == 0 and np.all(neg["weight"] == 1)


def test_missing_folder_and_missing_mask(tmp_path):
    with pytest.raises(DatasetError, match="missing folder"):
        scan_split(tmp_path, "train")
    write_pair(tmp_path / "test", "20000")
    (tmp_path / "test" / "20000_GT.png").unlink()
    with pytest.raises(DatasetError, match="20000.png has no mask"):
        scan_split(tmp_path, "test")


def test_mis_sized_mask_and_corrupt_png(tmp_path):
    write_pair(tmp_path / "train", "1", size=(630, 230), mask_size=(600, 230))
    with pytest.raises(DatasetError, match="1_GT.png is 230x600 but its image is 230x630"):
        load_split(tmp_path, "train", PRE)
    write_pair(tmp_path / "test", "2")
    (tmp_path / "test" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=r"cannot read image .*2\.png"):
        load_split(tmp_path, "test", PRE)


def test_mask_encoding_0_1_is_accepted(tmp_path):
    import cv2

    write_pair(tmp_path / "train", "5")
    mask = np.zeros((631, 229), np.uint8)
    mask[10:20, 10:20] = 1  # some tools save 0/1 masks
    cv2.imwrite(str(tmp_path / "train" / "5_GT.png"), mask)
    assert load_split(tmp_path, "train", PRE)[0]["label"]


def test_distance_weights_and_downsize():
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1
    w = distance_weights(mask, p=2, max_val=3)
    assert w[0, 0] == 1 and w[8, 8] == pytest.approx(3) and w[4, 4] < w[7, 7]
    assert downsize(np.ones((64, 24))).shape == (8, 3)
    assert np.allclose(downsize(np.ones((64, 24))), 1)


def _samples(labels):
    return [{"id": str(i), "label": bool(lab)} for i, lab in enumerate(labels)]


def test_mixed_supervision_counts_and_seed(tmp_path):
    samples = _samples([1] * 10 + [0] * 30)
    seg = choose_segmented(samples, 4, seed=1)
    assert sum(seg[:10]) == 4 and all(seg[10:])
    assert seg == choose_segmented(samples, 4, seed=1)
    assert seg != choose_segmented(samples, 4, seed=2)
    assert sum(choose_segmented(samples, 0, seed=1)[:10]) == 0
    assert all(choose_segmented(samples, None, seed=1))
    assert all(choose_segmented(samples, 99, seed=1))  # more than exist: all, with a warning
    split = tmp_path / "split.json"
    split.write_text('["2", "3", "25"]')
    seg = choose_segmented(samples, None, seed=0, split_file=split)
    assert [i for i in range(10) if seg[i]] == [2, 3]


def test_validation_split_is_stratified_and_seeded():
    samples = _samples([1] * 20 + [0] * 80)
    tr, va = split_validation(samples, 0.2, seed=0)
    assert len(va) == 20 and sum(s["label"] for s in va) == 4
    assert {s["id"] for s in tr}.isdisjoint({s["id"] for s in va})
    assert [s["id"] for s in va] == [s["id"] for s in split_validation(samples, 0.2, seed=0)[1]]


def test_epoch_sampler_balances_and_covers_negatives():
    labels = np.array([True] * 5 + [False] * 50)
    sampler = EpochSampler(labels, frequency_sampling=True, seed=0)
    seen = set()
    for _ in range(10):
        epoch = list(sampler)
        assert len(epoch) == 10 and sum(labels[epoch]) == 5
        seen |= {i for i in epoch if not labels[i]}
    assert len(seen) == 50  # frequency sampling reaches every negative in 10 epochs


def test_synthetic_is_deterministic_and_in_layout(tmp_path):
    a, ma = render(7, "train", 3, positive=True)
    b, mb = render(7, "train", 3, positive=True)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, render(8, "train", 3, positive=True)[0])
    assert 222 <= a.shape[1] <= 241 and 600 <= a.shape[0] <= 665 and a.shape[2] == 3
    assert ma.max() == 255 and set(np.unique(ma)) <= {0, 255}
    counts = write_dataset(tmp_path, SynthSpec(train=20, test=10, positive_fraction=0.3, seed=1))
    refs = scan_split(tmp_path, "train")
    assert len(refs) == 20 and counts["train"]["images"] == 20
    labels = [s["label"] for s in load_split(tmp_path, "train", Preprocessing(128, 64))]
    assert sum(labels) == counts["train"]["positives"] > 0


def test_dataset_tensors(tiny_synth):
    ds = KSDD2Dataset(load_split(tiny_synth, "test", Preprocessing(128, 64)))
    item = ds[0]
    assert item["image"].shape == (3, 128, 64) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["seg"].shape == (1, 16, 8) and item["label"].shape == (1,)
