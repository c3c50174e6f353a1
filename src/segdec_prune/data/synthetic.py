"""A synthetic data set in the exact KSDD2 layout, for demos and tests.

Metal-like surfaces (illumination gradients, directional grain, machining streaks, sensor
noise, benign blemishes) with scratches, pits, cracks and stains of varied size and contrast,
some faint enough to be hard. Each image depends only on (seed, split, index).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFECT_KINDS = ("scratch", "pit", "crack", "stain")
ID_BASE = {"train": 10000, "test": 20000}


@dataclass(frozen=True)
class SynthSpec:
    train: int = 600
    test: int = 300
    positive_fraction: float = 0.1
    seed: int = 0
    faint_fraction: float = 0.12  # share of defects drawn at low contrast


def _surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float BGR surface in [0, 255] before defects."""
    import cv2  # here: the CLI imports SynthSpec for its defaults, and must start without OpenCV

    base = rng.uniform(90, 150) + rng.normal(0, 6, size=3)  # greyish, slight tint
    y = np.linspace(-1, 1, h)[:, None]
    x = np.linspace(-1, 1, w)[None, :]
    light = 1 + rng.uniform(-0.15, 0.15) * y + rng.uniform(-0.1, 0.1) * x + rng.uniform(0, 0.12) * -(x**2)
    low = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=25, sigmaY=60)
    light = light + low / (np.abs(low).max() + 1e-6) * rng.uniform(0.02, 0.08)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=0.7, sigmaY=rng.uniform(3, 9))
    grain *= rng.uniform(4, 10) / (grain.std() + 1e-6)
    img = base[None, None, :] * light[..., None] + grain[..., None]
    for _ in range(rng.integers(2, 10)):  # machining streaks along the long axis
        cx, width = rng.uniform(0, w), rng.uniform(0.5, 3)
        img += (rng.uniform(-12, 12) * np.exp(-(((np.arange(w) - cx) / width) ** 2)))[None, :, None]
    for _ in range(rng.integers(0, 3)):  # benign soft blemishes: look like weak stains
        m = np.zeros((h, w), np.float32)
        cv2.ellipse(m, _pt(rng, h, w), (int(rng.integers(8, 30)), int(rng.integers(8, 40))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        img += cv2.GaussianBlur(m, (0, 0), 8)[..., None] * rng.uniform(-10, 10)
    return img


def _pt(rng: np.random.Generator, h: int, w: int, margin: int = 10) -> tuple[int, int]:
    return int(rng.integers(margin, w - margin)), int(rng.integers(margin, h - margin))


def _defect(rng: np.random.Generator, kind: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(binary mask uint8, float soft profile in [0,1]) of one defect."""
    import cv2

    m = np.zeros((h, w), np.uint8)
    if kind == "scratch":
        x0, y0 = _pt(rng, h, w)
        ang, length = rng.uniform(0, np.pi), rng.uniform(40, 200)
        x1, y1 = int(x0 + length * np.cos(ang)), int(y0 + length * np.sin(ang))
        cv2.line(m, (x0, y0), (x1, y1), 1, int(rng.integers(3, 8)))
    elif kind == "pit":
        for _ in range(rng.integers(1, 4)):
            c = _pt(rng, h, w)
            cv2.ellipse(m, c, (int(rng.integers(5, 14)), int(rng.integers(5, 14))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
            if rng.random() < 0.5:
                break
    elif kind == "crack":
        pts = [np.array(_pt(rng, h, w), float)]
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(8, 25)):
            ang += rng.normal(0, 0.5)
            pts.append(pts[-1] + rng.uniform(6, 14) * np.array([np.cos(ang), np.sin(ang)]))
        cv2.polylines(m, [np.array(pts, np.int32)], False, 1, int(rng.integers(3, 6)))
    else:  # stain
        cv2.ellipse(m, _pt(rng, h, w, 30), (int(rng.integers(10, 35)), int(rng.integers(12, 50))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    soft = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 3.0 if kind == "stain" else 0.8)
    return m, np.clip(soft / max(soft.max(), 1e-6), 0, 1)


def render(seed: int, split: str, index: int, positive: bool, faint_fraction: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 BGR, about 230x630, varying) and its mask (uint8 0/255)."""
    rng = np.random.default_rng([seed, ID_BASE[split], index])
    h, w = int(rng.integers(600, 666)), int(rng.integers(222, 242))
    img = _surface(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    if positive:
        for _ in range(1 if rng.random() < 0.8 else 2):
            kind = DEFECT_KINDS[rng.integers(len(DEFECT_KINDS))]
            m, soft = _defect(rng, kind, h, w)
            contrast = rng.uniform(30, 80)
            if rng.random() < faint_fraction:
                contrast = rng.uniform(8, 18)
            sign = 1.0 if (kind == "scratch" and rng.random() < 0.4) else -1.0
            tint = np.array([1.0, 1.0, 1.0]) if kind != "stain" else np.array([0.6, 0.9, 1.3])
            img += sign * contrast * soft[..., None] * tint[None, None, :]
            mask |= m
    img += rng.normal(0, rng.uniform(1.5, 4), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask * 255


def _write_one(out: Path, spec: SynthSpec, split: str, i: int) -> tuple[str, bool]:
    positive = bool(np.random.default_rng([spec.seed, ID_BASE[split], i, 1]).random() < spec.positive_fraction)
    img, mask = render(spec.seed, split, i, positive, spec.faint_fraction)
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    _write_png(folder / f"{ID_BASE[split] + i}.png", img)
    _write_png(folder / f"{ID_BASE[split] + i}_GT.png", mask)
    return split, positive


def write_dataset(out: str | Path, spec: SynthSpec = SynthSpec(), workers: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, int]]:
    """Write OUT/{train,test}/<id>.png + <id>_GT.png in parallel; returns counts per split."""
    out = Path(out)
    plan = [(split, i) for split, n in (("train", spec.train), ("test", spec.test)) for i in range(n)]
    counts: dict[str, dict[str, int]] = {s: {"images": 0, "positives": 0} for s in ("train", "test")}
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        jobs = [pool.submit(_write_one, out, spec, split, i) for split, i in plan]
        for done, job in enumerate(as_completed(jobs), 1):
            split, positive = job.result()
            counts[split]["images"] += 1
            counts[split]["positives"] += int(positive)
            if on_progress:
                on_progress(done, len(plan))
    return counts


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
