"""Typed, validated configuration: a TOML file plus `section.key=value` overrides.

Every value is checked on load; a bad one raises ConfigError naming the key, and unknown keys
are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .architecture import DECISION_RESETS, decision_map_size
from .pruning.methods import METHODS
from .runtimes.base import CPU_RUNTIMES as INT8_SEARCH_RUNTIMES, FP32_GROUPS, INT8_CALIBRATIONS, RUNTIMES, is_fp32_candidate


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")  # train.precision / prune.finetune_precision: the forward pass's arithmetic
FINETUNE_KEEP = ("best", "last")  # prune.finetune_keep: the best validated epoch, or the last (one validation)


@dataclass
class DataConfig:
    root: str = "datasets/demo"
    input_height: int = 640
    input_width: int = 232
    channels: int = 3
    dilate: int = 15
    num_segmented: int | str = "all"  # int >= 0, or "all"
    split_file: str = ""  # optional JSON list of segmented positive ids
    val_fraction: float = 0.2
    seed: int = 0

    def validate(self) -> None:
        h, w = self.input_height, self.input_width
        _require("data.input_height", h % 8 == 0 and h > 0, f"must be a positive multiple of 8, got {h}")
        _require("data.input_width", w % 8 == 0 and w > 0, f"must be a positive multiple of 8, got {w}")
        dh, dw = decision_map_size(h, w)
        _require("data.input_height", dh * dw >= 2, f"{h}x{w} is too small: the decision head needs >= 128x64")
        _require("data.channels", self.channels in (1, 3), f"must be 1 or 3, got {self.channels}")
        _require("data.dilate", self.dilate >= 0, f"must be >= 0, got {self.dilate}")
        ns = self.num_segmented
        _require("data.num_segmented", ns == "all" or (isinstance(ns, int) and ns >= 0), f"must be 'all' or an int >= 0, got {ns!r}")
        _require("data.val_fraction", 0 < self.val_fraction < 1, f"must be in (0, 1), got {self.val_fraction}")

    @property
    def segmented_count(self) -> int | None:
        return None if self.num_segmented == "all" else int(self.num_segmented)


@dataclass
class TrainConfig:
    epochs: int = 50
    lr: float = 0.01
    batch_size: int = 1
    delta: float = 1.0  # decision-loss weight
    dyn_balanced_loss: bool = True
    gradient_adjustment: bool = True
    weighted_seg_loss: bool = True
    seg_loss_p: float = 2.0
    seg_loss_max: float = 3.0
    frequency_sampling: bool = True
    validate_every: int = 5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # 0 = torch default
    momentum: float = 0.0  # SGD momentum (the paper: none)
    lr_schedule: str = "constant"  # constant | cosine (per step, down to 0 at the last step)
    seg_weight: float = 1.0  # segmentation-loss weight when dyn_balanced_loss is off
    precision: str = "fp32"  # bf16: the forward pass under bf16 autocast where the device runs bf16 natively

    def validate(self) -> None:
        _require("train.epochs", self.epochs >= 1, f"must be >= 1, got {self.epochs}")
        _require("train.lr", self.lr > 0, f"must be > 0, got {self.lr}")
        _require("train.batch_size", self.batch_size >= 1, f"must be >= 1, got {self.batch_size}")
        _require("train.delta", self.delta >= 0, f"must be >= 0, got {self.delta}")
        _require("train.seg_loss_max", self.seg_loss_max > 0, f"must be > 0, got {self.seg_loss_max}")
        _require("train.validate_every", self.validate_every >= 1, f"must be >= 1, got {self.validate_every}")
        _require("train.num_threads", self.num_threads >= 0, f"must be >= 0, got {self.num_threads}")
        _require("train.momentum", 0 <= self.momentum < 1, f"must be in [0, 1), got {self.momentum}")
        _require("train.lr_schedule", self.lr_schedule in LR_SCHEDULES,
                 f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        _require("train.seg_weight", self.seg_weight >= 0, f"must be >= 0, got {self.seg_weight}")
        _require("train.precision", self.precision in PRECISIONS,
                 f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        ok = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        _require("train.device", ok, f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class PruneConfig:
    methods: list = field(default_factory=lambda: ["naive_l1", "naive_fn", "ours_c1", "ours_c2", "ours_c3", "ours_c4"])
    ratios: list = field(default_factory=lambda: [0.2, 0.4, 0.6])
    calibration_batches: int = 8
    round_to: int = 32  # ours_c1 alignment N
    c3_lambda: float = 0.5
    fn_sparsity_lambda: float = 1e-4
    fn_sparsity_epochs: int = 0  # naive_fn: K epochs of L1 sparsity training before pruning
    include_extractor: bool = False  # also prune the decision head's three small convs
    seed: int = 0
    # The recovery recipe (docs/recovery.md): the same for every method, so the comparison is fair.
    finetune_epochs: int = 20  # at most: early stopping (finetune_patience) ends most runs sooner
    finetune_lr: float | str = 0.01  # a number, or "auto": chosen per model by a short probe (pruning/recipe.py)
    finetune_momentum: float = 0.0  # with a fixed lr
    probe_lrs: list = field(default_factory=lambda: [0.001, 0.01, 0.03])  # finetune_lr = "auto": candidates
    probe_momenta: list = field(default_factory=lambda: [0.0, 0.9])  # ... each lr with each momentum
    probe_fraction: float = 0.25  # ... each trained for this share of an epoch, then scored on validation
    finetune_patience: int = 5  # stop after this many epochs without a better validation AP (0 = never)
    finetune_precision: str = "fp32"  # bf16: fine-tune under bf16 autocast where the CPU/GPU has bf16 (else fp32)
    finetune_keep: str = "best"  # best: validate every epoch, keep the best; last: validate the last epoch only, keep it
    finetune_schedule: str = "constant"  # constant | cosine
    finetune_seg_weight: float = 3.0  # fixed loss weights: segmentation this, decision train.delta
    reset_decision: str = "none"  # after pruning: none | fc (zero the final layer) | head (and the extractor)
    refit_seg_head: bool = True  # after pruning: least-squares refit of the 1x1 seg head to the teacher's map (pruning/refit.py)
    finetune_dyn_balanced: bool = False  # instead: the paper's dynamic balancing again (seg first, decision later)
    steps: int = 1  # iterative pruning: reach the ratio in this many prune -> fine-tune rounds
    distill: bool = False  # learn the unpruned baseline's outputs too (soft targets)
    distill_temperature: float = 1.0
    distill_dec_weight: float = 1.0  # weight of the decision-logit distillation term
    distill_seg_weight: float = 1.0  # weight of the per-pixel segmentation distillation term
    distill_volume_weight: float = 0.0  # > 0: the pruned volume learns the baseline's kept channels, teacher in
    # the loop: one teacher pass per batch (pruning/distill.VolumeDistillation); 0 = off
    # Budget targets (docs/budgets.md): global allocation instead of one ratio for every layer.
    budget_methods: list = field(default_factory=list)  # methods that also get the targets below
    target_macs: list = field(default_factory=list)  # shares of the baseline's MACs to keep, in (0, 1)
    target_latency_ms: list = field(default_factory=list)  # batch-1 ms on budget_runtime/precision
    budget_runtime: str = "onnxruntime"
    budget_precision: str = "fp32"
    align: int = 16  # budget models' widths are multiples of this (the latency table's channel step)
    min_width: int = 8  # no layer of a budget model gets narrower (rounded up to align)
    min_keep: float = 0.3  # nor below this share of its own channels

    def validate(self) -> None:
        for key in ("methods", "budget_methods"):
            unknown = [m for m in getattr(self, key) if m not in METHODS]
            _require(f"prune.{key}", not unknown, f"unknown {unknown}; known: {', '.join(METHODS)}")
        _require("prune.target_macs", _all_numbers(self.target_macs, lambda f: 0 < f < 1),
                 f"each share of MACs kept must be in (0, 1), got {self.target_macs}")
        _require("prune.target_latency_ms", _all_numbers(self.target_latency_ms, lambda t: t > 0),
                 f"each target must be > 0 ms, got {self.target_latency_ms}")
        _require("prune.budget_runtime", self.budget_runtime in RUNTIMES,
                 f"must be one of {', '.join(RUNTIMES)}, got {self.budget_runtime!r}")
        _require("prune.budget_precision", self.budget_precision in RUNTIMES.get(self.budget_runtime, ()),
                 f"{self.budget_runtime} runs {', '.join(RUNTIMES.get(self.budget_runtime, ()))}, not {self.budget_precision!r}")
        targets = bool(self.target_macs or self.target_latency_ms)
        _require("prune.budget_methods", bool(self.budget_methods) or not targets,
                 "is empty, so prune.target_macs / target_latency_ms apply to no method")
        _require("prune.align", self.align >= 1, f"must be >= 1, got {self.align}")
        _require("prune.min_width", self.min_width >= 1, f"must be >= 1, got {self.min_width}")
        _require("prune.min_keep", 0 <= self.min_keep < 1, f"must be in [0, 1), got {self.min_keep}")
        _require("prune.ratios", _all_numbers(self.ratios, lambda r: 0 < r < 1) and bool(self.ratios),
                 f"each ratio must be in (0, 1), got {self.ratios}")
        _require("prune.finetune_epochs", self.finetune_epochs >= 0, f"must be >= 0, got {self.finetune_epochs}")
        lr = self.finetune_lr
        _require("prune.finetune_lr", lr == "auto" or (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0),
                 f'must be > 0 or "auto", got {lr!r}')
        _require("prune.probe_lrs", bool(self.probe_lrs) and _all_numbers(self.probe_lrs, lambda v: v > 0),
                 f"must be a non-empty list of numbers > 0, got {self.probe_lrs}")
        _require("prune.probe_momenta", bool(self.probe_momenta) and _all_numbers(self.probe_momenta, lambda v: 0 <= v < 1),
                 f"must be a non-empty list of numbers in [0, 1), got {self.probe_momenta}")
        _require("prune.probe_fraction", 0 < self.probe_fraction <= 2, f"must be in (0, 2], got {self.probe_fraction}")
        _require("prune.finetune_patience", self.finetune_patience >= 0, f"must be >= 0, got {self.finetune_patience}")
        _require("prune.finetune_momentum", 0 <= self.finetune_momentum < 1, f"must be in [0, 1), got {self.finetune_momentum}")
        _require("prune.finetune_precision", self.finetune_precision in PRECISIONS,
                 f"must be one of {', '.join(PRECISIONS)}, got {self.finetune_precision!r}")
        _require("prune.finetune_keep", self.finetune_keep in FINETUNE_KEEP,
                 f"must be one of {', '.join(FINETUNE_KEEP)}, got {self.finetune_keep!r}")
        _require("prune.finetune_keep", self.finetune_keep == "best" or self.finetune_patience == 0,
                 f'"last" validates only the last epoch: set prune.finetune_patience = 0 (got {self.finetune_patience})')
        _require("prune.finetune_schedule", self.finetune_schedule in LR_SCHEDULES,
                 f"must be one of {', '.join(LR_SCHEDULES)}, got {self.finetune_schedule!r}")
        _require("prune.finetune_seg_weight", self.finetune_seg_weight >= 0, f"must be >= 0, got {self.finetune_seg_weight}")
        _require("prune.reset_decision", self.reset_decision in DECISION_RESETS,
                 f"must be one of {', '.join(DECISION_RESETS)}, got {self.reset_decision!r}")
        _require("prune.steps", self.steps >= 1, f"must be >= 1, got {self.steps}")
        _require("prune.distill_temperature", self.distill_temperature > 0, f"must be > 0, got {self.distill_temperature}")
        for key in ("distill_dec_weight", "distill_seg_weight", "distill_volume_weight"):
            _require(f"prune.{key}", getattr(self, key) >= 0, f"must be >= 0, got {getattr(self, key)}")
        _require("prune.calibration_batches", self.calibration_batches >= 1, f"must be >= 1, got {self.calibration_batches}")
        _require("prune.round_to", self.round_to >= 1, f"must be >= 1, got {self.round_to}")
        _require("prune.c3_lambda", 0 <= self.c3_lambda <= 1, f"must be in [0, 1], got {self.c3_lambda}")
        _require("prune.fn_sparsity_lambda", self.fn_sparsity_lambda >= 0, f"must be >= 0, got {self.fn_sparsity_lambda}")
        _require("prune.fn_sparsity_epochs", self.fn_sparsity_epochs >= 0, f"must be >= 0, got {self.fn_sparsity_epochs}")


@dataclass
class DeployConfig:
    calibration_images: int = 64  # preprocessed training images kept for INT8 calibration
    calibration_positive_fraction: float = 0.5
    int8_op_types: list = field(default_factory=lambda: ["Conv"])  # ONNX ops ORT quantizes
    # ONNX Runtime INT8 is chosen per model on the validation split (docs/deployment.md, "INT8 that keeps AP"):
    int8_calibrations: list = field(default_factory=lambda: list(INT8_CALIBRATIONS))  # methods tried
    # Layers that may stay FP32: each entry one candidate (a group, or groups joined by "+"), then all together
    int8_fp32_candidates: list = field(default_factory=lambda: list(FP32_GROUPS))
    int8_ap_tolerance: float = 0.005  # validation AP below FP32's that still counts as kept
    # The runtimes whose search stops at the first candidate within the tolerance (true: both, false: none);
    # the others try all and keep the closest logits (KSDD1, validation AP saturated at 1.0: the early exit lost
    # 1.29 test AP points; the demo: it left 10 of 20 ONNX Runtime models more than 0.5 test points from FP32)
    int8_early_exit: list = field(default_factory=list)
    threads: int = 2  # fixed intra-op threads for every latency figure
    warmup: int = 5
    runs: int = 30  # timed batch-1 runs per model and runtime
    throughput_batch: int = 8
    seed: int = 0

    def validate(self) -> None:
        _require("deploy.calibration_images", self.calibration_images >= 1, f"must be >= 1, got {self.calibration_images}")
        f = self.calibration_positive_fraction
        _require("deploy.calibration_positive_fraction", 0 <= f <= 1, f"must be in [0, 1], got {f}")
        _require("deploy.int8_op_types", bool(self.int8_op_types), "must name at least one ONNX op type")
        cal, groups = self.int8_calibrations, self.int8_fp32_candidates
        _require("deploy.int8_calibrations", bool(cal) and all(c in INT8_CALIBRATIONS for c in cal),
                 f"must name one or more of {', '.join(INT8_CALIBRATIONS)}, got {cal}")
        _require("deploy.int8_fp32_candidates", all(is_fp32_candidate(g) for g in groups),
                 f"must name layer groups among {', '.join(FP32_GROUPS)} (several joined by '+' make one "
                 f"candidate), got {groups}")
        _require("deploy.int8_early_exit", all(r in INT8_SEARCH_RUNTIMES for r in self.int8_early_exit),
                 f"must be true, false or a list of {', '.join(INT8_SEARCH_RUNTIMES)}, got {self.int8_early_exit}")
        _require("deploy.int8_ap_tolerance", 0 <= self.int8_ap_tolerance < 1,
                 f"must be in [0, 1), got {self.int8_ap_tolerance}")
        _require("deploy.threads", self.threads >= 1, f"must be >= 1, got {self.threads}")
        _require("deploy.runs", self.runs >= 3, f"must be >= 3, got {self.runs}")
        _require("deploy.warmup", self.warmup >= 0, f"must be >= 0, got {self.warmup}")
        _require("deploy.throughput_batch", self.throughput_batch >= 1, f"must be >= 1, got {self.throughput_batch}")


@dataclass
class RunConfig:
    name: str = "demo"
    dir: str = "runs"
    workers: int = 1  # `run`'s local worker processes when --workers is not given (1: all steps in one process)

    def validate(self) -> None:
        _require("run.name", bool(self.name) and "/" not in self.name, f"must be a plain folder name, got {self.name!r}")
        _require("run.workers", self.workers >= 1, f"must be >= 1, got {self.workers}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    run: RunConfig = field(default_factory=RunConfig)
    source: str = ""  # the file it came from, for messages

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) / self.run.name

    def validate(self) -> "Config":
        for section in (self.data, self.train, self.prune, self.deploy, self.run):
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


SECTIONS = ("data", "train", "prune", "deploy", "run")


def _all_numbers(values: list, ok: Callable[[float], bool]) -> bool:
    """Every value is a number that `ok` accepts."""
    return all(isinstance(v, (int, float)) and ok(v) for v in values)


def _require(key: str, ok: bool, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key}: {why}")


NUMBER_OR_WORD = ("data.num_segmented", "prune.finetune_lr")  # "all" / "auto" or a number


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a TOML value against the default's type (ints may stand for floats)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "deploy.int8_early_exit" and isinstance(value, bool):  # true/false: every runtime's search or none
        return list(INT8_SEARCH_RUNTIMES) if value else []
    if key in NUMBER_OR_WORD and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return float(value) if key == "prune.finetune_lr" and not isinstance(value, str) else value  # validated later
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key}: expected {kind.__name__}, got {value!r}")
    return value


def from_dict(raw: dict[str, Any], source: str = "") -> Config:
    cfg = Config(source=source)
    for name, section in raw.items():
        if name not in SECTIONS or not isinstance(section, dict):
            raise ConfigError(f"config key {name}: unknown section (known: {', '.join(SECTIONS)})")
        target = getattr(cfg, name)
        known = {f.name for f in fields(target)}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"config key {name}.{key}: unknown (known: {', '.join(sorted(known))})")
            setattr(target, key, _coerce(f"{name}.{key}", value, getattr(target, key)))
    return cfg.validate()


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.epochs=3' -> ('train', 'epochs', 3); values parse as TOML, else as strings."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return section, name, parsed


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for text in overrides or []:
        section, name, value = parse_override(text)
        raw.setdefault(section, {})[name] = value
    return from_dict(raw, source=str(path or "<defaults>"))
