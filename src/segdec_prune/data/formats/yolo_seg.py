"""Ultralytics YOLO segmentation: `images/<split>/*` + `labels/<split>/<stem>.txt`.

A label line is `class x1 y1 x2 y2 ...`: one polygon, vertices normalised to [0, 1] by the
image's width and height; every class counts as a defect. An empty or missing label file means
no defect. `data.yaml`, when present, names the split folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from matplotlib.path import Path as MplPath

from ..ksdd2 import DatasetError
from .common import SPLIT_NAMES, FormatOptions, Scan, SourceItem, list_images, rel, source_splits


@dataclass(frozen=True)
class PolygonFile:
    """A YOLO label file, rasterised at the image's native size when read."""

    path: Path

    def read(self, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), np.uint8)
        for poly in parse_polygons(self.path):
            pts = poly * np.array([width, height], np.float64)
            # a pixel is in when its centre is (cv2.fillPoly also fills every edge pixel: a
            # 100-px-wide box would come out 101 wide, a 3-px crack 4)
            x0, y0 = np.floor(pts.min(axis=0)).astype(int)
            x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
            xs, ys = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
            inside = MplPath(pts).contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
            mask[y0:y1, x0:x1] |= inside.reshape(xs.shape).astype(np.uint8)
        return mask


def parse_polygons(path: Path) -> list[np.ndarray]:
    """The polygons of one label file as [N,2] arrays in [0, 1]; one line per problem found."""
    polygons = []
    for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            int(float(tokens[0]))
            coords = np.array([float(t) for t in tokens[1:]], np.float64)
        except ValueError:
            raise DatasetError(f"{path} line {no}: not numbers ({line.strip()[:60]!r})") from None
        if len(coords) == 4:
            raise DatasetError(f"{path} line {no}: a box (class cx cy w h), not a polygon: yolo-seg needs polygons")
        if len(coords) < 6 or len(coords) % 2:
            raise DatasetError(f"{path} line {no}: a polygon needs at least 3 x y points, got {len(coords)} numbers")
        if coords.min() < -1e-6 or coords.max() > 1 + 1e-6:
            raise DatasetError(f"{path} line {no}: coordinates must be normalised to [0, 1], "
                               f"found {coords.min():.4g}..{coords.max():.4g}")
        polygons.append(np.clip(coords, 0, 1).reshape(-1, 2))
    return polygons


def split_folders(src: Path) -> dict[str, Path]:
    """Image folder per split: from data.yaml when present (relative to SRC or its `path`), else images/<split>."""
    spec = src / "data.yaml"
    if not spec.is_file():
        return source_splits(src / "images")
    try:
        doc = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{spec} is not valid YAML: {exc}") from None
    base = Path(str(doc.get("path", "")))
    found = {}
    for split in SPLIT_NAMES:
        value = doc.get(split)
        if not value:
            continue
        if not isinstance(value, str):
            raise DatasetError(f"{spec}: `{split}` must be one folder, got {value!r}")
        candidates = [src / value, src / base / value, base / value]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{spec}: the {split} folder {value!r} is not under {src}")
        found[split] = folder
    return found


def labels_for(images: Path) -> Path:
    """Ultralytics' rule: the label folder is the image folder with its last `images` replaced by `labels`."""
    parts = list(images.parts)
    if "images" not in parts:
        raise DatasetError(f"image folder {images} has no `images` component: cannot find its labels folder")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)


def read(src: Path, options: FormatOptions) -> Scan:
    folders = split_folders(src)
    if not folders:
        raise DatasetError(f"{src} has no images/<split> folders (train, val, test) and no data.yaml naming them")
    scan = Scan()
    unlabelled = 0
    for split, folder in folders.items():
        labels = labels_for(folder)
        images = list_images(folder)
        stems = {p.relative_to(folder).with_suffix("").as_posix() for p in images}
        for txt in sorted(labels.rglob("*.txt")) if labels.is_dir() else []:
            if txt.relative_to(labels).with_suffix("").as_posix() not in stems:
                scan.problems.append((rel(txt, src), "a label file without an image"))
        for path in images:
            label = labels / path.relative_to(folder).with_suffix(".txt")
            unlabelled += not label.is_file()
            scan.items.append(SourceItem(
                image=path, rel=rel(path, src), id=path.relative_to(folder).with_suffix("").as_posix(),
                split=split, mask=PolygonFile(label) if label.is_file() else None,
            ))
    scan.facts["images_without_label"] = unlabelled
    scan.facts["split_folders"] = {s: rel(f, src) for s, f in folders.items()}
    return scan
