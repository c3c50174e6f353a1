"""Commands that turn models into runtimes and numbers: evaluate, export, calibrate, build, charts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..config import ConfigError, load_config
from ..errors import DatasetError
from .common import USER_ERRORS, ConfigOpt, SetOpt, app, console, counter, fail, lock_run


def _evaluate_run(config: Path, set_: list[str] | None) -> None:
    from ..results import RESULTS_FILE, evaluate_run, evaluate_time_line
    from ..tables import records_table, show
    from ..training import new_progress

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "evaluate")
        start = time.perf_counter()
        with new_progress() as bar:
            task = bar.add_task("evaluating", total=None, info="")
            result = evaluate_run(cfg, lambda step: bar.update(task, advance=1, info=step))
        seconds = time.perf_counter() - start
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
    show(console, records_table(result["records"], f"test set, {cfg.deploy.threads} threads; F1, FP/FN at each model's "
                                "validation threshold; F1 test-opt. at the test split's own best threshold (optimistic)"))
    for s in result["skipped"]:
        console.print(f"skipped {s.get('model', '')} {s['runtime']}: {s['reason']}", markup=False, highlight=False)
    console.print(f"{len(result['records'])} records in {seconds:.0f} s: {evaluate_time_line(result['records'], seconds)}",
                  markup=False, highlight=False)
    console.print(f"wrote {cfg.run_dir / RESULTS_FILE}")


@app.command()
def evaluate(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.pth), ONNX file (.onnx), OpenVINO IR (.xml) or TensorRT engine.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Evaluate every model x runtime of the run.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Data set root (default: the one it was trained on).")] = None,
    split: str = "test",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the metrics as JSON.")] = None,
    batch_size: int = 8,
    threads: Annotated[int, typer.Option(help="Intra-op threads (0 = runtime default).")] = 0,
    set_: SetOpt = None,
) -> None:
    """Evaluate one model in its runtime (--model), or every model x runtime of a run (--config)."""
    if (model is None) == (config is None):
        fail("give either --model FILE or --config CFG")
    if config is not None:
        return _evaluate_run(config, set_)
    from ..artifacts import write_json
    from ..data.dataset import KSDD2Dataset, load_split
    from ..deploy import open_runtime
    from ..evaluation import evaluate_predictions, predict

    try:
        if not model.is_file():
            raise FileNotFoundError(f"{'checkpoint' if model.suffix == '.pth' else 'model'} not found: {model}")
        runtime, info = open_runtime(model, threads)
        spec, root = info.spec, data or Path(info.data_root)
        if not info.data_root and data is None:
            raise DatasetError("this model does not record its data set; pass --data")
        with counter(f"loading {split}") as bar:
            task = bar.add_task("", total=None)
            dataset = KSDD2Dataset(load_split(root, split, spec.preprocessing(), lambda d, t: bar.update(task, completed=d, total=t)))
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:
        fail(exc)
    t0 = time.perf_counter()
    preds = predict(runtime, dataset, batch_size)
    try:
        metrics = evaluate_predictions(preds, dataset, info.decision_threshold)
    except ValueError as exc:
        fail(exc)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["threshold_source"] = info.threshold_source
    table = Table("metric", "value", title=f"{model.name} ({runtime.name}) on {root}/{split}", box=box.SIMPLE_HEAD)
    for key in ("ap", "ap_paper", "auroc", "threshold", "threshold_source", "precision", "recall", "f1", "fnr",
                "fp_at_threshold", "fn_at_threshold", "best_threshold", "best_f1", "fp_at_best", "fn_at_best",
                "dice", "iou", "images", "positives"):
        v = metrics[key]
        label = {"threshold": "threshold (the model's)", "best_threshold": "best_threshold (test-optimal)"}.get(key, key)
        table.add_row(label, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"P/R/F1/FP/FN at the model's threshold {metrics['threshold']:.3f} ({info.threshold_source}); "
                  "best_* at the test-optimal threshold, which is optimistic")
    if output:
        write_json({"model": str(model), "runtime": runtime.name, "data": str(root), "split": split, **metrics}, output)
        console.print(f"wrote {output}")


@app.command()
def export(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Export every model of the run.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="One checkpoint (.pth).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="ONNX file for --model.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Data for the numerical check (default: the model's).")] = None,
    set_: SetOpt = None,
) -> None:
    """Export to ONNX, checked against PyTorch on real images; input spec and threshold go into its metadata."""
    from ..checkpoint import load_checkpoint
    from ..deploy import check_images, export_checkpoint, model_paths
    from ..export import ATOL, RTOL, ExportCheckError
    from ..stages import RunState, export_model

    try:
        if (config is None) == (model is None):
            raise ConfigError("give either --config (every model of the run) or --model with --output")
        if config is not None:
            state = RunState(load_config(config, set_))
            lock_run(state.cfg.run_dir, "export")
            names = [p.stem for p in model_paths(state.cfg.run_dir)]
            if not names:
                raise FileNotFoundError(f"no checkpoints in {state.cfg.run_dir / 'models'}")
            jobs = [lambda n=n: (n, *export_model(state, n)) for n in names]
        else:
            if output is None:
                raise ConfigError("--model needs --output FILE.onnx")
            ckpt = load_checkpoint(model)
            images = check_images(data or Path(ckpt.data_root), ckpt.input_spec)
            jobs = [lambda: (model.stem, export_checkpoint(ckpt, model.stem, images, output), ckpt.threshold)]
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
    table = Table("model", "ONNX", "max |diff| dec / seg", "threshold", title=f"ONNX export (atol {ATOL}, rtol {RTOL})")
    with counter("exporting") as bar:
        task = bar.add_task("", total=len(jobs))
        for job in jobs:
            try:
                name, rep, thr = job()
            except (*USER_ERRORS, ExportCheckError, ValueError) as exc:
                bar.stop()
                fail(exc)
            where = f"{thr.value:.3f} ({thr.source})" if thr else "none stored: 0.5 will be used"
            table.add_row(name, str(rep.path), f"{rep.max_abs_diff_decision:.1e} / {rep.max_abs_diff_segmentation:.1e}", where)
            bar.advance(task)
    console.print(table)


@app.command()
def calibrate(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Store deploy.calibration_images preprocessed training images for INT8 calibration."""
    from ..calibration import build_calibration_set, load_calibration

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "calibrate")
        path = build_calibration_set(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    console.print(f"calibration set: {len(load_calibration(path))} images -> {path}")


@app.command()
def build(
    config: ConfigOpt,
    runtime: Annotated[str, typer.Option(help="onnxruntime, openvino or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="onnxruntime, openvino: fp32, int8; tensorrt: fp32, fp16, int8.")] = "fp32",
    set_: SetOpt = None,
) -> None:
    """Build a runtime artifact for every exported model (ONNX Runtime and OpenVINO INT8: chosen on the validation split)."""
    from ..calibration import calibration_path, load_calibration
    from ..deploy import check_runtime, model_paths
    from ..runtimes.base import unavailable_reason
    from ..stages import RunState, build_model, int8_line

    try:
        state = RunState(load_config(config, set_))
        lock_run(state.cfg.run_dir, "build")
        check_runtime(runtime, precision)
        calib = load_calibration(calibration_path(state.cfg)) if precision == "int8" else None
        names = [p.stem for p in model_paths(state.cfg.run_dir)]
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
    if reason := unavailable_reason(runtime):
        console.print(f"{runtime} skipped: {reason}", markup=False, highlight=False)
        raise typer.Exit(3)
    with counter(f"building {runtime} {precision}") as bar:
        task = bar.add_task("", total=len(names))
        for name in names:
            try:
                path, choice = build_model(state, name, runtime, precision, calib,
                                           lambda what, name=name: bar.update(task, description=f"{name}: {what}"))
            except (*USER_ERRORS, ValueError, RuntimeError) as exc:  # a runtime unavailable, a damaged ONNX file ...
                bar.stop()
                fail(exc)
            bar.console.print(f"built {path}" + (f": {int8_line(choice)}" if choice else ""), markup=False, highlight=False)
            bar.advance(task)


@app.command()
def charts(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Draw the benchmark, Pareto and qualitative charts from real_evaluation_results.json."""
    from ..charts import make_charts

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "charts")
        paths = make_charts(cfg)
    except USER_ERRORS as exc:
        fail(exc)
    for p in paths:
        console.print(f"wrote {p}")
