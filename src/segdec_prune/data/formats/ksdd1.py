"""KolektorSDD (KSDD1) as published: `kosNN/PartK.jpg` + `kosNN/PartK_label.bmp`.

One folder per physical commutator, so the folder is each image's group: no part is split
between train and test. The source has no split; the importer makes one.
"""

from __future__ import annotations

from pathlib import Path

from ..ksdd2 import DatasetError
from .common import FormatOptions, MaskFile, Scan, SourceItem, list_images, rel

LABEL = "_label"


def read(src: Path, options: FormatOptions) -> Scan:
    parts = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")) if src.is_dir() else []
    if not parts:
        raise DatasetError(f"{src} has no part folders: expected KSDD1's kosNN/PartK.jpg + PartK_label.bmp")
    scan = Scan()
    for part in parts:
        files = list_images(part, recursive=False)
        masks = {p.stem[: -len(LABEL)]: p for p in files if p.stem.endswith(LABEL)}
        images = [p for p in files if not p.stem.endswith(LABEL)]
        for stem in sorted(set(masks) - {p.stem for p in images}):
            scan.problems.append((rel(masks[stem], src), "a mask without an image"))
        for path in images:
            if path.stem not in masks:
                scan.problems.append((rel(path, src), f"no mask {path.stem}{LABEL}.bmp beside it"))
                continue
            scan.items.append(SourceItem(path, rel(path, src), f"{part.name}_{path.stem}",
                                         mask=MaskFile(masks[path.stem]), group=part.name))
    return scan
