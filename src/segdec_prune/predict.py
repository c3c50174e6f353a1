"""New images -> defect scores, decisions and overlays, in any runtime (`segdec-prune predict`).

Each image is read as OpenCV reads it, resized to the model's stored input size and scaled as
the model's input spec says: exactly the preprocessing of training. The decision threshold is
the model's own (its validation best-F1 threshold) unless the caller gives one. Unreadable
images are skipped and reported, never fatal. predictions.csv grows as batches are scored
(flushed to disk after each), so a crash keeps the work done; `resume` skips what it holds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .artifacts import DISK_ERRNOS, atomic_write, write_error
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
    rows: list[dict] = field(default_factory=list)  # every row of the CSV: an earlier run's (resume) and this one's
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, why)
    csv: Path | None = None
    resumed: int = 0  # rows kept from the CSV a resumed run found
    interrupted: bool = False  # Ctrl-C: stopped after the batch in hand


class CsvRows:
    """OUT/predictions.csv, appended and flushed to disk a batch at a time: one header, whole rows.
    With `resume` the rows already there are kept (a torn last line from a kill is dropped) and
    must have been written with the same columns and threshold."""

    def __init__(self, path: Path, columns: list[str], threshold: float, resume: bool) -> None:
        self.path, self.columns, self.file = path, columns, None
        self.rows: list[dict] = self._earlier(f"{threshold:.6f}") if resume and path.is_file() else []

    def _earlier(self, threshold: str) -> list[dict]:
        text = self.path.read_text(encoding="utf-8")
        whole = text[: text.rfind("\n") + 1]
        rows = list(csv.DictReader(io.StringIO(whole)))
        header = whole.split("\n", 1)[0].split(",") if whole else []
        if header and header != self.columns:
            hint = "with" if "overlay" in header else "without"
            raise InputError(f"{self.path} has the columns {','.join(header)}: resume {hint} --overlays as it was "
                             "written, or start afresh without --resume")
        if rows and rows[0]["threshold"] != threshold:
            raise InputError(f"{self.path} was written at threshold {rows[0]['threshold']}, not {threshold}: resume "
                             "with the same model and threshold, or start afresh without --resume")
        if whole != text:  # killed mid-line: keep the whole rows only
            atomic_write(self.path, lambda tmp: tmp.write_text(whole, encoding="utf-8"))
        return rows

    def append(self, rows: list[dict]) -> None:
        try:
            if self.file is None:  # opened at the first scored batch: nothing written when nothing scored
                fresh = not self.rows
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "w" if fresh else "a", encoding="utf-8", newline="")
                self.writer = csv.DictWriter(self.file, fieldnames=self.columns, lineterminator="\n")
                if fresh:
                    self.writer.writeheader()
            self.writer.writerows(rows)
            self.file.flush()
            os.fsync(self.file.fileno())  # on disk, not in a page cache a power cut empties
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                raise write_error(self.path, exc.errno) from None
            raise
        self.rows += rows

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # a full disk was said already
                self.file.close()
            self.file = None


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C sets the event (scoring stops after the batch in hand, its rows written); a second
    Ctrl-C interrupts at once. Off the main thread signals cannot be caught: nothing changes."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


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
                   batch: int = 8, overlays: bool = False, on_done: Callable[[int], None] | None = None,
                   resume: bool = False) -> PredictReport:
    """Score `paths` in batches, appending to out/predictions.csv (and writing out/overlays/*.png)
    as they go. `ms` is each image's share of its batch's runtime call (= batch-1 latency with
    batch 1). `resume`: images already in the CSV are not scored again. `on_done` gets the count
    of images handled so far (scored, skipped, or found in the CSV)."""
    report = PredictReport()
    sink = CsvRows(out / CSV_FILE, list(CSV_COLUMNS) + ["overlay"] * overlays, threshold, resume)
    done = {r["path"] for r in sink.rows}
    names = {Path(r["overlay"]).stem for r in sink.rows if r.get("overlay")}
    todo = [p for p in paths if str(p) not in done]
    report.resumed = len(sink.rows)
    try:
        with _stop_on_ctrl_c() as stop:
            for items in _batches(todo, spec, batch, report):
                x = np.stack([model_input(image, spec) for _, image in items])
                t0 = time.perf_counter()
                dec, seg = runtime.predict(x)
                ms = (time.perf_counter() - t0) * 1e3 / len(items)
                scores, maps = sigmoid(np.asarray(dec, np.float64)), sigmoid(np.asarray(seg, np.float32)[:, 0])
                rows = []
                for (path, image), score, seg_map in zip(items, scores, maps):
                    row = {"path": str(path), "score": f"{score:.6f}", "defective": "yes" if score >= threshold else "no",
                           "threshold": f"{threshold:.6f}", "ms": f"{ms:.2f}"}
                    if overlays:
                        name = _unique(path.stem, names)
                        png = atomic_write(out / "overlays" / f"{name}.png", lambda tmp: _write_png(
                            tmp, overlay(image, seg_map, float(score), score >= threshold)))
                        row["overlay"] = str(png.relative_to(out))
                    rows.append(row)
                sink.append(rows)
                if on_done:
                    on_done(len(paths) - len(todo) + len(sink.rows) - report.resumed + len(report.skipped))
                if stop.is_set():
                    report.interrupted = True
                    break
    finally:
        sink.close()
    if on_done and not report.interrupted:
        on_done(len(paths))
    report.rows = sink.rows
    report.csv = sink.path if sink.rows else None
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
