"""MVTec AD: `train/good/*`, `test/<type>/*`, `ground_truth/<type>/<stem>_mask.png`.

MVTec's train split has no defects, so a seeded share of each test defect type
(`defect_train_fraction`, stratified by type) moves to train; test/good stays in test. Every
image keeps its defect type (`cls`) in the import's manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ksdd2 import DatasetError
from .common import FormatOptions, MaskFile, Scan, SourceItem, list_images, rel

GOOD = "good"


def read(src: Path, options: FormatOptions) -> Scan:
    if not (src / "train").is_dir() or not (src / "test").is_dir():
        raise DatasetError(f"{src} is not an MVTec AD category: expected train/good/, test/<type>/ and ground_truth/<type>/")
    scan = Scan()
    for path in list_images(src / "train"):
        scan.items.append(SourceItem(path, rel(path, src), f"train_{_type(path, src / 'train')}_{path.stem}",
                                     split="train", cls=_type(path, src / "train"), defect=False))
    rng = np.random.default_rng(options.seed)
    moved: dict[str, int] = {}
    for type_dir in sorted(p for p in (src / "test").iterdir() if p.is_dir()):
        kind, images = type_dir.name, list_images(type_dir)
        to_train: set[int] = set()
        if kind != GOOD:
            k = int(round(options.defect_train_fraction * len(images)))
            to_train = set(rng.permutation(len(images))[:k].tolist())
            moved[kind] = len(to_train)
        for i, path in enumerate(images):
            mask = None
            if kind != GOOD:
                gt = src / "ground_truth" / kind / f"{path.stem}_mask.png"
                if not gt.is_file():
                    scan.problems.append((rel(path, src), f"no mask {rel(gt, src)}"))
                    continue
                mask = MaskFile(gt)
            scan.items.append(SourceItem(
                path, rel(path, src), f"test_{kind}_{path.stem}", split="train" if i in to_train else "test",
                cls=kind, mask=mask, defect=kind != GOOD,
            ))
    scan.facts["defects_moved_to_train"] = moved
    return scan


def _type(path: Path, split_dir: Path) -> str:
    return path.relative_to(split_dir).parts[0] if len(path.relative_to(split_dir).parts) > 1 else GOOD
