"""`segdec-prune run`: the whole pipeline, resumable, ending with what to ship."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import load_config
from ..errors import DatasetError
from .common import USER_ERRORS, ConfigOpt, SetOpt, app, console, fail, lock_run


class Executor(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
def run(
    config: ConfigOpt,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Rerun a stage (train, prune, profile, export, "
                     "latency-table, calibrate, build-onnxruntime-int8, build-tensorrt-fp16, build-tensorrt-int8, evaluate, charts, "
                     "report) "
                     "or one step (e.g. prune:ours_c3_r40). Repeatable.")] = None,
    show_plan: Annotated[bool, typer.Option("--plan", help="Only show the steps, their dependencies, which are up to "
                         "date, and the estimated wall time on --workers parallel workers; run nothing.")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="local executor: independent steps at once in this "
                       "many worker processes, each with cpu_count/N threads (1: one step after another in this "
                       "process; default: run.workers in the config); with --plan: the workers to estimate for.")] = None,
    executor: Annotated[Executor, typer.Option(help="local: steps on this machine (see --workers); ray: "
                        "independent steps as Ray tasks (needs the cluster extra).")] = Executor.local,
    address: Annotated[Optional[str], typer.Option(help="With --executor ray: the cluster to join (e.g. auto, "
                       "HEAD:6379); default: a running cluster, else a new one on this machine.")] = None,
    task_cpus: Annotated[int, typer.Option(min=1, help="With --executor ray: CPUs per task (latency steps take "
                         "their whole node).")] = 1,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline, resumable: steps whose inputs and settings are unchanged are skipped."""
    from ..cluster import ClusterError

    try:
        cfg = load_config(config, set_)
        if not Path(cfg.data.root).is_dir():
            raise DatasetError(f"data set folder {cfg.data.root} not found (config key data.root)")
        if executor is Executor.local and address is not None:
            raise ClusterError("--address needs --executor ray")
        if executor is Executor.ray and workers is not None and workers > 1 and not show_plan:
            raise ClusterError("--workers is for the local executor; Ray sizes its tasks with --task-cpus")
    except (*USER_ERRORS, ClusterError) as exc:
        fail(exc)
    forced, workers = set(force or []), workers or cfg.run.workers
    if not show_plan:  # before the heavy imports below: a second writer is refused at once
        lock_run(cfg.run_dir, "run")  # held to the end; worker processes and Ray tasks write under it
    from ..pipeline import Manifest, execute, machine
    from ..results import RESULTS_FILE, library_versions
    from ..stages import RunState, plan
    from ..tables import ship_table, show
    from ..training import new_progress

    if show_plan:
        return _show_plan(plan(cfg, RunState(cfg)), Manifest.load(cfg.run_dir), forced, workers)
    manifest = Manifest.load(cfg.run_dir)  # read under the lock: no other writer changes it now
    where = f"{executor.value} executor" + (f", {workers} workers" if executor is Executor.local and workers > 1 else "")
    console.print(f"run {cfg.run_dir} from {cfg.source}: data {cfg.data.root}, "
                  f"{len(cfg.prune.methods)} methods x {len(cfg.prune.ratios)} ratios, {where}")
    outcomes = []
    with new_progress() as bar:
        state = RunState(cfg, progress=bar)
        steps = plan(cfg, state)
        known = {s.name for s in steps} | {s.stage for s in steps}
        unknown = [f for f in force or [] if f not in known]
        if unknown:
            bar.stop()
            fail(f"--force {unknown[0]}: no such stage or step")
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
            elif o.status == "blocked":
                bar.console.print(f"{o.name}: blocked, {o.detail}", markup=False, highlight=False)
            elif o.status != "skipped":
                bar.console.print(f"{o.name}: {o.status} in {o.seconds:.1f} s {o.detail}", markup=False, highlight=False)

        start = time.perf_counter()
        try:
            if executor is Executor.ray:
                from ..cluster import execute_ray

                outcomes = execute_ray(cfg, steps, manifest, forced, event, address, task_cpus)
            elif workers > 1:
                from ..driver import execute_local

                outcomes = execute_local(cfg, steps, manifest, forced, event, workers)
            else:
                outcomes = execute(steps, manifest, forced, library_versions(), machine(), event)
        except (*USER_ERRORS, ValueError, RuntimeError) as exc:
            bar.stop()
            fail(exc)
    stages: dict[str, list] = {}
    for o in outcomes:
        stages.setdefault(stage_of[o.name], []).append(o)
    kinds = ["done", "skipped", "unavailable"] + [k for k in ("failed", "blocked") if any(o.status == k for o in outcomes)]
    table = Table("stage", "steps", "ran", "up to date", *kinds[2:], "seconds", title="pipeline")
    for stage, os_ in stages.items():
        table.add_row(stage, str(len(os_)), *(str(sum(o.status == k for o in os_)) for k in kinds),
                      f"{sum(o.seconds for o in os_):.1f}")
    console.print(table)
    console.print(f"wall time {_hms(time.perf_counter() - start)} for {_hms(sum(o.seconds for o in outcomes))} of steps "
                  f"({where})", highlight=False)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        for o in failed:
            console.print(f"failed: {o.name}: {o.detail}", markup=False, highlight=False)
        blocked = sum(o.status == "blocked" for o in outcomes)
        fail(f"{len(failed)} step(s) failed, {blocked} not run because they need them; fix and run again "
             "(finished steps are kept)", code=1)
    reasons = {o.detail for o in outcomes if o.status == "unavailable"}
    for reason in reasons:
        console.print(f"unavailable here: {reason}", markup=False, highlight=False)
    results = cfg.run_dir / RESULTS_FILE
    if results.is_file() and (table := ship_table(json.loads(results.read_text())["records"])):
        show(console, table)
    console.print(f"results: {results}\ncharts:  {cfg.run_dir / 'charts'}\n"
                  f"manifest: {cfg.run_dir / 'manifest.json'}\nreport:  {cfg.run_dir / 'report.html'}")


def _show_plan(steps, manifest, force: set[str], workers: int) -> None:
    """`run --plan`: what would run, what waits for what, and what N workers would take."""
    from ..schedule import estimate, plan_view
    from ..tables import plan_table

    rows = plan_view(steps, manifest, force)
    console.print(plan_table(rows))
    for n in sorted({1, workers}):
        e = estimate(rows, n)
        console.print(f"{n} worker{'s' * (n > 1)}: about {_hms(e['wall_s'])} wall ({_hms(e['work_s'])} of work; "
                      f"critical path {_hms(e['critical_path_s'])})")
    unknown = [r.name for r in rows if r.seconds is None]
    if unknown:
        console.print(f"not in the estimate: {len(unknown)} step(s) never run in this manifest (e.g. {unknown[0]})",
                      highlight=False)
    console.print("estimates from the step times in manifest.json (this machine); list scheduling, longest path first")


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"
