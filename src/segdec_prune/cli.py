"""`segdec-prune`: one subcommand per pipeline stage."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, load_config
from .data.ksdd2 import DatasetError
from .data.synthetic import SynthSpec, write_dataset

app = typer.Typer(help="Channel-pruning pipeline for SegDecNet on KolektorSDD2.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data sets: synthesise, download, check.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)  # ModelFileError: a ValueError

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="TOML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. --set train.epochs=3 (repeatable).")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    # Our messages at INFO; libraries' (the ONNX optimiser logs every folded constant) only from WARNING.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    logging.getLogger("segdec_prune").setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(exc: Exception | str) -> None:
    console.print("[bold red]error:[/]", end=" ")
    console.print(str(exc), markup=False, highlight=False)
    raise typer.Exit(2)


def _counter(description: str) -> Progress:
    return Progress(TextColumn(description + " {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (KSDD2 layout).")] = Path("datasets/demo"),
    train: Annotated[int, typer.Option(min=4)] = SynthSpec.train,
    test: Annotated[int, typer.Option(min=4)] = SynthSpec.test,
    positive_fraction: Annotated[float, typer.Option(min=0.01, max=0.9)] = SynthSpec.positive_fraction,
    faint_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of low-contrast defects.")] = SynthSpec.faint_fraction,
    seed: int = SynthSpec.seed,
) -> None:
    """Write a synthetic data set in the exact KSDD2 layout."""

    spec = SynthSpec(train=train, test=test, positive_fraction=positive_fraction, seed=seed, faint_fraction=faint_fraction)
    with _counter("synthesising") as bar:
        task = bar.add_task("", total=train + test)
        counts = write_dataset(out, spec, on_progress=lambda done, total: bar.update(task, completed=done))
    for split, c in counts.items():
        console.print(f"{split}: {c['images']} images, {c['positives']} positive -> {out / split}")


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option(help="Where to put train/ and test/.")] = Path("datasets/KSDD2"),
    url: Annotated[Optional[str], typer.Option(help="Archive URL (default: the official link).")] = None,
) -> None:
    """Fetch the official KSDD2 archive (resumable), unpack it and check the layout."""
    from .data.download import OFFICIAL_URL, download

    cols = (TextColumn("downloading"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    try:
        with Progress(*cols, console=console) as bar:
            task = bar.add_task("", total=None)
            download(out, url or OFFICIAL_URL, lambda done, total: bar.update(task, completed=done, total=total))
    except (OSError, DatasetError) as exc:
        _fail(exc)
    data_check(out)


@data_app.command("check")
def data_check(root: Annotated[Path, typer.Argument(help="Data set folder (KSDD2 layout).")]) -> None:
    """Count images, positives and negatives per split; list problems (exit 1 if any)."""
    from .data.download import OFFICIAL_COUNTS, check

    reports = check(root)
    table = Table("split", "images", "positives", "negatives", "problems", title=str(root))
    for r in reports:
        table.add_row(r.split, str(r.images), str(r.positives), str(r.negatives), str(len(r.problems)))
    console.print(table)
    if all((r.images, r.positives) == OFFICIAL_COUNTS[r.split] for r in reports):
        console.print("matches the official KSDD2 counts")
    problems = [p for r in reports for p in r.problems]
    for p in problems:
        console.print(f"[red]problem:[/] {p}")
    if problems:
        raise typer.Exit(1)


@app.command()
def train(config: ConfigOpt, set_: SetOpt = None, quiet: bool = False) -> None:
    """Train the baseline; writes RUN/models/baseline_best.pth (best by validation AP)."""
    from .data.dataset import preprocessing_for, train_val_datasets
    from .stages import baseline_path, train_baseline

    try:
        cfg = load_config(config, set_)
        pre = preprocessing_for(cfg.data, cfg.train)
        with _counter("loading train split") as bar:
            task = bar.add_task("", total=None)
            train_set, val_set = train_val_datasets(cfg.data, pre, lambda d, t: bar.update(task, completed=d, total=t))
    except USER_ERRORS as exc:
        _fail(exc)
    n_pos = int(train_set.labels.sum())
    seg = sum(s for s, lab in zip(train_set.segmented, train_set.labels) if lab)
    console.print(f"train {len(train_set)} ({n_pos} positive, {seg} with masks), validation {len(val_set)} "
                  f"({int(val_set.labels.sum())} positive); input {cfg.data.input_height}x{cfg.data.input_width}")
    result = train_baseline(cfg, (train_set, val_set), show_progress=not quiet)
    console.print(f"best validation AP {result.best_val_ap:.4f} at epoch {result.best_epoch + 1}; "
                  f"{result.seconds:.0f} s; saved {baseline_path(cfg)}")


@app.command()
def prune(
    config: ConfigOpt,
    method: Annotated[Optional[str], typer.Option("--method", help="naive_l1, naive_fn, ours_c1..c4, random.")] = None,
    ratio: Annotated[Optional[float], typer.Option("--ratio", help="Share of every layer's channels to remove, in (0, 1).")] = None,
    target_macs: Annotated[Optional[float], typer.Option("--target-macs", help="Share of the baseline's MACs to keep, "
                           "in (0, 1); channels allocated globally. Model {method}_m{percent}.")] = None,
    target_latency_ms: Annotated[Optional[float], typer.Option("--target-latency-ms", help="Batch-1 ms on --runtime "
                                 "(from the run's latency table). Model {method}_t{ms}ms.")] = None,
    runtime: Annotated[str, typer.Option(help="Latency target's runtime: onnxruntime or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="Latency target's precision: fp32, int8 (onnxruntime); fp16, int8 (tensorrt).")] = "fp32",
    all_: Annotated[bool, typer.Option("--all", help="The config's sweep: prune.methods x ratios, budget_methods x targets.")] = False,
    finetune_epochs: Annotated[Optional[int], typer.Option(min=0, help="Default: prune.finetune_epochs; 0 = pruned only.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Baseline (default RUN/models/baseline_best.pth).")] = None,
    set_: SetOpt = None,
) -> None:
    """Prune the baseline to a ratio or a budget, fine-tune, save RUN/models/{name}.pth."""
    from .pruning.allocate import Budget
    from .stages import RunState, prune_jobs
    from .training import new_progress

    try:
        cfg = load_config(config, set_)
        jobs = prune_jobs(cfg, all_, method, ratio, target_macs, target_latency_ms, runtime, precision)
        state = RunState(cfg, baseline_file=model)
        state.baseline  # noqa: B018 - fail early, before loading data
        tables = {(t.runtime, t.precision) for _, t in jobs if isinstance(t, Budget) and t.kind == "latency"}
        for rt_prec in tables:
            state.latency_key(*rt_prec)  # an unknown or missing runtime fails here, not after minutes
        with _counter("loading train split") as bar:
            bar.add_task("", total=None)
            state.sets  # noqa: B018
        for rt_prec in tables:
            with _counter(f"latency table {' '.join(rt_prec)} (cached per machine)") as bar:
                task = bar.add_task("", total=None)
                state.latency_table(*rt_prec, lambda _what: bar.advance(task))
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    epochs = cfg.prune.finetune_epochs if finetune_epochs is None else finetune_epochs
    table = Table("model", "widths (volume)", "MACs kept", "val AP pruned", "val AP fine-tuned", "seconds", title="pruned models")
    with new_progress() as bar:
        state.progress = bar
        overall = bar.add_task("models", total=len(jobs), info="")
        for m, t in jobs:
            try:
                out = state.prune(m, t, epochs, on_plan=lambda plan: bar.console.print(_plan_line(plan)))
            except (*USER_ERRORS, ValueError) as exc:
                bar.stop()
                _fail(exc)
            bar.update(overall, advance=1, info=f"{out.name}: val AP {out.val_ap_pruned:.3f} -> {out.val_ap:.3f}")
            table.add_row(out.name, str(out.widths["volume"]), f"{out.plan['mac_fraction']:.1%}", f"{out.val_ap_pruned:.4f}",
                          f"{out.val_ap:.4f}", f"{out.seconds:.0f}")
    console.print(table)


def _plan_line(plan: dict) -> str:
    """What a plan promises, said before fine-tuning starts."""
    ms = plan["predicted_latency_ms"]
    where = plan["latency_table"] or {}
    latency = f", predicted {ms:.2f} ms on {where['runtime']} {where['precision']}" if ms is not None else ""
    if plan["measured_plan_ms"] is not None:
        latency += f", measured {plan['measured_plan_ms']:.2f} ms (random weights, {len(plan['plan_checks'])} checks)"
    return f"plan: widths {plan['widths']['volume']}, {plan['mac_fraction']:.1%} of the baseline's MACs{latency}"


@app.command("latency-table")
def latency_table(
    config: ConfigOpt,
    runtime: Annotated[str, typer.Option(help="onnxruntime or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="onnxruntime: fp32, int8; tensorrt: fp16, int8.")] = "fp32",
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads (default deploy.threads).")] = None,
    set_: SetOpt = None,
) -> None:
    """Time each prunable block at candidate widths on RUNTIME; cached in RUN/latency/ per machine."""
    from .stages import RunState

    try:
        cfg = load_config(config, [*(set_ or []), *([f"deploy.threads={threads}"] if threads else [])])
        state = RunState(cfg)
        state.latency_key(runtime, precision)  # a bad runtime or precision fails before any work
        with _counter(f"latency table {runtime} {precision}") as bar:
            task = bar.add_task("", total=None)
            tab, reused = state.latency_table(runtime, precision, lambda what: bar.update(task, advance=1, description=what))
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:
        _fail(exc)
    rows = Table("block", "cin x cout (baseline)", "ms", "ms at the narrowest grid widths", title=f"{runtime} {precision}, "
                 f"{cfg.deploy.threads} threads, {tab.key['device']}", box=box.SIMPLE_HEAD)
    for b in tab.blocks:
        rows.add_row(b.name, f"{b.cin[-1]} x {b.cout[-1]}", f"{b.ms[-1][-1]:.3f}", f"{b.ms[0][0]:.3f}")
    console.print(rows)
    console.print(f"whole baseline measured {tab.baseline_ms:.2f} ms = blocks + rest {tab.rest_ms:.2f} ms; "
                  f"channel step {tab.step} (widths between steps cost the next step's time)")
    if cfg.prune.align % tab.step:
        console.print(f"[yellow]note:[/] prune.align = {cfg.prune.align} is not a multiple of this runtime's channel "
                      f"step {tab.step}: budget models will pay for padding")
    console.print(f"{'reused' if reused else f'measured in {tab.seconds:.0f} s,'} {tab.path}")


@app.command()
def profile(config: ConfigOpt, set_: SetOpt = None) -> None:
    """MACs, parameters and file size of every model in the run -> profiling_results.json."""
    from .profiling import profile_run

    try:
        cfg = load_config(config, set_)
        result = profile_run(cfg.run_dir)
    except USER_ERRORS as exc:
        _fail(exc)
    table = Table("model", "params (M)", "GMACs", "GMACs @640x232", "MAC reduction", "file (MB)", title="profile")
    for name, r in result["models"].items():
        table.add_row(name, f"{r['parameters'] / 1e6:.3f}", f"{r['macs'] / 1e9:.3f}", f"{r['macs_at_640x232'] / 1e9:.2f}",
                      f"{r['mac_reduction']:.1%}", f"{r['file_bytes'] / 1e6:.1f}")
    console.print(table)
    console.print(f"wrote {cfg.run_dir / 'profiling_results.json'}")


def _evaluate_run(config: Path, set_: list[str] | None) -> None:
    from .results import RESULTS_FILE, evaluate_run
    from .tables import records_table
    from .training import new_progress

    try:
        cfg = load_config(config, set_)
        with new_progress() as bar:
            task = bar.add_task("evaluating", total=None, info="")
            result = evaluate_run(cfg, lambda step: bar.update(task, advance=1, info=step))
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    console.print(records_table(result["records"], f"test set, {cfg.deploy.threads} threads; F1, FP/FN at each model's "
                                "validation threshold; F1 test-opt. at the test split's own best threshold (optimistic)"))
    for s in result["skipped"]:
        console.print(f"skipped {s.get('model', '')} {s['runtime']}: {s['reason']}", markup=False, highlight=False)
    console.print(f"wrote {cfg.run_dir / RESULTS_FILE}")


@app.command()
def evaluate(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Checkpoint (.pth), ONNX file (.onnx) or TensorRT engine.")] = None,
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
        _fail("give either --model FILE or --config CFG")
    if config is not None:
        return _evaluate_run(config, set_)
    from .artifacts import write_json
    from .data.dataset import KSDD2Dataset, load_split
    from .deploy import open_runtime
    from .evaluation import evaluate_predictions, predict

    try:
        if not model.is_file():
            raise FileNotFoundError(f"{'checkpoint' if model.suffix == '.pth' else 'model'} not found: {model}")
        runtime, info = open_runtime(model, threads)
        spec, root = info.spec, data or Path(info.data_root)
        if not info.data_root and data is None:
            raise DatasetError("this model does not record its data set; pass --data")
        with _counter(f"loading {split}") as bar:
            task = bar.add_task("", total=None)
            dataset = KSDD2Dataset(load_split(root, split, spec.preprocessing(), lambda d, t: bar.update(task, completed=d, total=t)))
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:
        _fail(exc)
    t0 = time.perf_counter()
    preds = predict(runtime, dataset, batch_size)
    try:
        metrics = evaluate_predictions(preds, dataset, info.decision_threshold)
    except ValueError as exc:
        _fail(exc)
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
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files (png, jpg, bmp, tif) and/or folders of them.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pth), ONNX file (FP32 or INT8) or TensorRT engine.")],
    out: Annotated[Path, typer.Option(help="Folder for predictions.csv (and overlays/).")] = Path("predictions"),
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Decision threshold (default: the "
                         "model's validation best-F1 threshold).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per runtime call.")] = 8,
    threads: Annotated[int, typer.Option(min=0, help="Intra-op threads (0 = runtime default).")] = 0,
    overlays: Annotated[bool, typer.Option(help="Also write one PNG per image: the defect map over it, native size.")] = False,
) -> None:
    """Score new images: OUT/predictions.csv (path, score, defective, threshold, ms); exit 1 if any image was unreadable."""
    from .deploy import open_runtime
    from .predict import collect_images, predict_images

    try:
        paths = collect_images(inputs)
        runtime, info = open_runtime(model, threads)
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:
        _fail(exc)
    thr = info.decision_threshold if threshold is None else threshold
    source = "given with --threshold" if threshold is not None else info.threshold_source
    console.print(f"{model.name} ({runtime.name}), input {info.spec.height}x{info.spec.width}; threshold {thr:.4f} ({source})",
                  markup=False, highlight=False)
    if threshold is None and info.threshold is None:
        console.print("[yellow]note:[/] this file stores no validation threshold: 0.5 is a guess, not an operating "
                      "point (re-export it from a run, or pass --threshold)")
    with _counter("predicting") as bar:
        task = bar.add_task("", total=len(paths))
        report = predict_images(runtime, info.spec, paths, out, thr, batch, overlays, lambda n: bar.update(task, completed=n))
    for path, why in report.skipped:
        console.print(f"[yellow]warning:[/] skipped {path}: {why}", highlight=False)
    defects = sum(r["defective"] == "yes" for r in report.rows)
    console.print(f"{len(report.rows)} images scored, {defects} defective at {thr:.4f}"
                  + (f", {len(report.skipped)} skipped" if report.skipped else "")
                  + (f" -> {report.csv}" if report.csv else "; nothing written"), highlight=False)
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
    from .bundle import make_bundle

    try:
        files = make_bundle(load_config(config, set_), model, out)
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    for f in files:
        console.print(f"wrote {f}")


@app.command()
def export(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Export every model of the run.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="One checkpoint (.pth).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="ONNX file for --model.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Data for the numerical check (default: the model's).")] = None,
    set_: SetOpt = None,
) -> None:
    """Export to ONNX and check it against PyTorch on real preprocessed images; the model's
    validation threshold goes into the ONNX metadata."""
    from .deploy import check_images, export_checkpoint, model_paths
    from .export import ATOL, RTOL, ExportCheckError
    from .stages import RunState, export_model

    try:
        if (config is None) == (model is None):
            raise ConfigError("give either --config (every model of the run) or --model with --output")
        if config is not None:
            state = RunState(load_config(config, set_))
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
        _fail(exc)
    table = Table("model", "ONNX", "max |diff| dec / seg", "threshold", title=f"ONNX export (atol {ATOL}, rtol {RTOL})")
    with _counter("exporting") as bar:
        task = bar.add_task("", total=len(jobs))
        for job in jobs:
            try:
                name, rep, thr = job()
            except (*USER_ERRORS, ExportCheckError, ValueError) as exc:
                bar.stop()
                _fail(exc)
            where = f"{thr.value:.3f} ({thr.source})" if thr else "none stored: 0.5 will be used"
            table.add_row(name, str(rep.path), f"{rep.max_abs_diff_decision:.1e} / {rep.max_abs_diff_segmentation:.1e}", where)
            bar.advance(task)
    console.print(table)


@app.command()
def calibrate(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Store deploy.calibration_images preprocessed training images for INT8 calibration."""
    from .calibration import build_calibration_set, load_calibration

    try:
        cfg = load_config(config, set_)
        path = build_calibration_set(cfg)
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(f"calibration set: {len(load_calibration(path))} images -> {path}")


