"""New images -> defect scores, decisions and overlays, in any runtime (`segdec-prune predict`).

Each image is read as OpenCV reads it, resized to the model's stored input size and scaled as
the model's input spec says: exactly the preprocessing of training. The decision threshold is
the model's own (its validation best-F1 threshold) unless the caller gives one. Unreadable
images are skipped and reported, never fatal; predictions.csv is written atomically at the end.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .artifacts import atomic_write
from .checkpoint import InputSpec
from .data.ksdd2 import DatasetError, read_image, resize_image
from .evaluation import sigmoid
from .runtimes.base import Runtime

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CSV_FILE = "predictions.csv"
CSV_COLUMNS = ("path", "score", "defective", "threshold", "ms")


class InputError(ValueError):
    """An input path that does not exist or holds no images."""


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly, and the images in named folders (sorted, not recursive;
    KSDD2 masks `*_GT.*` are left out)."""
    found: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                            and not f.stem.endswith("_GT"))
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"input not found: {p}")
    if not found:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return found


def model_input(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """float32 [C,H,W] at the model's input size, scaled as at training."""
    x = resize_image(image, spec.height, spec.width).transpose(2, 0, 1).astype(np.float32)
    return x * np.float32(spec.scale)


def overlay(image: np.ndarray, seg_prob: np.ndarray, score: float, defective: bool) -> np.ndarray:
    """The defect map upsampled to the image's own size, blended over it (stronger where the
    model is surer), the 0.5 contour drawn, and the score in a corner. BGR uint8, native size."""
    h, w = image.shape[:2]
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    prob = cv2.resize(seg_prob.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1)
    heat = cv2.applyColorMap((prob * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.6 * prob)[:, :, None]
    out = (base * (1 - alpha) + heat * alpha).astype(np.uint8)
    contours, _ = cv2.findContours((prob >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(h, w) // 200))
    label = f"{score:.3f} {'DEFECT' if defective else 'ok'}"
    scale = max(0.35, min(h, w) / 400)
    cv2.putText(out, label, (4, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 255) if defective else (0, 200, 0), max(1, int(2 * scale)), cv2.LINE_AA)
    return out


@dataclass
class PredictReport:
    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, why)
    csv: Path | None = None


def _batches(paths: Sequence[Path], spec: InputSpec, size: int, report: PredictReport
             ) -> Iterator[list[tuple[Path, np.ndarray]]]:
    batch: list[tuple[Path, np.ndarray]] = []
    for path in paths:
        try:
            image = read_image(path, spec.channels)  # as training reads it: BGR, or grayscale for 1 channel
        except DatasetError:
            report.skipped.append((path, "unreadable: corrupt or not an image"))
            continue
        batch.append((path, image))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_images(runtime: Runtime, spec: InputSpec, paths: Sequence[Path], out: Path, threshold: float,
                   batch: int = 8, overlays: bool = False, on_done: Callable[[int], None] | None = None) -> PredictReport:
    """Score `paths` in batches; write out/predictions.csv (and out/overlays/*.png). `ms` is each
    image's share of its batch's runtime call (= batch-1 latency with batch 1). `on_done` gets
    the count of images handled so far (scored or skipped)."""
    report = PredictReport()
    names: set[str] = set()
    for items in _batches(paths, spec, batch, report):
        x = np.stack([model_input(image, spec) for _, image in items])
        t0 = time.perf_counter()
        dec, seg = runtime.predict(x)
        ms = (time.perf_counter() - t0) * 1e3 / len(items)
        scores, maps = sigmoid(np.asarray(dec, np.float64)), sigmoid(np.asarray(seg, np.float32)[:, 0])
        for (path, image), score, seg_map in zip(items, scores, maps):
            row = {"path": str(path), "score": f"{score:.6f}", "defective": "yes" if score >= threshold else "no",
                   "threshold": f"{threshold:.6f}", "ms": f"{ms:.2f}"}
            if overlays:
                name = _unique(path.stem, names)
                png = atomic_write(out / "overlays" / f"{name}.png",
                                   lambda tmp: _write_png(tmp, overlay(image, seg_map, float(score), score >= threshold)))
                row["overlay"] = str(png.relative_to(out))
            report.rows.append(row)
        if on_done:
            on_done(len(report.rows) + len(report.skipped))
    if on_done:
        on_done(len(report.rows) + len(report.skipped))
    if report.rows:
        report.csv = atomic_write(out / CSV_FILE, lambda tmp: tmp.write_text(_csv(report.rows), encoding="utf-8"))
    return report


def _unique(stem: str, taken: set[str]) -> str:
    """Overlay file names: the image's stem, numbered when two inputs share one."""
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode overlay {path}")
    path.write_bytes(data.tobytes())


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS) + (["overlay"] if "overlay" in rows[0] else []),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
