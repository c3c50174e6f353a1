"""KolektorSDD2 on disk -> preprocessed samples, exactly as the paper's reference code does it.

Layout: ROOT/{train,test}/<id>.png with its mask <id>_GT.png; optionally ROOT/val/ (a fixed
validation split, as `data import` writes it) and ROOT/weak_labels.json ({split: [ids]}: defective
images without a pixel mask, trained on their label alone). Images are read by OpenCV as
3-channel BGR, resized to the input size and scaled by 1/255. Masks are dilated at native size,
resized, and turned into a segmentation target and a distance-transform loss weight at 1/8
resolution (reflection pad + 17x17 average pool, stride 8, as in the paper's code).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from ..errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
VAL = "val"  # optional: a fixed validation split replaces the one carved from train
WEAK_LABELS = "weak_labels.json"
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class SampleRef:
    id: str
    image: Path
    mask: Path
    positive: bool = False  # defective by its image-level label, whatever the mask shows


@dataclass(frozen=True)
class Preprocessing:
    height: int
    width: int
    channels: int = 3
    dilate: int = 15
    weight_p: float = 2.0
    weight_max: float = 3.0


def find_samples(root: str | Path, split: str) -> tuple[list[SampleRef], list[str]]:
    """Samples of one split plus the problems found; stray files are skipped with a warning."""
    folder = Path(root) / split
    if not folder.is_dir():
        return [], [f"missing folder {folder} (expected KSDD2 layout ROOT/{split}/<id>.png + <id>_GT.png; "
                    "`segdec-prune data import` converts other layouts)"]
    refs, problems, orphans = [], [], []
    weak = weak_labels(root).get(split, set())
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".png":
            continue
        stem = path.stem
        if not _ID.match(stem):
            log.warning("skipping stray file %s (not a KSDD2 sample name)", path)
        elif stem.endswith("_GT"):
            if not (folder / f"{stem[:-3]}.png").exists():
                orphans.append(path)
        elif not (folder / f"{stem}_GT.png").is_file():
            problems.append(f"image {path} has no mask {stem}_GT.png")
        else:
            refs.append(SampleRef(stem, path, folder / f"{stem}_GT.png", stem in weak))
    for path in orphans:
        log.warning("skipping mask %s: no image beside it", path)
    if not refs and not problems:
        problems.append(f"no samples in {folder}")
    return sorted(refs, key=_sort_key), problems


def weak_labels(root: str | Path) -> dict[str, set[str]]:
    """The image-level positives per split (ROOT/weak_labels.json), if the data set has any."""
    path = Path(root) / WEAK_LABELS
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {str(split): set(map(str, ids)) for split, ids in doc.items()}
    except (ValueError, AttributeError, TypeError):
        raise DatasetError(f"{path} is not a JSON object of split -> list of ids") from None


def scan_split(root: str | Path, split: str) -> list[SampleRef]:
    """Samples of one split; raises DatasetError on the first problem."""
    refs, problems = find_samples(root, split)
    if problems:
        raise DatasetError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    return refs


def _sort_key(ref: SampleRef) -> tuple[int, str]:
    return (int(ref.id), "") if ref.id.isdigit() else (1 << 62, ref.id)


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    img = cv2.imread(str(path), flag)
    if img is None:
        raise DatasetError(f"cannot read image {path} (corrupt or not an image)")
    return img


def read_mask(ref: SampleRef) -> np.ndarray:
    """The native-size binary mask (uint8 0/1); accepts 0/255 and 0/1 encodings."""
    mask = cv2.imread(str(ref.mask), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {ref.mask} (corrupt or not an image)")
    return (mask > 0).astype(np.uint8)


def check_sizes(ref: SampleRef, image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(
            f"mask {ref.mask} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)"
        )


def distance_weights(mask: np.ndarray, p: float, max_val: float) -> np.ndarray:
    """Loss weight: inside a defect grows with the distance to its edge; 1 outside (paper)."""
    dist = distance_transform_edt(mask)
    if dist.max() > 0:
        dist = (dist / dist.max()) ** p * max_val
    dist[mask == 0] = 1.0
    return dist.astype(np.float32)


def downsize(x: np.ndarray, factor: int = 8) -> np.ndarray:
    """Reflection pad + (2f+1) average pool with stride f: the paper's 1/8 target."""
    t = torch.from_numpy(x.astype(np.float32))[None, None]
    t = F.avg_pool2d(F.pad(t, (factor,) * 4, mode="reflect"), kernel_size=2 * factor + 1, stride=factor)
    return t[0, 0].numpy()


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An image as read (HxW or HxWxC uint8) at the model's input size, HxWxC: the one resize
    training, evaluation and `predict` share."""
    image = cv2.resize(image, (width, height))
    return image[:, :, None] if image.ndim == 2 else image


def preprocess(ref: SampleRef, pre: Preprocessing) -> dict[str, np.ndarray | bool | str]:
    """One sample: uint8 image HxWxC at input size, 1/8 target and weights, label (mask or weak label)."""
    image = read_image(ref.image, pre.channels)
    mask = read_mask(ref)
    check_sizes(ref, image, mask)
    has_mask = bool(mask.any())
    label = has_mask or ref.positive
    if pre.dilate > 1:
        mask = cv2.dilate(mask, np.ones((pre.dilate, pre.dilate), np.uint8))
    size = (pre.width, pre.height)
    image = resize_image(image, pre.height, pre.width)
    mask_full = cv2.resize(mask.astype(np.float32), size)
    weights = distance_weights(mask_full, pre.weight_p, pre.weight_max) if has_mask else np.ones_like(mask_full)
    return {
        "id": ref.id,
        "image": image,
        "mask_full": (mask_full > 0.5).astype(np.uint8),
        "seg": downsize(mask_full),
        "weight": downsize(weights),
        "label": label,
        "has_mask": has_mask,  # False for a weak positive: no segmentation target, no Dice
    }
