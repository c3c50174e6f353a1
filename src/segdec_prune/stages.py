"""What each pipeline stage does, as functions the CLI commands and `run` share."""

from __future__ import annotations

import dataclasses
import time
from functools import cached_property
from pathlib import Path

import torch
from rich.progress import Progress

from .checkpoint import Checkpoint, InputSpec, Threshold, load_checkpoint
from .config import Config, ConfigError
from .data.dataset import KSDD2Dataset, preprocessing_for, train_val_datasets
from .model import SegDecNet, Widths, count_parameters
from .pipeline import Step, StageUnavailable, config_sections, fingerprint
from .pruning.memo import SourceMemo
from .pruning.methods import Method, get_method
from .pruning.plan import Target
from .pruning.workflow import PruneOutcome
from .runtimes.base import CPU_RUNTIMES, INPUTS_ONLY, unavailable_reason
from .training import TrainResult, train


EXPORT_METADATA = 2  # 2: the decision threshold joined the ONNX metadata (older exports redo)
# What `run` builds from each verified ONNX file, in this order (OpenVINO INT8 after ONNX Runtime's:
# that file is one of its candidates). Builds a machine cannot do are recorded as unavailable.
BUILDS = (("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"), ("tensorrt", "fp16"), ("tensorrt", "int8"))
REPORT_VERSION = 2  # raise when the page changes, so `run` rewrites old reports


def baseline_path(cfg: Config) -> Path:
    return cfg.run_dir / "models" / "baseline_best.pth"


def train_baseline(cfg: Config, sets: tuple[KSDD2Dataset, KSDD2Dataset], progress: Progress | None = None,
                   show_progress: bool = True) -> TrainResult:
    from .training import seed_everything

    train_set, val_set = sets
    seed_everything(cfg.train.seed)  # the initial weights too: the same config trains the same baseline
    model = SegDecNet(in_channels=cfg.data.channels)
    spec = InputSpec(channels=cfg.data.channels, height=cfg.data.input_height, width=cfg.data.input_width,
                     dilate=cfg.data.dilate)
    meta = {"name": "baseline_best", "method": "baseline", "ratio": 0.0, "config": cfg.to_dict(),
            "parameters": count_parameters(model)}
    return train(model, train_set, val_set, cfg.train, baseline_path(cfg), spec, meta,
                 show_progress=show_progress, progress=progress, description="baseline")


