"""Commands that make models: train the baseline, prune it (ratio or budget), time blocks, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..config import ConfigError, load_config
from .common import USER_ERRORS, ConfigOpt, SetOpt, app, console, counter, fail, lock_run


@app.command()
def train(config: ConfigOpt, set_: SetOpt = None, quiet: bool = False) -> None:
    """Train the baseline; writes RUN/models/baseline_best.pth (best by validation AP)."""
    from ..data.dataset import preprocessing_for, train_val_datasets
    from ..distributed import ranks
    from ..stages import baseline_path, record_command, train_baseline, train_line

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "train")
        pre = preprocessing_for(cfg.data, cfg.train)
        with counter("loading train split") as bar:
            task = bar.add_task("", total=None)
            train_set, val_set = train_val_datasets(cfg.data, pre, lambda d, t: bar.update(task, completed=d, total=t))
    except USER_ERRORS as exc:
        fail(exc)
    n_pos = int(train_set.labels.sum())
    seg = sum(s for s, lab in zip(train_set.segmented, train_set.labels) if lab)
    console.print(f"train {len(train_set)} ({n_pos} positive, {seg} with masks), validation {len(val_set)} "
                  f"({int(val_set.labels.sum())} positive); input {cfg.data.input_height}x{cfg.data.input_width}")
    result = train_baseline(cfg, (train_set, val_set), show_progress=not quiet)
    if ranks().main:
        record_command(cfg, "train", result.seconds, train_line(result))  # `run` skips it while nothing changes
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
    runtime: Annotated[str, typer.Option(help="Latency target's runtime: onnxruntime, openvino or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="Latency target's precision: fp32, int8 (onnxruntime, openvino); fp16, int8 (tensorrt).")] = "fp32",
    all_: Annotated[bool, typer.Option("--all", help="The config's sweep: prune.methods x ratios, budget_methods x targets.")] = False,
    finetune_epochs: Annotated[Optional[int], typer.Option(min=0, help="Default: prune.finetune_epochs; 0 = pruned only.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Baseline (default RUN/models/baseline_best.pth).")] = None,
    set_: SetOpt = None,
) -> None:
    """Prune the baseline to a ratio or a budget, fine-tune, save RUN/models/{name}.pth."""
    from ..distributed import ranks
    from ..pruning.allocate import Budget
    from ..stages import RunState, prune_jobs, prune_line, record_command
    from ..training import new_progress

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "prune")
        jobs = prune_jobs(cfg, all_, method, ratio, target_macs, target_latency_ms, runtime, precision)
        state = RunState(cfg, baseline_file=model)
        state.baseline  # noqa: B018 - fail early, before loading data
        tables = {(t.runtime, t.precision) for _, t in jobs if isinstance(t, Budget) and t.kind == "latency"}
        if tables and ranks().world > 1:
            raise ConfigError("latency budgets time their plans, which torchrun's processes would share: prune them "
                              "without torchrun")
        for rt_prec in tables:
            state.latency_key(*rt_prec)  # an unknown or missing runtime fails here, not after minutes
        with counter("loading train split") as bar:
            bar.add_task("", total=None)
            state.sets  # noqa: B018
        for rt_prec in tables:
            with counter(f"latency table {' '.join(rt_prec)} (cached per machine)") as bar:
                task = bar.add_task("", total=None)
                state.latency_table(*rt_prec, lambda _what: bar.advance(task))
    except (*USER_ERRORS, ValueError) as exc:
        fail(exc)
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
                fail(exc)
            bar.update(overall, advance=1, info=f"{out.name}: val AP {out.val_ap_pruned:.3f} -> {out.val_ap:.3f}")
            if model is None and epochs == cfg.prune.finetune_epochs and ranks().main:  # what `run` would make
                record_command(cfg, f"prune:{out.name}", out.seconds, prune_line(out))
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
    runtime: Annotated[str, typer.Option(help="onnxruntime, openvino or tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="onnxruntime, openvino: fp32, int8; tensorrt: fp16, int8.")] = "fp32",
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads (default deploy.threads).")] = None,
    set_: SetOpt = None,
) -> None:
    """Time each prunable block at candidate widths on RUNTIME; cached in RUN/latency/ per machine."""
    from ..stages import RunState

    try:
        cfg = load_config(config, [*(set_ or []), *([f"deploy.threads={threads}"] if threads else [])])
        lock_run(cfg.run_dir, "latency-table")
        state = RunState(cfg)
        state.latency_key(runtime, precision)  # a bad runtime or precision fails before any work
        with counter(f"latency table {runtime} {precision}") as bar:
            task = bar.add_task("", total=None)
            tab, reused = state.latency_table(runtime, precision, lambda what: bar.update(task, advance=1, description=what))
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:
        fail(exc)
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
    from ..profiling import profile_run

    try:
        cfg = load_config(config, set_)
        lock_run(cfg.run_dir, "profile")
        result = profile_run(cfg.run_dir)
    except USER_ERRORS as exc:
        fail(exc)
    table = Table("model", "params (M)", "GMACs", "GMACs @640x232", "MAC reduction", "file (MB)", title="profile")
    for name, r in result["models"].items():
        table.add_row(name, f"{r['parameters'] / 1e6:.3f}", f"{r['macs'] / 1e9:.3f}", f"{r['macs_at_640x232'] / 1e9:.2f}",
                      f"{r['mac_reduction']:.1%}", f"{r['file_bytes'] / 1e6:.1f}")
    console.print(table)
    console.print(f"wrote {cfg.run_dir / 'profiling_results.json'}")
