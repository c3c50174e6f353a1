"""Commands that hand the study on: predict on new images, bundle a model for deployment, the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import load_config
from .common import USER_ERRORS, ConfigOpt, SetOpt, app, console, counter, fail, lock_run


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files (png, jpg, bmp, tif) and/or folders of them.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pth), ONNX file (FP32 or INT8), OpenVINO IR (.xml) or TensorRT engine.")],
    out: Annotated[Path, typer.Option(help="Folder for predictions.csv (and overlays/).")] = Path("predictions"),
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Decision threshold (default: the "
                         "model's validation best-F1 threshold).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per runtime call.")] = 8,
    threads: Annotated[int, typer.Option(min=0, help="Intra-op threads (0 = runtime default).")] = 0,
    overlays: Annotated[bool, typer.Option(help="Also write one PNG per image: the defect map over it, native size.")] = False,
    resume: Annotated[bool, typer.Option(help="Keep the rows OUT/predictions.csv has and score only the images it "
                      "lacks (same model, threshold and --overlays).")] = False,
) -> None:
    """Score new images: OUT/predictions.csv (path, score, defective, threshold, ms), written as they are
    scored; Ctrl-C stops after the current batch. Exit 1 if any image was unreadable."""
    from ..deploy import open_runtime
    from ..predict import InputError, collect_images, predict_images

    try:
        paths = collect_images(inputs)
        runtime, info = open_runtime(model, threads)
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:
        fail(exc)
    if runtime.name == "tensorrt":
        from ..runtimes.tensorrt_runtime import MAX_BATCH

        batch = min(batch, MAX_BATCH)  # the engine's profile ends there
    thr = info.decision_threshold if threshold is None else threshold
    source = "given with --threshold" if threshold is not None else info.threshold_source
    console.print(f"{model.name} ({runtime.name}), input {info.spec.height}x{info.spec.width}; threshold {thr:.4f} ({source})",
                  markup=False, highlight=False)
    if threshold is None and info.threshold is None:
        console.print("[yellow]note:[/] this file stores no validation threshold: 0.5 is a guess, not an operating "
                      "point (re-export it from a run, or pass --threshold)")
    with counter("predicting") as bar:
        task = bar.add_task("", total=len(paths))
        try:
            report = predict_images(runtime, info.spec, paths, out, thr, batch, overlays,
                                    lambda n: bar.update(task, completed=n), resume)
        except InputError as exc:
            bar.stop()
            fail(exc)
    for path, why in report.skipped:
        console.print(f"[yellow]warning:[/] skipped {path}: {why}", highlight=False)
    defects = sum(r["defective"] == "yes" for r in report.rows)
    console.print(f"{len(report.rows)} images scored, {defects} defective at {thr:.4f}"
                  + (f" ({report.resumed} of them from an earlier run)" if report.resumed else "")
                  + (f", {len(report.skipped)} skipped" if report.skipped else "")
                  + (f" -> {report.csv}" if report.csv else "; nothing written"), highlight=False)
    if report.interrupted:
        console.print(f"interrupted: {len(report.rows)} of {len(paths)} images are in {report.csv}; run the same "
                      "command with --resume to score the rest", highlight=False)
        raise typer.Exit(130)
    if report.skipped:
        raise typer.Exit(1)


@app.command()
def bundle(
    config: ConfigOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name in the run, e.g. ours_c4_m20 or baseline_best.")],
    out: Annotated[Path, typer.Option(help="Bundle folder (replaced if it holds an older bundle).")],
    set_: SetOpt = None,
) -> None:
    """A deployable folder: FP32 + INT8 ONNX, model_card.json, predict_onnx.py (onnxruntime + opencv + numpy only)."""
    from ..bundle import make_bundle

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "bundle")
        files = make_bundle(cfg, model, out)
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
    for f in files:
        console.print(f"wrote {f}")


@app.command()
def report(config: ConfigOpt, set_: SetOpt = None) -> None:
    """One self-contained page: the study's answer, every record (sortable, filterable), charts, config -> RUN/report.html."""
    from ..report import make_report

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "report")
        path = make_report(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    console.print(f"wrote {path} (self-contained: open it from disk, share it as one file)")
