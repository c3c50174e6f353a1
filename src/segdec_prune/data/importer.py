"""`data import`: any source layout (data/formats) -> the KSDD2 layout + `import.json`, atomically.

The output is ROOT/{train,val,test}/<id>.png + <id>_GT.png (0/255 masks at native size), and
`weak_labels.json` for defective images that have no mask. It is assembled in a hidden folder
beside ROOT and renamed into place, so ROOT is complete or absent; an earlier import there is
replaced, anything else is refused. The same source and options give the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..artifacts import UMASK, sha256, strict_json
from .formats import FORMATS, FormatOptions, SourceItem
from .formats.common import clean_id, read_array, rel, to_uint8
from .ksdd2 import DatasetError, WEAK_LABELS
from .splits import group_keys, grouped_split

MANIFEST = "import.json"
TOOL = "segdec-prune data import"
VAL_FROM = ("train", "split", "none")


@dataclass(frozen=True)
class ImportOptions:
    format: str
    val_from: str = "train"  # train: carve val from train here; split: the source's val; none: leave it to training
    val_fraction: float = 0.2
    test_fraction: float = 0.3  # for sources without a test split
    group_by: str | None = None
    group_size: int | None = None
    skip_bad: bool = False
    seed: int = 0
    reader: FormatOptions = field(default_factory=FormatOptions)

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise DatasetError(f"unknown format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.val_from not in VAL_FROM:
            raise DatasetError(f"--val-from must be one of {', '.join(VAL_FROM)}, got {self.val_from!r}")
        for name, value in (("--val-fraction", self.val_fraction), ("--test-fraction", self.test_fraction),
                            ("--defect-train-fraction", self.reader.defect_train_fraction)):
            if not 0 < value < 1:
                raise DatasetError(f"{name} must be in (0, 1), got {value}")
        if self.group_size is not None and self.group_size < 1:
            raise DatasetError(f"--group-size must be >= 1, got {self.group_size}")


@dataclass
class _Read:
    """What pass 1 learned of one item; the pixels are already written to the staging folder."""

    item: SourceItem
    id: str
    size: tuple[int, int]  # width, height
    channels: int
    bit_depth: int
    mask_pixels: int
    defect: bool
    hashes: dict[str, str]


def _check_out(out: Path, src: Path) -> None:
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise DatasetError(f"--out {out} would overwrite the source {src}: choose another folder")
    if out.resolve().is_relative_to(src.resolve()):
        raise DatasetError(f"--out {out} is inside the source {src}: its files would be read as source images")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_import(out))):
        raise DatasetError(f"{out} exists and is not an earlier import (no {MANIFEST} from `{TOOL}`): "
                           "choose a new folder or remove it")


def _is_import(out: Path) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("tool") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def _unique_ids(items: list[SourceItem]) -> list[str]:
    ids, seen = [], {}
    for item in items:
        sid = clean_id(item.id)
        if sid in seen:
            raise DatasetError(f"{seen[sid]} and {item.rel} both map to id {sid!r}: rename one of them")
        seen[sid] = item.rel
        ids.append(sid)
    return ids


def _read_one(item: SourceItem, sid: str, staging: Path, src: Path) -> _Read:
    raw = read_array(item.image)
    image = to_uint8(raw, item.image)
    h, w = image.shape[:2]
    mask = item.mask.read(h, w) if item.mask else np.zeros((h, w), np.uint8)
    if mask.shape[:2] != (h, w):
        raise DatasetError(f"mask {item.mask.path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                           f"{item.image} is {w}x{h} (width x height)")
    pixels = int(mask.sum())
    if item.defect is False and pixels:
        raise DatasetError(f"mask {item.mask.path} marks {pixels} defect pixels, but class {item.cls!r} is named defect-free")
    for path, arr in ((staging / f"{sid}.png", image), (staging / f"{sid}_GT.png", mask * 255)):
        ok, buf = cv2.imencode(".png", arr)
        if not ok:
            raise DatasetError(f"cannot encode {item.image} as PNG")
        path.write_bytes(buf.tobytes())
    hashes = {item.rel: sha256(item.image)}
    if item.mask:
        hashes[rel(item.mask.path, src)] = sha256(item.mask.path)
    return _Read(item, sid, (w, h), 1 if image.ndim == 2 else image.shape[2], raw.dtype.itemsize * 8, pixels,
                 bool(item.defect) if item.defect is not None else pixels > 0, hashes)


def _assign_splits(reads: list[_Read], opts: ImportOptions) -> tuple[list[str], list[str], int]:
    """Output split per item, each item's group, and how many images the group pattern missed."""
    source = {r.item.split for r in reads}
    if opts.val_from == "split" and not {"val", "test"} <= source:
        raise DatasetError("--val-from split needs a source with both a val and a test split "
                           f"(this one has: {', '.join(sorted(s for s in source if s)) or 'no splits'})")
    groups, unmatched = group_keys([r.item.rel for r in reads], [r.item.group for r in reads],
                                   opts.group_by, opts.group_size)
    strata = [f"{r.item.cls or ('defect' if r.defect else 'good')}|{r.defect}" for r in reads]
    val_to = "val" if opts.val_from == "split" else ("train" if "test" in source else "test")
    splits = [{"train": "train", "test": "test", "val": val_to}.get(r.item.split or "", "") for r in reads]
    if "test" not in splits:  # a source with a train split alone: its test split is carved like an unsplit one's
        splits = ["" if s == "train" else s for s in splits]
    for pool, fraction, held_name, salt in (("", opts.test_fraction, "test", 0), ("train", opts.val_fraction, "val", 1)):
        if pool == "train" and opts.val_from != "train":
            continue
        idx = [i for i, s in enumerate(splits) if s == pool]
        if not idx:
            continue
        held = grouped_split([strata[i] for i in idx], [groups[i] for i in idx], fraction, opts.seed + salt)
        for i, h in zip(idx, held):
            splits[i] = held_name if h else "train"
    return splits, groups, unmatched


