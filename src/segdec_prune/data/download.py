"""Fetch, resume, unpack and check the official KSDD2 archive."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .ksdd2 import SPLITS, VAL, DatasetError, check_sizes, find_samples, read_image, read_mask

# The link on the paper's project page (redirects to the archive).
OFFICIAL_URL = "https://go.vicos.si/kolektorsdd2"
# Counts of the official archive, for `data check` to compare against.
OFFICIAL_COUNTS = {"train": (2331, 246), "test": (1004, 110)}


def fetch(url: str, dest: Path, on_progress: Callable[[int, int | None], None] | None = None,
          chunk: int = 1 << 16, timeout: float = 60) -> Path:
    """Download `url` to `dest`, resuming from `dest.part` when the server honours Range."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            part.replace(dest)
            return dest
        raise
    with resp:
        if have and resp.status != 206:  # server ignored Range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f:
            done = have
            while block := resp.read(chunk):
                f.write(block)
                done += len(block)
                if on_progress:
                    on_progress(done, total)
    if total is not None and part.stat().st_size != total:
        raise OSError(f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume")
    part.replace(dest)
    return dest


def unpack(archive: Path, out: Path) -> Path:
    """Extract a zip (refusing paths that escape `out`) and return the folder holding train/test."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        root = out.resolve()
        for name in zf.namelist():
            target = (out / name).resolve()
            if root not in target.parents and target != root:
                raise DatasetError(f"archive member {name!r} would be written outside {out}")
        zf.extractall(out)
    return find_root(out)


def find_root(folder: Path) -> Path:
    """The folder itself, or the one folder inside it, that holds train/ and test/."""
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    for c in candidates:
        if all((c / s).is_dir() for s in SPLITS):
            return c
    raise DatasetError(f"no train/ and test/ folders found in {folder}")


def download(out: str | Path, url: str = OFFICIAL_URL,
             on_progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch (resumable), unpack into `out`, move train/test to `out` itself; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "KolektorSDD2.zip"
    if not archive.exists():
        fetch(url, archive, on_progress)
    if not zipfile.is_zipfile(archive):
        archive.unlink()
        raise DatasetError(f"{url} did not return a zip archive; removed it, try again or pass --url")
    root = unpack(archive, out)
    if root != out:
        for split in SPLITS:
            if (out / split).exists():
                raise DatasetError(f"{out / split} already exists; remove it or unpack elsewhere")
            shutil.move(str(root / split), str(out / split))
    return out


@dataclass
class SplitReport:
    split: str
    images: int = 0
    positives: int = 0
    negatives: int = 0
    problems: list[str] = field(default_factory=list)


def check(root: str | Path) -> list[SplitReport]:
    """Count images/positives per split and collect every problem instead of stopping."""
    reports = []
    for split in (*SPLITS, VAL) if (Path(root) / VAL).is_dir() else SPLITS:
        refs, problems = find_samples(root, split)
        rep = SplitReport(split, problems=problems)
        reports.append(rep)
        for ref in refs:
            try:
                mask = read_mask(ref)
                check_sizes(ref, read_image(ref.image, 3), mask)
            except DatasetError as exc:
                rep.problems.append(str(exc))
                continue
            rep.images += 1
            rep.positives += int(mask.any() or ref.positive)
        rep.negatives = rep.images - rep.positives
    return reports
