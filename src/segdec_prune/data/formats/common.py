"""What every reader shares: the item it yields, mask sources, image listing and reading."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..ksdd2 import DatasetError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")


class MaskSource(Protocol):
    path: Path

    def read(self, height: int, width: int) -> np.ndarray:
        """The binary mask (uint8 0/1) of an image of that size."""
        ...


@dataclass(frozen=True)
class MaskFile:
    """A mask image: any bit depth, gray or colour; binarised at half its range (0/1 masks too)."""

    path: Path

    def read(self, height: int, width: int) -> np.ndarray:
        mask = read_array(self.path, "mask")
        if mask.ndim == 3:
            mask = mask.max(axis=2)  # a coloured mark on black counts wherever any channel is set
        return binarise(mask)


@dataclass(frozen=True)
class SourceItem:
    """One source image and what is known of it before it is read.

    `defect`: None = decided by the mask; True = the source says defective (a defect class, a
    positive folder), with or without a mask; False = a class the user named defect-free.
    """

    image: Path
    rel: str  # path relative to the source root, posix: what `--group-by` matches
    id: str  # the wanted output id (sanitised and checked for clashes by the importer)
    split: str | None = None  # train / val / test from the source; None = the importer splits
    cls: str = ""  # class or defect type, recorded and used to stratify splits ("" = defect/good)
    mask: MaskSource | None = None
    defect: bool | None = None
    group: str | None = None  # the reader's own grouping (ksdd1: the part's folder)


@dataclass
class Scan:
    """A reader's answer: the items, the problems (skippable with --skip-bad), facts to record."""

    items: list[SourceItem] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    facts: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class FormatOptions:
    good: tuple[str, ...] = ()  # folder: classes without defects
    positive_dirs: tuple[Path, ...] = ()  # folder: image-level positives
    masks: Path | None = None  # folder: masks in their own tree
    mask_suffix: str = ""  # folder: mask stem = image stem + suffix
    defect_train_fraction: float = 0.5  # mvtec: share of each test defect type moved to train
    seed: int = 0


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted; hidden files and folders are left out."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in pattern if p.suffix.lower() in IMAGE_EXTS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def rel(path: Path, root: Path) -> str:
    """`path` as recorded in import.json: relative to the source root, or whole when outside it."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def read_array(path: Path, what: str = "image") -> np.ndarray:
    """The file's pixels as stored (no colour conversion, no EXIF rotation); one line if unreadable."""
    if not path.is_file():
        raise DatasetError(f"cannot read {what} {path}: no such file")
    if path.stat().st_size == 0:
        raise DatasetError(f"cannot read {what} {path}: the file is empty (0 bytes)")
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.size == 0:
        raise DatasetError(f"cannot read {what} {path} (corrupt or not an image)")
    return arr


def to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """8-bit gray or BGR as the pipeline reads it: 16-bit scaled by its full range, alpha dropped."""
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"image {path} has {image.dtype} pixels: only 8- and 16-bit images are supported")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return np.ascontiguousarray(image)


def binarise(mask: np.ndarray) -> np.ndarray:
    """1 where a mask is set: above half of its range (JPEG-like edges), or > 0 for 0/1 masks."""
    if mask.max(initial=0) <= 1:
        return (mask > 0).astype(np.uint8)
    half = (np.iinfo(mask.dtype).max + 1) // 2 if mask.dtype.kind in "ui" else 0.5
    return (mask >= half).astype(np.uint8)


def source_splits(root: Path, names: tuple[str, ...] = SPLIT_NAMES) -> dict[str, Path]:
    """The source's own split folders that exist, by name."""
    return {s: root / s for s in names if (root / s).is_dir()}


_STEM_CLEAN = re.compile(r"[^A-Za-z0-9_.-]+")


def clean_id(text: str) -> str:
    """An id the KSDD2 reader accepts: letters, digits, `_ . -`; never ending in `_GT`."""
    out = _STEM_CLEAN.sub("_", text).strip("_.") or "image"
    return out + "_" if out.endswith("_GT") else out
