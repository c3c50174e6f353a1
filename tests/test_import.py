"""`data import`: every format on a small fixture written here, splits, bad input, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from segdec_prune.cli import app
from segdec_prune.data.dataset import choose_segmented, load_split, train_val_datasets
from segdec_prune.data.download import check
from segdec_prune.data.formats import FormatOptions
from segdec_prune.data.importer import ImportOptions, import_dataset
from segdec_prune.data.ksdd2 import DatasetError, Preprocessing, scan_split
from segdec_prune.data.splits import group_keys, grouped_split
from segdec_prune.config import from_dict


def _img(path: Path, h: int = 100, w: int = 200, dtype=np.uint8, channels: int = 1, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, top, shape, dtype=dtype))


def _mask(path: Path, h: int = 100, w: int = 200, box=(20, 40, 50, 90), value: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    if box:
        y0, y1, x0, x1 = box
        m[y0:y1, x0:x1] = value
    assert cv2.imwrite(str(path), m)


RECT = "0 0.25 0.25 0.75 0.25 0.75 0.5 0.25 0.5\n"  # x from 50 to 150, y from 25 to 50 in a 200x100 image


def _yolo(root: Path) -> Path:
    """6 train images (2 defective, one 16-bit, one of another size; one without a label) and 3 val (2 defective)."""
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            name = f"{split}{i}"
            if split == "train" and i == 1:
                _img(root / "images" / split / f"{name}.png", dtype=np.uint16, seed=i)
            elif split == "train" and i == 2:
                _img(root / "images" / split / f"{name}.jpg", h=120, w=90, channels=3, seed=i)
            else:
                _img(root / "images" / split / f"{name}.jpg", seed=i)
            label = root / "labels" / split / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            if i in (0, 1):
                label.write_text(RECT)
            elif i != 4:  # train4 has no label file: no defect
                label.write_text("")
    (root / "data.yaml").write_text("path: elsewhere\ntrain: images/train\nval: images/val\nnames: [crack]\n")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_checks(out: Path, manifest: dict) -> None:
    reports = {r.split: r for r in check(out)}
    assert all(not r.problems for r in reports.values())
    for split, c in manifest["counts"].items():
        assert (reports[split].images, reports[split].positives) == (c["images"], c["positives"])


def test_yolo_seg_rasterises_splits_and_reimports_identically(tmp_path):
    src = _yolo(tmp_path / "src")
    opts = ImportOptions("yolo-seg", val_fraction=0.34)
    manifest = import_dataset(src, tmp_path / "out", opts)
    out = tmp_path / "out"
    # no source test split: the source val is the test split; val/ is carved from train
    assert manifest["counts"]["test"]["images"] == 3 and manifest["counts"]["test"]["positives"] == 2
    assert manifest["counts"]["train"]["images"] + manifest["counts"]["val"]["images"] == 6
    assert manifest["facts"]["images_without_label"] == 1
    gt = cv2.imread(str(out / next(s for s in ("train", "val") if (out / s / "train0_GT.png").exists()) / "train0_GT.png"), 0)
    hand = np.zeros((100, 200), np.uint8)
    hand[25:50, 50:150] = 255
    assert set(np.unique(gt)) <= {0, 255}
    assert abs(int((gt > 0).sum()) - int((hand > 0).sum())) <= 0.01 * (hand > 0).sum()
    records = {r["id"]: r for r in manifest["images"]}
    assert records["train1"]["bit_depth"] == 16 and records["train1"]["defect"]
    assert records["train2"]["size"] == [90, 120] and records["train2"]["channels"] == 3
    assert len(records["train0"]["sha256"]) == 2  # the image and its label file
    stored = cv2.imread(str(next(out.rglob("train1.png"))), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8
    _assert_checks(out, manifest)
    assert json.loads((out / "import.json").read_text())["format"] == "yolo-seg"
    import_dataset(src, tmp_path / "again", opts)
    assert _files(out) == _files(tmp_path / "again")
    before = _files(out)
    import_dataset(src, out, opts)  # an earlier import is replaced
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_triangle_polygon_area_within_one_percent(tmp_path):
    src = tmp_path / "src"
    _img(src / "images" / "train" / "t.png", h=300, w=400)
    for i in range(3):
        _img(src / "images" / "train" / f"n{i}.png", h=300, w=400, seed=i + 1)
    (src / "labels" / "train").mkdir(parents=True)
    (src / "labels" / "train" / "t.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    manifest = import_dataset(src, tmp_path / "out", ImportOptions("yolo-seg", val_from="none", test_fraction=0.25))
    assert manifest["counts"]["test"]["images"] == 1  # a train split alone: test carved from it
    gt = cv2.imread(str(next((tmp_path / "out").rglob("t_GT.png"))), 0)
    ys, xs = np.mgrid[0:300, 0:400] + 0.5  # by hand: the pixel centres inside the triangle
    hand = (ys >= 30) & (ys <= 270) & (np.abs(xs - 200) <= 160 * (270 - ys) / 240)
    expected = 0.5 * 320 * 240  # base x height of the triangle in pixels
    assert abs((gt > 0).sum() - expected) <= 0.01 * expected
    assert abs(int((gt > 0).sum()) - int(hand.sum())) <= 0.01 * hand.sum()


def test_mvtec_moves_a_stratified_share_of_each_defect_type_to_train(tmp_path):
    src = tmp_path / "bottle"
    for i in range(4):
        _img(src / "train" / "good" / f"{i:03d}.png", seed=i, dtype=np.uint16 if i == 3 else np.uint8)
        _img(src / "test" / "good" / f"{i:03d}.png", seed=10 + i, h=90 if i == 2 else 100, channels=3)
    for kind, n in (("crack", 4), ("scratch", 2)):
        for i in range(n):
            _img(src / "test" / kind / f"{i:03d}.png", seed=20 + i)
            _mask(src / "ground_truth" / kind / f"{i:03d}_mask.png")
    manifest = import_dataset(src, tmp_path / "out", ImportOptions("mvtec", val_from="none"))
    by_split = {s: [r for r in manifest["images"] if r["split"] == s] for s in ("train", "test")}
    assert manifest["facts"]["defects_moved_to_train"] == {"crack": 2, "scratch": 1}
    assert sum(r["class"] == "crack" for r in by_split["train"]) == 2
    assert sum(r["class"] == "scratch" for r in by_split["train"]) == 1
    assert all(r["class"] == "good" and not r["defect"] for r in by_split["train"] if r["source"].startswith("train/"))
    assert sum(r["class"] == "good" for r in by_split["test"]) == 4
    records = {r["id"]: r for r in manifest["images"]}
    assert records["train_good_003"]["bit_depth"] == 16 and records["test_good_002"]["size"] == [200, 90]
    _assert_checks(tmp_path / "out", manifest)


def test_folder_classes_side_by_side_weak_labels_and_training_use(tmp_path):
    src = tmp_path / "mt"
    for cls, n, masked in (("Free", 8, False), ("Crack", 5, True), ("Blowhole", 4, True)):
        for i in range(n):
            _img(src / cls / "Imgs" / f"x{i}.jpg", h=80 + 8 * i, w=120, seed=i)
            if masked and i > 0:
                _mask(src / cls / "Imgs" / f"x{i}.png", h=80 + 8 * i, w=120, value=200)
            elif not masked:
                _mask(src / cls / "Imgs" / f"x{i}.png", h=80 + 8 * i, w=120, box=None)
    out = tmp_path / "out"
    manifest = import_dataset(src, out, ImportOptions("folder", test_fraction=0.25, val_fraction=0.3,
                                                      reader=FormatOptions(good=("Free",))))
    weak = json.loads((out / "weak_labels.json").read_text())
    assert sorted(i for ids in weak.values() for i in ids) == ["Blowhole_x0", "Crack_x0"]
    total = {k: sum(c["classes"].get(k, 0) for c in manifest["counts"].values()) for k in ("Free", "Crack", "Blowhole")}
    assert total == {"Free": 8, "Crack": 5, "Blowhole": 4}
    assert all(c["classes"].get("Crack") for c in manifest["counts"].values())  # every split has each class
    _assert_checks(out, manifest)
    # the pipeline reads it: val/ is the validation split; weak positives train without a mask
    cfg = from_dict({"data": {"root": str(out), "input_height": 128, "input_width": 64, "channels": 1}})
    pre = Preprocessing(128, 64, channels=1)
    train, val = train_val_datasets(cfg.data, pre)
    assert len(val) == manifest["counts"]["val"]["images"]
    segmented = choose_segmented(train.samples, None, 0)
    for s, seg in zip(train.samples, segmented):
        assert seg == (not s["label"] or s["has_mask"])
    split = next(s for s, ids in weak.items())
    assert all(s["label"] for s in load_split(out, split, pre) if s["id"] in weak[split])


def test_folder_masks_in_their_own_tree_and_positive_dir(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(6):
        _img(images / f"p{i}.png", seed=i)
        _mask(masks / f"p{i}_mask.png", box=(10, 20, 10, 20) if i < 3 else None)
    _img(images / "ok" / "weak0.png", seed=9)
    _img(images / "ok" / "weak1.png", seed=8)
    manifest = import_dataset(images, tmp_path / "out", ImportOptions(
        "folder", val_from="none", test_fraction=0.4,
        reader=FormatOptions(masks=masks, mask_suffix="_mask", positive_dirs=(images / "ok",))))
    records = {r["id"]: r for r in manifest["images"]}
    assert records["ok_weak0"]["defect"] and records["ok_weak0"]["mask_pixels"] == 0
    assert [records[f"p{i}"]["defect"] for i in range(6)] == [True] * 3 + [False] * 3
    assert sum(c["positives_without_mask"] for c in manifest["counts"].values()) == 2


def test_ksdd1_groups_by_part_folder(tmp_path):
    src = tmp_path / "KolektorSDD"
    for k in range(10):
        for j in range(4):
            h = 100 + 4 * (k % 3)  # parts of slightly different heights, as in KSDD1
            _img(src / f"kos{k:02d}" / f"Part{j}.jpg", h=h, seed=k * 4 + j)
            _mask(src / f"kos{k:02d}" / f"Part{j}_label.bmp", h=h, box=(5, 9, 5, 30) if j == k % 4 and k < 6 else None)
    manifest = import_dataset(src, tmp_path / "out", ImportOptions("ksdd1", test_fraction=0.3, val_fraction=0.25))
    side = {}
    for r in manifest["images"]:
        side.setdefault(r["group"], set()).add(r["split"])
    assert len(side) == 10 and all(len(s) == 1 for s in side.values())
    assert manifest["groups"]["in_more_than_one_split"] == []
    assert {r["split"] for r in manifest["images"]} == {"train", "val", "test"}
    _assert_checks(tmp_path / "out", manifest)


def test_grouped_split_keeps_groups_whole_and_strata_near_target():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 5}" for i in range(500)]
    strata = ["defect" if rng.random() < 0.2 else "good" for _ in groups]
    held = grouped_split(strata, groups, 0.3, seed=1)
    for g in set(groups):
        assert len({bool(held[i]) for i, x in enumerate(groups) if x == g}) == 1
    for s in ("defect", "good"):
        idx = [i for i, x in enumerate(strata) if x == s]
        assert abs(held[idx].mean() - 0.3) < 0.05
    assert (held == grouped_split(strata, groups, 0.3, seed=1)).all()
    keys, unmatched = group_keys(["kos01/Part0.jpg", "kos01/Part1.jpg", "x.jpg"], [None] * 3, r"(kos\d+)/")
    assert keys[:2] == ["kos01", "kos01"] and unmatched == 1


@pytest.mark.parametrize("line, message", [
    ("0 0.1 0.1 0.2 0.2\n", "a box"),
    ("0 0.1 0.1 0.2 0.2 0.3\n", "at least 3 x y points"),
    ("0 0.1 0.1 1.2 0.1 0.5 0.9\n", r"normalised to \[0, 1\]"),
])
def test_bad_polygons_name_the_file_and_line(tmp_path, line, message):
    src = _yolo(tmp_path / "src")
    (src / "labels" / "train" / "train3.txt").write_text(RECT + line)
    with pytest.raises(DatasetError, match=rf"train3\.txt line 2: .*{message}"):
        import_dataset(src, tmp_path / "out", ImportOptions("yolo-seg"))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_input_refused_in_one_line(tmp_path):
    src = _yolo(tmp_path / "src")
    (src / "labels" / "train" / "ghost.txt").write_text(RECT)
    with pytest.raises(DatasetError, match="ghost.txt: a label file without an image"):
        import_dataset(src, tmp_path / "out", ImportOptions("yolo-seg"))
    (src / "labels" / "train" / "ghost.txt").unlink()
    (src / "images" / "train" / "train5.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"train5\.jpg: the file is empty .*--skip-bad"):
        import_dataset(src, tmp_path / "out", ImportOptions("yolo-seg"))
    assert not (tmp_path / "out").exists()
    manifest = import_dataset(src, tmp_path / "out", ImportOptions("yolo-seg", skip_bad=True))
    assert [s["file"] for s in manifest["skipped"]] == ["images/train/train5.jpg"]
    assert sum(c["images"] for c in manifest["counts"].values()) == 8
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists and is not an earlier import"):
        import_dataset(src, tmp_path / "taken", ImportOptions("yolo-seg", skip_bad=True))
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_mask_of_the_wrong_size_and_clashing_ids(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        _img(src / f"a{i}.jpg", seed=i)
        _mask(src / f"a{i}.png")
    _mask(src / "a2.png", h=50, w=60)
    with pytest.raises(DatasetError, match=r"a2\.png is 60x50 but its image .*a2\.jpg is 200x100"):
        import_dataset(src, tmp_path / "out", ImportOptions("folder"))
    images, masks = tmp_path / "imgs", tmp_path / "masks"
    _img(images / "b.jpg")
    _img(images / "b.png", seed=1)
    masks.mkdir()
    with pytest.raises(DatasetError, match="b.jpg and b.png both map to id 'b'"):
        import_dataset(images, tmp_path / "out", ImportOptions("folder", reader=FormatOptions(masks=masks)))
    with pytest.raises(DatasetError, match="unknown format 'coco'"):
        import_dataset(images, tmp_path / "out", ImportOptions("coco"))
    with pytest.raises(DatasetError, match="--good names Nope"):
        import_dataset(images, tmp_path / "out", ImportOptions("folder", reader=FormatOptions(masks=masks, good=("Nope",))))
    assert not (tmp_path / "out").exists()


def test_cli_import_and_errors(tmp_path):
    src = _yolo(tmp_path / "src")
    runner = CliRunner()
    res = runner.invoke(app, ["data", "import", str(src), "--format", "yolo-seg", "--out", str(tmp_path / "out"),
                              "--group-size", "2"])
    assert res.exit_code == 0, res.output
    assert "import.json" in res.output and "groups" in res.output
    assert scan_split(tmp_path / "out", "test")
    res = runner.invoke(app, ["data", "import", str(tmp_path / "nowhere"), "--format", "yolo-seg", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["data", "import", str(src), "--format", "yolo-seg", "--out", str(tmp_path / "o3"),
                              "--val-from", "split"])
    assert res.exit_code == 2 and "needs a source with both a val and a test split" in res.output
