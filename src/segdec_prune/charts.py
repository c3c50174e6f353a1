"""Charts from real_evaluation_results.json (matplotlib, written atomically as PNG).

chart1_master_benchmark.png  AP vs GMACs per method; parameters per model; per runtime: AP vs
                             latency (Pareto models labelled), measured vs ideal speed-up
chart2_pareto.png            AP vs CPU latency, every model x CPU runtime (ONNX Runtime, OpenVINO) x dtype,
                             Pareto front
chart3_qualitative.png       defective test images: ground truth, baseline and a pruned model
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .artifacts import atomic_write  # noqa: E402
from .config import Config  # noqa: E402
from .results import pareto_front  # noqa: E402
from .runtimes.base import CPU_RUNTIMES  # noqa: E402

CHART_FILES = ("chart1_master_benchmark.png", "chart2_pareto.png", "chart3_qualitative.png")
MARKERS = {("torch", "fp32"): "o", ("onnxruntime", "fp32"): "s", ("onnxruntime", "int8"): "D",
           ("openvino", "fp32"): "P", ("openvino", "int8"): "X", ("tensorrt", "fp16"): "^", ("tensorrt", "int8"): "v"}


def _colors(methods: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {m: ("black" if m == "baseline" else cmap(i % 10)) for i, m in enumerate(methods)}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    plt.close(fig)
    return out


OFFSETS = [(4, 4), (4, -10), (-16, 4), (-16, -10), (8, 12), (8, -18), (-24, 12), (-24, -18), (14, 0), (-30, 0)]


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 7,
                 avoid: Sequence[tuple[float, float]] = ()) -> int:
    """Annotate points, each at the first nearby offset where it overlaps no earlier label and no
    marker (its points' and `avoid`'s); a label with no free spot is left out. Returns how many
    were placed."""
    renderer = ax.figure.canvas.get_renderer()
    to_px = ax.transData.transform
    marks = [to_px((x, y)) for x, y in [*((x, y) for x, y, _ in points), *avoid]]
    placed = []
    for x, y, text in points:
        for dx, dy in OFFSETS:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize)
            box = t.get_window_extent(renderer).padded(1)
            if not any(box.overlaps(b) for b in placed) and not any(box.contains(*m) for m in marks):
                placed.append(box)
                break
            t.remove()
    return len(placed)


def _method_legend(fig, color: dict[str, str]) -> None:
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in color.items()]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.965), title="colour = pruning method (same in every panel)", title_fontsize=9)


def master(records: list[dict], path: Path) -> Path:
    """2 x 2 summary on top; below, one panel per runtime for accuracy vs latency (its Pareto
    models labelled) and for speed-up vs MAC reduction (with the ideal curve)."""
    methods = sorted({r["method"] for r in records}, key=lambda m: (m != "baseline", m))
    color = _colors(methods)
    torch_rows = [r for r in records if r["runtime"] == "torch"]
    base = next(r for r in torch_rows if r["method"] == "baseline")
    kinds = [k for k in MARKERS if any((r["runtime"], r["dtype"]) == k for r in records)]
    fig = plt.figure(figsize=(max(14, 4.2 * len(kinds)), 17))
    grid = fig.add_gridspec(3, 1, height_ratios=[1.1, 1, 1], hspace=0.38, top=0.9, bottom=0.05, left=0.06, right=0.98)
    top = grid[0].subgridspec(1, 2, wspace=0.25)
    compute = a = fig.add_subplot(top[0])
    labels = []
    for m in methods[1:]:
        rows = sorted((r for r in torch_rows if r["method"] == m), key=lambda r: -r["macs"])
        a.plot([r["macs"] / 1e9 for r in rows], [r["ap"] for r in rows], "-o", color=color[m])
        labels += [(r["macs"] / 1e9, r["ap"], r["model"]) for r in rows]
    a.plot(base["macs"] / 1e9, base["ap"], "*", ms=16, color="black")
    a.set(xlabel="GMACs per image (run's input size)", ylabel="test AP",
          title="Accuracy vs compute (PyTorch FP32; star = baseline, lines join a method's ratios)")
    a = fig.add_subplot(top[1])
    rows = sorted(torch_rows, key=lambda r: -r["parameters"])
    a.barh([r["model"] for r in rows], [r["parameters"] / 1e6 for r in rows], color=[color[r["method"]] for r in rows])
    a.set(xlabel="parameters (millions)", title="Model size (bar colour = method)")
    a.tick_params(axis="y", labelsize=7)
    a.invert_yaxis()
    lat = grid[1].subgridspec(1, len(kinds), wspace=0.08)
    spd = grid[2].subgridspec(1, len(kinds), wspace=0.18)
    red = np.linspace(0, 0.9, 50)
    fronts, first = [], None
    for i, kind in enumerate(kinds):
        rows = [r for r in records if (r["runtime"], r["dtype"]) == kind]
        a = fig.add_subplot(lat[i], sharey=first)  # one AP scale across the runtimes
        first = first or a
        for r in rows:
            a.scatter(r["latency_ms_median"], r["ap"], marker=MARKERS[kind], color=color[r["method"]],
                      s=70 if r["method"] == "baseline" else 32, zorder=3)
        front = pareto_front(rows, runtime=None)
        a.plot([r["latency_ms_median"] for r in front], [r["ap"] for r in front], "-", color="red", lw=1, zorder=2)
        fronts.append((a, [(r["latency_ms_median"], r["ap"], r["model"]) for r in front],
                       [(r["latency_ms_median"], r["ap"]) for r in rows]))
        a.set(xlabel="batch-1 latency, median (ms)", title=f"{kind[0]} {kind[1]}: AP vs latency\n(red line: Pareto "
              "front, labelled)")
        a.set_ylabel("test AP" if i == 0 else "")
        a.tick_params(labelleft=i == 0)
        b = fig.add_subplot(spd[i])
        top_speed = max((r["speedup_vs_baseline"] or 1 for r in rows), default=1)
        ideal = red[1 / (1 - red) <= 1.5 * top_speed]  # the ideal curve up to a little above the measured points
        b.plot(ideal * 100, 1 / (1 - ideal), "--", color="gray", label="ideal: 1 / (1 - MAC reduction)")
        for r in rows:
            if r["speedup_vs_baseline"] and r["mac_reduction"] is not None:
                b.scatter(r["mac_reduction"] * 100, r["speedup_vs_baseline"], color=color[r["method"]],
                          marker=MARKERS[kind], s=32, zorder=3)
        b.set(xlabel="MAC reduction (%)", title=f"{kind[0]} {kind[1]}: measured vs ideal speed-up")
        b.set_ylabel("speed-up vs baseline (same runtime)" if i == 0 else "")
        b.legend(fontsize=8, loc="upper left")
    _method_legend(fig, color)
    fig.suptitle(f"SegDecNet pruning benchmark ({base['threads']} threads, {base['device']})", y=0.995)
    place_labels(compute, labels)
    for a, points, others in fronts:
        place_labels(a, points, avoid=others)
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def pareto(records: list[dict], path: Path) -> Path:
    rows = [r for r in records if r["runtime"] in CPU_RUNTIMES] or records
    front = pareto_front(records)
    color = _colors(sorted({r["method"] for r in rows}, key=lambda m: (m != "baseline", m)))
    fig, a = plt.subplots(figsize=(12, 8))
    for r in rows:
        a.scatter(r["latency_ms_median"], r["ap"], color=color[r["method"]], marker=MARKERS.get((r["runtime"], r["dtype"]), "x"))
    a.plot([r["latency_ms_median"] for r in front], [r["ap"] for r in front], "-", color="red", lw=1.5, label="Pareto front")
    lines = []  # the operating point a deployment gets: each model's validation threshold, not the test-optimal one
    for k, r in enumerate(front, 1):
        lines.append(f"{k}  {r['model']} {r['runtime']} {r['dtype']}: AP {r['ap']:.3f}, {r['latency_ms_median']:.1f} ms, F1 {r['f1']:.2f}, "
                     f"FP/FN {r['fp_at_threshold']}/{r['fn_at_threshold']} at {r['threshold']:.2f}")
    a.text(0.0, -0.1, "Pareto front (F1, FP/FN at the model's validation threshold)\n" + "\n".join(lines),
           transform=a.transAxes, fontsize=7.5, ha="left", va="top", family="monospace",
           bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    for m, c in color.items():
        a.scatter([], [], color=c, marker="o", label=f"colour: {m}")
    for key in sorted({(r["runtime"], r["dtype"]) for r in rows}, key=list(MARKERS).index):
        a.scatter([], [], color="gray", marker=MARKERS[key], label=f"marker: {key[0]} {key[1]}")
    a.set(xlabel="batch-1 CPU latency, median (ms, log scale)", ylabel="test AP",
          title="Which model to ship: CPU runtimes side by side (numbers: the Pareto front, listed below)")
    a.set_xscale("log")
    a.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    a.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot: it hides no point
    fig.tight_layout()
    place_labels(a, [(r["latency_ms_median"], r["ap"], str(k)) for k, r in enumerate(front, 1)], fontsize=9,
                 avoid=[(r["latency_ms_median"], r["ap"]) for r in rows])
    return _save(fig, path)


def qualitative(cfg: Config, records: list[dict], path: Path, n: int = 6) -> Path:
    """Ground truth and predicted masks for the baseline and the fastest pruned model whose AP
    is within 2 points of the baseline's (else the best pruned one)."""
    import cv2

    from .checkpoint import load_checkpoint
    from .data.dataset import KSDD2Dataset, load_split, preprocessing_for
    from .evaluation import sigmoid
    from .runtimes import TorchRuntime

    torch_rows = [r for r in records if r["runtime"] == "torch"]
    base = next(r for r in torch_rows if r["method"] == "baseline")
    pruned = [r for r in torch_rows if r["method"] != "baseline"]
    good = [r for r in pruned if r["ap"] >= base["ap"] - 0.02]
    pick = min(good, key=lambda r: r["macs"]) if good else max(pruned, key=lambda r: r["ap"], default=base)
    ds = KSDD2Dataset(load_split(cfg.data.root, "test", preprocessing_for(cfg.data, cfg.train)))
    idx = np.flatnonzero(ds.labels)[:n]
    images = np.stack([ds[int(i)]["image"].numpy() for i in idx])
    preds = {}
    for r in (base, pick):
        dec, seg = TorchRuntime(load_checkpoint(cfg.run_dir / "models" / f"{r['model']}.pth").model).predict(images)
        preds[r["model"]] = (sigmoid(dec), sigmoid(seg[:, 0]), r["threshold"])
    fig, ax = plt.subplots(4, len(idx), figsize=(1.9 * len(idx) + 1, 13), squeeze=False)
    rows = ["input", "ground truth", *(f"{name}\n(defect probability)" for name in preds)]
    for k, i in enumerate(idx):
        s = ds.samples[int(i)]
        h, w = s["mask_full"].shape
        panels = [(s["image"][:, :, ::-1], f"{s['id']}"), (s["mask_full"], "")]
        for score, seg, thr in preds.values():
            call = "defect" if score[k] >= thr else "missed"
            panels.append((cv2.resize(seg[k], (w, h)), f"score {score[k]:.2f}: {call}"))
        for j, (img, title) in enumerate(panels):
            a = ax[j, k]
            a.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=255 if img.ndim == 3 else 1)
            a.set_title(title, fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
            if k == 0:
                a.set_ylabel(rows[j], fontsize=9)
    thr = ", ".join(f"{name} {t:.2f}" for name, (_, _, t) in preds.items())
    fig.suptitle("Defective test images (white = defect); score = image-level defect probability, called a defect at "
                 f"the model's validation threshold ({thr})")
    return _save(fig, path)


def make_charts(cfg: Config) -> list[Path]:
    from .results import RESULTS_FILE

    src = cfg.run_dir / RESULTS_FILE
    if not src.is_file():
        raise FileNotFoundError(f"no {src}; run `segdec-prune evaluate --config ...` first")
    records = json.loads(src.read_text())["records"]
    out = cfg.run_dir / "charts"
    return [master(records, out / CHART_FILES[0]), pareto(records, out / CHART_FILES[1]),
            qualitative(cfg, records, out / CHART_FILES[2])]
