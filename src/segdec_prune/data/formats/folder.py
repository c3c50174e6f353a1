"""Images and masks matched by file stem: side by side (`x.jpg` + `x.png`, or `x.png` +
`x<suffix>.png`) or in their own tree (`--masks DIR`, same sub-path or flat).

The first sub-folder of an image is its class (mt-train: `MT_Crack/Imgs/x.jpg` is `MT_Crack`).
Classes named in `--good` are defect-free; when any are named, every other class is defective,
with or without a mask. Without a mask an image is defect-free, unless it is under a
`--positive-dir` (an image-level label: trained without a mask, as `data.num_segmented` allows).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..ksdd2 import DatasetError
from .common import FormatOptions, MaskFile, Scan, SourceItem, list_images, rel

MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")


def _side_by_side(files: list[Path], suffix: str, scan: Scan, src: Path) -> list[tuple[Path, Path | None]]:
    by_key: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for p in files:
        by_key[(p.parent, p.stem)].append(p)
    pairs = []
    for (parent, stem), paths in sorted(by_key.items()):
        if suffix and stem.endswith(suffix):
            if (parent, stem[: -len(suffix)]) not in by_key:
                scan.problems.append((rel(paths[0], src), "a mask without an image"))
            continue
        masks = [p for p in by_key.get((parent, stem + suffix), []) if p.suffix.lower() in MASK_EXTS] if suffix else []
        if not suffix and len(paths) > 1:
            masks = [p for p in paths if p.suffix.lower() in MASK_EXTS]
            images = [p for p in paths if p not in masks]
            if len(images) != 1 or len(masks) != 1:
                scan.problems.append((rel(paths[0], src), "cannot tell image from mask: "
                                      + ", ".join(p.name for p in paths)))
                continue
            paths = images
        for path in paths:
            pairs.append((path, masks[0] if masks else None))
    return pairs


def _in_tree(images: list[Path], src: Path, masks: Path, suffix: str, scan: Scan) -> list[tuple[Path, Path | None]]:
    found = {(p.relative_to(masks).parent.as_posix(), p.stem): p for p in list_images(masks)}
    used, pairs = set(), []
    for path in images:
        sub = path.relative_to(src).parent.as_posix()
        key = next((k for k in ((sub, path.stem + suffix), (".", path.stem + suffix)) if k in found), None)
        used.add(key)
        pairs.append((path, found[key] if key else None))
    for key in sorted(set(found) - used):
        scan.problems.append((str(found[key]), "a mask without an image"))
    return pairs


def read(src: Path, options: FormatOptions) -> Scan:
    if not src.is_dir():
        raise DatasetError(f"source folder {src} does not exist")
    scan = Scan()
    files = list_images(src)
    if options.masks:
        if not options.masks.is_dir():
            raise DatasetError(f"mask folder {options.masks} does not exist")
        inside = options.masks.resolve().is_relative_to(src.resolve())
        images = [p for p in files if not (inside and p.resolve().is_relative_to(options.masks.resolve()))]
        pairs = _in_tree(images, src, options.masks, options.mask_suffix, scan)
    else:
        pairs = _side_by_side(files, options.mask_suffix, scan, src)
    classes = sorted({path.relative_to(src).parts[0] for path, _ in pairs if len(path.relative_to(src).parts) > 1})
    unknown = sorted(set(options.good) - set(classes))
    if unknown:
        raise DatasetError(f"--good names {', '.join(unknown)}, not a class folder of {src} "
                           f"(classes: {', '.join(classes) or 'none'})")
    positive_dirs = [d.resolve() for d in options.positive_dirs]
    for d in options.positive_dirs:
        if not d.is_dir():
            raise DatasetError(f"--positive-dir {d} does not exist")
    for path, mask in pairs:
        parts = path.relative_to(src).parts
        cls = parts[0] if len(parts) > 1 else ""
        defect = None
        if options.good and cls:
            defect = cls not in options.good
        if any(path.resolve().is_relative_to(d) for d in positive_dirs):
            defect = True
        scan.items.append(SourceItem(path, rel(path, src), f"{cls}_{path.stem}" if cls else path.stem, cls=cls,
                                     mask=MaskFile(mask) if mask else None, defect=defect))
    if not scan.items:
        raise DatasetError(f"no images under {src} (.png .jpg .jpeg .bmp .tif .tiff)")
    return scan