@app.command()
def build(
    config: ConfigOpt,
    runtime: Annotated[str, typer.Option(help="onnxruntime or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="onnxruntime: fp32, int8; tensorrt: fp32, fp16, int8.")] = "fp32",
    set_: SetOpt = None,
) -> None:
    """Build a runtime artifact for every exported model of the run (ONNX Runtime INT8: the
    calibration and FP32 layers chosen on the validation split)."""
    from .calibration import calibration_path, load_calibration
    from .deploy import check_runtime, model_paths
    from .runtimes.tensorrt_runtime import unavailable_reason
    from .stages import RunState, build_model, int8_line

    try:
        state = RunState(load_config(config, set_))
        check_runtime(runtime, precision)
        calib = load_calibration(calibration_path(state.cfg)) if precision == "int8" else None
        names = [p.stem for p in model_paths(state.cfg.run_dir)]
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    if runtime == "tensorrt" and (reason := unavailable_reason()):
        console.print(f"tensorrt skipped: {reason}", markup=False, highlight=False)
        raise typer.Exit(3)
    with _counter(f"building {runtime} {precision}") as bar:
        task = bar.add_task("", total=len(names))
        for name in names:
            try:
                path, choice = build_model(state, name, runtime, precision, calib,
                                           lambda what, name=name: bar.update(task, description=f"{name}: {what}"))
            except (*USER_ERRORS, ValueError, RuntimeError) as exc:  # TensorRTUnavailable, a damaged ONNX file ...
                bar.stop()
                _fail(exc)
            bar.console.print(f"built {path}" + (f": {int8_line(choice)}" if choice else ""), markup=False, highlight=False)
            bar.advance(task)


@app.command()
def charts(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Draw the benchmark, Pareto and qualitative charts from real_evaluation_results.json."""
    from .charts import make_charts

    try:
        paths = make_charts(load_config(config, set_))
    except USER_ERRORS as exc:
        _fail(exc)
    for p in paths:
        console.print(f"wrote {p}")


@app.command()
def run(
    config: ConfigOpt,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Rerun a stage (train, prune, profile, export, "
                     "latency-table, calibrate, build-onnxruntime-int8, build-tensorrt-fp16, build-tensorrt-int8, evaluate, charts) "
                     "or one step (e.g. prune:ours_c3_r40). Repeatable.")] = None,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline, resumable: steps whose inputs and settings are unchanged are skipped."""
    from .pipeline import Manifest, execute, machine
    from .results import RESULTS_FILE, library_versions
    from .stages import RunState, plan
    from .tables import ship_table
    from .training import new_progress

    try:
        cfg = load_config(config, set_)
        if not Path(cfg.data.root).is_dir():
            raise DatasetError(f"data set folder {cfg.data.root} not found (config key data.root)")
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(f"run {cfg.run_dir} from {cfg.source}: data {cfg.data.root}, "
                  f"{len(cfg.prune.methods)} methods x {len(cfg.prune.ratios)} ratios")
    manifest = Manifest.load(cfg.run_dir)
    outcomes = []
    with new_progress() as bar:
        state = RunState(cfg, progress=bar)
        steps = plan(cfg, state)
        known = {s.name for s in steps} | {s.stage for s in steps}
        unknown = [f for f in force or [] if f not in known]
        if unknown:
            bar.stop()
            _fail(f"--force {unknown[0]}: no such stage or step")
        task = bar.add_task("pipeline", total=len(steps), info="")

        stage_of = {s.name: s.stage or s.name for s in steps}
        said: set[tuple[str, str]] = set()

        def event(o) -> None:
            bar.update(task, advance=1, info=f"{o.name}: {o.status}")
            if o.status == "unavailable":  # one line per stage, not one per model
                if (stage_of[o.name], o.detail) not in said:
                    said.add((stage_of[o.name], o.detail))
                    bar.console.print(f"{stage_of[o.name]}: unavailable, every model: {o.detail}", markup=False,
                                      highlight=False)
            elif o.status != "skipped":
                bar.console.print(f"{o.name}: {o.status} in {o.seconds:.1f} s {o.detail}", markup=False, highlight=False)

        try:
            outcomes = execute(steps, manifest, set(force or []), library_versions(), machine(), event)
        except (*USER_ERRORS, ValueError, RuntimeError) as exc:
            bar.stop()
            _fail(exc)
    stages: dict[str, list] = {}
    for o in outcomes:
        stages.setdefault(stage_of[o.name], []).append(o)
    table = Table("stage", "steps", "ran", "up to date", "unavailable", "seconds", title="pipeline")
    for stage, os_ in stages.items():
        count = {k: sum(o.status == k for o in os_) for k in ("done", "skipped", "unavailable")}
        table.add_row(stage, str(len(os_)), str(count["done"]), str(count["skipped"]), str(count["unavailable"]),
                      f"{sum(o.seconds for o in os_):.1f}")
    console.print(table)
    reasons = {o.detail for o in outcomes if o.status == "unavailable"}
    for reason in reasons:
        console.print(f"unavailable here: {reason}", markup=False, highlight=False)
    results = cfg.run_dir / RESULTS_FILE
    if results.is_file() and (table := ship_table(json.loads(results.read_text())["records"])):
        console.print(table)
    console.print(f"results: {results}\ncharts:  {cfg.run_dir / 'charts'}\n"
                  f"manifest: {cfg.run_dir / 'manifest.json'}")


if __name__ == "__main__":  # pragma: no cover
    app()