def _counts(reads: list[_Read], splits: list[str]) -> dict[str, dict]:
    counts: dict[str, dict] = {}
    for r, split in zip(reads, splits):
        c = counts.setdefault(split, {"images": 0, "positives": 0, "negatives": 0, "positives_without_mask": 0,
                                      "classes": Counter()})
        c["images"] += 1
        c["positives" if r.defect else "negatives"] += 1
        c["positives_without_mask"] += int(r.defect and not r.mask_pixels)
        c["classes"][r.item.cls or ("defect" if r.defect else "good")] += 1
    return {s: {**c, "classes": dict(sorted(c["classes"].items()))} for s, c in sorted(counts.items())}


def import_dataset(src: str | Path, out: str | Path, opts: ImportOptions,
                   on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Import `src` into `out`; returns the manifest written as `out/import.json`."""
    src, out = Path(src), Path(out)
    opts.validate()
    if not src.is_dir():
        raise DatasetError(f"source folder {src} does not exist")
    _check_out(out, src)
    scan = FORMATS[opts.format](src, opts.reader)
    skipped = [{"file": f, "reason": why} for f, why in scan.problems]
    if skipped and not opts.skip_bad:
        raise _bad(skipped)
    ids = _unique_ids(scan.items)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        reads = _read_all(scan.items, ids, staging, src, skipped, opts.skip_bad, on_progress)
        if not reads:
            raise DatasetError(f"nothing to import from {src}: every image was left out")
        splits, groups, unmatched = _assign_splits(reads, opts)
        manifest = _manifest(src, opts, scan.facts, reads, splits, groups, unmatched, skipped)
        _lay_out(staging, reads, splits)
        (staging / MANIFEST).write_text(json.dumps(strict_json(manifest), indent=1) + "\n", encoding="utf-8")
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _bad(skipped: list[dict]) -> DatasetError:
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return DatasetError(f"{first['file']}: {first['reason']}{more}; --skip-bad imports the rest and lists what it left out")


def _read_all(items, ids, staging, src, skipped, skip_bad, on_progress) -> list[_Read]:
    def one(pair):
        try:
            return _read_one(*pair, staging, src)
        except DatasetError as exc:
            return exc

    reads = []
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for done, (item, result) in enumerate(zip(items, pool.map(one, zip(items, ids))), 1):
            if isinstance(result, DatasetError):
                if not skip_bad:
                    raise DatasetError(f"{result}; --skip-bad imports the rest and lists what it left out")
                skipped.append({"file": item.rel, "reason": str(result)})
            else:
                reads.append(result)
            if on_progress:
                on_progress(done, len(items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a fatal problem stops the reading at once
    return reads


def _lay_out(staging: Path, reads: list[_Read], splits: list[str]) -> None:
    weak: dict[str, list[str]] = {}
    for r, split in zip(reads, splits):
        (staging / split).mkdir(exist_ok=True)
        for name in (f"{r.id}.png", f"{r.id}_GT.png"):
            os.replace(staging / name, staging / split / name)
        if r.defect and not r.mask_pixels:
            weak.setdefault(split, []).append(r.id)
    if weak:
        (staging / WEAK_LABELS).write_text(json.dumps(dict(sorted(weak.items())), indent=1) + "\n", encoding="utf-8")


def _swap(staging: Path, out: Path) -> None:
    """Rename the finished import into place; an earlier import (or an empty folder) goes only after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    os.chmod(out, 0o777 & ~UMASK)  # mkdtemp made it 0700; a data set folder gets the usual mode
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(src, opts, facts, reads, splits, groups, unmatched, skipped) -> dict:
    by_split = {s: {g for g, sp in zip(groups, splits) if sp == s} for s in set(splits)}
    shared = sorted({g for a in by_split for b in by_split if a < b for g in by_split[a] & by_split[b]})
    return {
        "tool": TOOL,
        "version": 1,
        "source": str(src.resolve()),
        "format": opts.format,
        "options": {**{k: v for k, v in asdict(opts).items() if k != "reader"},
                    "reader": {k: (list(map(str, v)) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v))
                               for k, v in asdict(opts.reader).items()}},
        "counts": _counts(reads, splits),
        "groups": {"count": len(set(groups)), "unmatched_by_pattern": unmatched, "in_more_than_one_split": shared},
        "facts": facts,
        "skipped": skipped,
        "conversion": "images written as PNG as stored (gray stays gray); 16-bit scaled by 255/65535; "
                      "alpha dropped; masks binarised at half their range (0/1 masks: > 0), written 0/255",
        "images": [
            {"id": r.id, "split": s, "source": r.item.rel, "class": r.item.cls, "group": g, "defect": r.defect,
             "mask_pixels": r.mask_pixels, "size": list(r.size), "channels": r.channels, "bit_depth": r.bit_depth,
             "sha256": r.hashes}
            for r, s, g in sorted(zip(reads, splits, groups), key=lambda t: (t[1], t[0].id))
        ],
    }