class RunState:
    """Things several steps need, loaded once and only when a step that needs them runs."""

    def __init__(self, cfg: Config, progress: Progress | None = None, baseline_file: Path | None = None,
                 data_from: "RunState | None" = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.baseline_file = baseline_file or baseline_path(cfg)
        self.data_from = data_from  # another state of the same config whose splits, baseline and memo this one shares
        self._sparse: SegDecNet | None = None
        self._tables: dict[tuple[str, str], object] = {}
        self._baseline: tuple[tuple, Checkpoint] | None = None
        self._memo = SourceMemo()  # the baseline's scores and refit maps; a worker's steps use their home's

    @property
    def _home(self) -> "RunState":
        """Where what is loaded once per process lives: a worker's steps each get a state of their own."""
        return self.data_from if self.data_from is not None else self

    @cached_property
    def sets(self) -> tuple[KSDD2Dataset, KSDD2Dataset]:
        if self.data_from is not None:
            return self.data_from.sets
        return train_val_datasets(self.cfg.data, preprocessing_for(self.cfg.data, self.cfg.train))

    @property
    def baseline(self) -> Checkpoint:
        """The baseline checkpoint, checked against the config's input size; loaded once per
        process (with `data_from`: shared with it) while the file stays the same."""
        home, path = self._home, self.baseline_file
        key = (str(path), fingerprint(path))  # the manifest's identity of the file (hashed once per version)
        if home._baseline is None or home._baseline[0] != key:
            home._baseline = key, self._load_baseline()
        return home._baseline[1]

    def _load_baseline(self) -> Checkpoint:
        path, data = self.baseline_file, self.cfg.data
        if not path.is_file():
            raise FileNotFoundError(f"no baseline checkpoint at {path}; run `segdec-prune train --config ...` first")
        ckpt = load_checkpoint(path)
        spec = ckpt.input_spec
        if (spec.height, spec.width) != (data.input_height, data.input_width):
            raise ConfigError(f"config key data.input_height/width: {data.input_height}x{data.input_width} "
                              f"but {path} was trained at {spec.height}x{spec.width}")
        return ckpt

    @cached_property
    def batches(self):
        from .pruning.workflow import calibration_batches

        if self.data_from is not None:
            return self.data_from.batches  # the same objects: the memo's entries are per batches
        p = self.cfg.prune
        return calibration_batches(self.sets[0], p.calibration_batches, self.cfg.train.batch_size, p.seed)

    @cached_property
    def teacher(self):
        """The baseline's outputs on the training split, for distillation (cached in the run)."""
        from .pruning.distill import teacher_outputs
        from .training import resolve_device

        return teacher_outputs(self.cfg.run_dir, self.baseline_file, self.baseline.model, self.sets[0],
                               resolve_device(self.cfg.train.device))

    @property
    def table_widths(self) -> Widths:
        """The widths a latency table covers: the baseline's, or before training the default ones
        (what `train` builds)."""
        return self.baseline.model.widths if self.baseline_file.is_file() else Widths()

    def validation_threshold(self, ckpt: Checkpoint) -> Threshold:
        """The best-F1 threshold on this run's validation split, for a checkpoint that stores none
        (written before thresholds were stored, or from elsewhere): what train/prune would have stored."""
        from .training import validate

        t = validate(ckpt.model, self.sets[1], torch.device("cpu")).threshold
        return dataclasses.replace(t, source="validation best-F1 (computed at export)")

    def latency_key(self, runtime: str, precision: str) -> dict:
        """The latency table's key for this run and machine."""
        from .latency_table import run_key

        return run_key(self.cfg, runtime, precision, self.table_widths)

    def latency_table(self, runtime: str, precision: str, on_step=None):
        """(table, reused): the run's latency table for this runtime on this machine (measured once)."""
        from .latency_table import latency_table

        if (runtime, precision) not in self._tables:
            self._tables[runtime, precision] = latency_table(self.cfg.run_dir, self.latency_key(runtime, precision), on_step)
        return self._tables[runtime, precision]

    def prune(self, method: Method, target: Target, finetune_epochs: int, on_plan=None) -> PruneOutcome:
        """Prune (naive_fn: after optional sparsity training, done once), fine-tune, save. Budget
        targets plan against the run's latency table for the budget's runtime (measured if missing)."""
        from .pruning.allocate import Budget
        from .pruning.workflow import RecoveryData, prune_one, sparsity_trained

        source = None
        if method.sparsity and self.cfg.prune.fn_sparsity_epochs > 0:
            if self._sparse is None:
                self._sparse = sparsity_trained(self.baseline, self.cfg, *self.sets, progress=self.progress)
            source = self._sparse
        teacher = self.teacher if self.cfg.prune.distill and finetune_epochs > 0 else None
        data = RecoveryData(*self.sets, self.batches, teacher, self._home._memo)
        table = None
        if isinstance(target, Budget):
            table = self.latency_table(target.runtime, target.precision)[0] if target.kind == "latency" else \
                self.cached_table(target.runtime, target.precision)
        return prune_one(self.baseline, method, target, self.cfg, data, finetune_epochs, self.progress, source,
                         table, on_plan)

    def cached_table(self, runtime: str, precision: str):
        """The table if it was measured already (a MAC budget reports predicted latency with it)."""
        from .latency_table import cached_for

        return cached_for(self.cfg, runtime, precision, self.table_widths)


def plan(cfg: Config, state: RunState) -> list[Step]:
    """Every step of the pipeline for this config, in order."""
    from . import deploy
    from .calibration import build_calibration_set, calibration_path, load_calibration
    from .results import RESULTS_FILE, evaluate_run

    run = cfg.run_dir
    data = Path(cfg.data.root)
    base = baseline_path(cfg)
    steps = [Step("train", lambda: _train(state), [data], config_sections(cfg, "data", "train"), lambda: [base],
                  gpu=True)]
    prune_steps, names = _prune_steps(cfg, state, base)
    steps += prune_steps
    models = ["baseline_best", *names]
    ckpts = [run / "models" / f"{n}.pth" for n in models]
    steps.append(Step("profile", lambda: deploy_profile(run), ckpts, {}, lambda: [run / "profiling_results.json"]))
    for n in models:  # the data: a checkpoint without a stored threshold gets it from the validation split
        steps.append(Step(f"export:{n}", lambda n=n: _export(state, n), [run / "models" / f"{n}.pth", data],
                          {"metadata": EXPORT_METADATA, **config_sections(cfg, "data")},
                          lambda n=n: [deploy.onnx_path(run, n)], "export"))
    calib = calibration_path(cfg)
    steps.append(Step("calibrate", lambda: build_calibration_set(cfg) and "", [data],
                      {**config_sections(cfg, "data"), **config_sections(cfg, "deploy")}, lambda: [calib]))
    search = {k: v for k, v in dataclasses.asdict(cfg.deploy).items() if k.startswith("int8_")}
    for rt, dt in BUILDS:
        for n in models:
            def run_build(rt=rt, dt=dt, n=n) -> str:
                return _build(state, n, rt, dt, load_calibration(calib))

            out = deploy.artifact_path(run, n, rt, dt)
            on_val = rt in CPU_RUNTIMES and dt == "int8"  # chosen on the validation split
            inputs = [deploy.onnx_path(run, n), calib, *([data] if on_val else []),
                      *([deploy.onnx_path(run, n, "int8")] if rt == "openvino" and on_val else [])]  # a candidate
            steps.append(Step(f"build:{rt}-{dt}:{n}", run_build, inputs,
                              {**search, **(config_sections(cfg, "data") if on_val else {})},
                              lambda out=out: [out] if out.exists() else [], f"build-{rt}-{dt}", [out],
                              gpu=rt == "tensorrt", unavailable=lambda rt=rt: unavailable_reason(rt) or ""))
    artifacts = [deploy.artifact_path(run, n, rt, dt) for n in models
                 for rt, dt in (("torch", "fp32"), ("onnxruntime", "fp32"), *BUILDS)]  # "missing" where not built
    results = run / RESULTS_FILE
    steps.append(Step("evaluate", lambda: _evaluate(state, evaluate_run), artifacts,
                      {**config_sections(cfg, "deploy"), "trt": unavailable_reason("tensorrt") is None,
                       **({"openvino": True} if unavailable_reason("openvino") is None else {})}, lambda: [results],
                      gpu=True, exclusive=True))  # times every model: alone on its node
    steps.append(Step("charts", lambda: _charts(cfg), [results], {}, lambda: _chart_files(run)))
    steps.append(Step("report", lambda: _report(cfg), [results, run / "profiling_results.json", *_chart_files(run),
                                                        *_benchmark_files(run)],
                      {"config": cfg.to_dict(), "version": REPORT_VERSION}, lambda: [run / "report.html"]))
    return steps


def record_command(cfg: Config, name: str, seconds: float, detail: str) -> bool:
    """Record what a standalone command just made as the pipeline step it equals, so `run` (local or
    Ray) skips it: e.g. a baseline trained with torchrun. False when the plan has no such step."""
    from .pipeline import Manifest, machine, needs_run, record
    from .results import library_versions

    step = next((s for s in plan(cfg, RunState(cfg)) if s.name == name), None)
    if step is None:
        return False
    manifest = Manifest.load(cfg.run_dir)
    record(manifest, step, needs_run(step, manifest, set())[1], "done", detail, seconds, library_versions(), machine())
    return True


def sweep(cfg: Config) -> list[tuple[str, Target]]:
    """The models the config asks for: methods x ratios, then budget_methods x targets."""
    from .pruning.allocate import Budget

    p = cfg.prune
    budgets = [Budget("macs", f) for f in p.target_macs]
    budgets += [Budget("latency", t, p.budget_runtime, p.budget_precision) for t in p.target_latency_ms]
    return [(m, r) for m in p.methods for r in p.ratios] + [(m, b) for m in p.budget_methods for b in budgets]


def prune_jobs(cfg: Config, all_: bool, method: str | None, ratio: float | None, target_macs: float | None,
               target_latency_ms: float | None, runtime: str, precision: str) -> list[tuple[Method, Target]]:
    """What `prune` was asked for: the config's sweep, or one method at one ratio or budget."""
    from .pruning.allocate import Budget

    targets = [t for t in (ratio, target_macs, target_latency_ms) if t is not None]
    if all_ == (method is not None) or (method is not None and len(targets) != 1):
        raise ConfigError("give --all, or --method with one of --ratio, --target-macs, --target-latency-ms")
    if all_:
        return [(get_method(m), t) for m, t in sweep(cfg)]
    if ratio is not None:
        if not 0 < ratio < 1:
            raise ConfigError(f"--ratio must be in (0, 1), got {ratio}")
        return [(get_method(method), ratio)]
    if target_macs is not None:
        return [(get_method(method), Budget("macs", target_macs))]
    return [(get_method(method), Budget("latency", target_latency_ms, runtime, precision))]


def _prune_steps(cfg: Config, state: RunState, base: Path) -> tuple[list[Step], list[str]]:
    """One step per method x ratio, then per budget method x target (after the latency table
    they plan against); the names of the models they write."""
    from .latency_table import LatencyTableError, table_path
    from .pruning.allocate import Budget
    from .pruning.plan import target_name

    p, run = cfg.prune, cfg.run_dir
    sweep_keys = ("methods", "ratios", "budget_methods", "target_macs", "target_latency_ms", "budget_runtime",
                  "budget_precision")  # which models exist, not how one is made
    settings = {k: v for k, v in dataclasses.asdict(p).items() if k not in sweep_keys}
    settings["train"] = dataclasses.asdict(cfg.train)
    uniform = {k: v for k, v in settings.items() if k not in ("align", "min_width", "min_keep")}
    jobs = sweep(cfg)
    steps, names, table_inputs, unavailable = [], [], [], ""
    if p.target_latency_ms:
        rt, prec = p.budget_runtime, p.budget_precision
        try:
            key = state.latency_key(rt, prec)
            table_inputs = [table_path(run, key)]
        except LatencyTableError as exc:
            key, unavailable = {"unavailable": str(exc)}, str(exc)

        def run_table() -> str:
            if unavailable:
                raise StageUnavailable(unavailable)
            table, reused = state.latency_table(rt, prec)
            return f"{'reused' if reused else f'measured in {table.seconds:.0f} s'}; channel step {table.step}"

        steps.append(Step(f"latency-table:{rt}-{prec}", run_table, [], key, lambda: table_inputs, "latency-table",
                          exclusive=True))
    for m, target in jobs:
        method, name = get_method(m), target_name(get_method(m), target)
        is_latency = isinstance(target, Budget) and target.kind == "latency"
        if is_latency and unavailable:
            continue  # the latency-table step says why, once

        def run_prune(method=method, target=target) -> str:
            return prune_line(state.prune(method, target, cfg.prune.finetune_epochs))

        names.append(name)
        budget = isinstance(target, Budget)
        params = {**settings, "method": m, "target": dataclasses.asdict(target)} if budget else \
            {**uniform, "method": m, "ratio": target}  # as before budgets existed: old runs stay up to date
        steps.append(Step(f"prune:{name}", run_prune, [base, *(table_inputs if is_latency else [])], params,
                          lambda name=name: [run / "models" / f"{name}.pth"], "prune", gpu=True,
                          exclusive=is_latency))  # a latency budget times its plan
    return steps, names


def _train(state: RunState) -> str:
    return train_line(train_baseline(state.cfg, state.sets, progress=state.progress))


def train_line(result: TrainResult) -> str:
    """What the manifest says of a trained baseline (`run`'s step and the `train` command alike)."""
    from .distributed import ranks

    world = ranks().world
    return f"best val AP {result.best_val_ap:.4f} at epoch {result.best_epoch + 1}" + \
        (f"; data-parallel on {world} processes" if world > 1 else "")


def prune_line(out: PruneOutcome) -> str:
    """What the manifest says of a pruned model (`run`'s step and the `prune` command alike),
    with where its time went: fine-tuning (epochs run, and of that the validation passes) against
    the rest (scoring, pruning, the refit and the validation before fine-tuning)."""
    ms = out.plan["measured_plan_ms"] or out.plan["predicted_latency_ms"]
    plan = f"{out.plan['mac_fraction']:.1%} of the MACs" + (f", {ms:.2f} ms planned" if ms else "")
    bf16 = " bf16" if out.precision == "bf16" else ""
    tuned = (f"; {out.epochs}{bf16} epochs in {out.finetune_seconds:.0f} s (validating {out.validation_seconds:.0f} s)"
             if out.epochs else "")
    refit = f" ({out.val_ap_unfitted:.4f} before the seg-head refit)" if out.val_ap_unfitted is not None else ""
    return f"{plan}; val AP {out.val_ap_pruned:.4f}{refit} -> {out.val_ap:.4f}{tuned}"


def _evaluate(state: RunState, evaluate_run) -> str:
    """Every model x runtime, with a status line saying which one is running (minutes on a CPU);
    the manifest's line says where the time went."""
    from .results import evaluate_time_line

    bar, start = state.progress, time.perf_counter()
    if bar is None:
        result = evaluate_run(state.cfg)
    else:
        task = bar.add_task("evaluate", total=None, info="")
        try:
            result = evaluate_run(state.cfg, lambda what: bar.update(task, advance=1, info=what))
        finally:
            bar.remove_task(task)
    skipped = sorted({x["runtime"] for x in result["skipped"]})
    return (f"{len(result['records'])} model x runtime records; " + evaluate_time_line(result["records"], time.perf_counter() - start)
            + (f"; not run: {', '.join(skipped)}" if skipped else ""))


def deploy_profile(run: Path) -> str:
    from .profiling import profile_run

    return f"{len(profile_run(run)['models'])} models"


def export_model(state: RunState, name: str):
    """Export + verify one model of the run; (report, threshold written to its metadata)."""
    from .deploy import check_images, export_checkpoint, onnx_path

    cfg = state.cfg
    ckpt = load_checkpoint(cfg.run_dir / "models" / f"{name}.pth")
    threshold = ckpt.threshold or state.validation_threshold(ckpt)
    images = check_images(cfg.data.root, ckpt.input_spec)
    return export_checkpoint(ckpt, name, images, onnx_path(cfg.run_dir, name), threshold), threshold


def _export(state: RunState, name: str) -> str:
    rep, threshold = export_model(state, name)
    return (f"max |diff| {max(rep.max_abs_diff_decision, rep.max_abs_diff_segmentation):.1e}; "
            f"threshold {threshold.value:.3f} ({threshold.source})")


def build_model(state: RunState, name: str, runtime: str, precision: str, calibration,
                on_candidate=None) -> tuple[Path, dict | None]:
    """Build one model's artifact; (path, the INT8 choice for a CPU runtime's INT8, else None)."""
    from .deploy import build_artifact, ir_info, onnx_info
    from .int8 import Int8Search

    search = Int8Search.from_config(state.cfg.deploy, runtime)
    on_val = runtime in CPU_RUNTIMES and precision == "int8"
    path = build_artifact(state.cfg.run_dir, name, runtime, precision, calibration, search,
                          state.sets[1] if on_val else None, on_candidate)
    info = ir_info(path) if path.suffix == ".xml" else onnx_info(path) if path.suffix == ".onnx" else None
    return path, info.metadata.get("int8") if on_val and info else None


def int8_line(choice: dict) -> str:
    """One line saying what the INT8 search chose, what it kept, and what the search cost."""
    fp32 = ", ".join(choice["fp32_layers"]) or "none"
    held = choice.get("held_by", "validation AP")
    kept = (f" (none within {choice['tolerance']:.3f}: best val AP kept)" if not choice["within_tolerance"] else
            "" if held == "validation AP" else f" (held by {held}, logit error {choice['logit_error']:.3f})")
    tried = choice["candidates"]
    exit_ = " (early exit)" if choice.get("early_exit") else ""
    method = choice["calibration"]
    how = {"nncf": "NNCF quantization", "qdq": "ONNX Runtime's QDQ file"}.get(method, f"{method} calibration")
    if method.startswith(INPUTS_ONLY):
        how = f"{method.removeprefix(INPUTS_ONLY)} calibration, Q/DQ on conv inputs only"
    return (f"{how}, FP32 layers: {fp32}; val AP {choice['val_ap']:.4f} vs FP32 "
            f"{choice['val_ap_fp32']:.4f}{kept}; {len(tried)} candidate(s){exit_} in "
            f"{sum(c.get('seconds', 0.0) for c in tried):.0f} s")


def _build(state: RunState, name: str, runtime: str, precision: str, calibration) -> str:
    path, choice = build_model(state, name, runtime, precision, calibration)
    return int8_line(choice) if choice else str(path)


def _charts(cfg: Config) -> str:
    from .charts import make_charts

    return ", ".join(p.name for p in make_charts(cfg))


def _report(cfg: Config) -> str:
    from .report import make_report

    return str(make_report(cfg))


def _benchmark_files(run: Path) -> list[Path]:
    from .report import BENCHMARKS

    return [run / f for f in BENCHMARKS]


def _chart_files(run: Path) -> list[Path]:
    from .charts import CHART_FILES

    return [run / "charts" / f for f in CHART_FILES]
