"""INT8 that keeps the FP32 model's AP: how it is quantized and which layers stay FP32, chosen
per model on the validation split (never the test split); ONNX Runtime and OpenVINO share the search.

ONNX Runtime (each candidate quantized from the same pre-processed graph; one calibration pass
gives every method's ranges, except that the early exit's first try, MinMax, runs its cheaper one):
  1. every calibration method in `calibrations`, all convolutions INT8;
  2. with the best method of step 1: each layer group of `fp32_candidates` kept in FP32 alone,
     then all of them together.
OpenVINO: 1. for each calibration method, a QDQ file of its own with Q/DQ only where the
  convolutions read ("inputs:<method>"), then OpenVINO reading ONNX Runtime's chosen QDQ file,
  then NNCF's quantization; 2. NNCF with each layer group of `fp32_candidates` kept FP32, then
  all of them; the QDQ file also holds when ONNX Runtime's search held it and OpenVINO runs it
  about as faithfully (`inherits_ort_validation`).
With `early_exit` (set per runtime; the demo sets it for OpenVINO, whose later candidates each
cost a calibration pass or an NNCF quantization) the search stops at the first candidate whose validation AP is within
`tolerance` of the FP32 model's (or above it). For ONNX Runtime on the demo it cost test AP: 10 of
20 models ended more than 0.5 point from FP32, 4 with the full search (docs/measured.md).
The FP32 reference is the validation scores stored with the model at training when they are of
the same images (one pass fewer per build), else a pass of the FP32 model.
Where validation AP saturates (KSDD1: 1.0) it cannot tell candidates apart, so by default every
candidate runs and, among those within tolerance, the one whose decision
logits stay closest to FP32's (mean |difference|) wins: validation AP on a few dozen defects
moves by a whole ranking swap, the logits show every image. When no candidate is within
tolerance, the highest validation AP wins. Every candidate tried is recorded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .checkpoint import Threshold
from .data.dataset import KSDD2Dataset
from .evaluation import classification_metrics, predict
from .runtimes.base import FP32_GROUPS, INPUTS_ONLY, INT8_CALIBRATIONS, fp32_groups_of, is_fp32_candidate
from .runtimes.onnxruntime_runtime import (OnnxRuntime, calibrate, conv_nodes, prepare_for_quantization,
                                           quantize_prepared, takes_cached_ranges)


@dataclass(frozen=True)
class Int8Search:
    """What the search may try; from `deploy.int8_*` in the config."""

    calibrations: tuple[str, ...] = ("minmax", "entropy", "percentile")
    fp32_candidates: tuple[str, ...] = ("first_conv", "seg_head", "decision_head")
    op_types: tuple[str, ...] = ("Conv",)
    tolerance: float = 0.005  # validation AP below FP32's that still counts as kept
    early_exit: bool = False  # stop at the first candidate within tolerance

    def __post_init__(self) -> None:
        bad = [c for c in self.calibrations if c not in INT8_CALIBRATIONS]
        bad += [g for g in self.fp32_candidates if not is_fp32_candidate(g)]
        if bad or not self.calibrations:
            raise ValueError(f"INT8 search: unknown {bad or 'empty calibrations'}; calibrations "
                             f"{', '.join(INT8_CALIBRATIONS)}; FP32 layer groups {', '.join(FP32_GROUPS)} "
                             "(several joined by '+' make one candidate)")

    @classmethod
    def from_config(cls, deploy, runtime: str) -> "Int8Search":
        """`runtime`'s search: the early exit is set per runtime (`deploy.int8_early_exit`)."""
        return cls(tuple(deploy.int8_calibrations), tuple(deploy.int8_fp32_candidates), tuple(deploy.int8_op_types),
                   deploy.int8_ap_tolerance, runtime in deploy.int8_early_exit)


@dataclass
class Int8Choice:
    """What was chosen for one model, and why (stored in the INT8 file and the results file)."""

    calibration: str
    fp32_layers: list[str]
    val_ap: float
    val_ap_fp32: float
    logit_error: float  # mean |INT8 - FP32| decision logit on validation images
    within_tolerance: bool  # it holds FP32's quality (`held_by` says how); False: none did, best val AP kept
    tolerance: float
    val_images: int
    candidates: list[dict] = field(default_factory=list)
    early_exit: bool = False  # the search stopped at the first candidate within tolerance
    reference: str = ""  # where the FP32 scores came from: a pass of the FP32 model, or those stored at training
    held_by: str = ""  # "validation AP", or for OpenVINO's qdq candidate ONNX Runtime's validation of the same file

    def to_dict(self) -> dict:
        return asdict(self)


def _logits(scores: np.ndarray) -> np.ndarray:
    p = np.clip(scores.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def logit_error(scores: np.ndarray, ref: np.ndarray) -> float:
    """Mean |decision logit - the reference's| over the images: how far INT8 moved every score."""
    return float(np.mean(np.abs(_logits(scores) - _logits(ref))))


Holds = Callable[[dict, float, float], str]  # (candidate row, FP32 val AP, tolerance) -> why it holds, "" if not


def by_validation_ap(row: dict, ref_ap: float, tolerance: float) -> str:
    """The rule for every candidate: validation AP at most `tolerance` below FP32's."""
    return "validation AP" if row["val_ap"] >= ref_ap - tolerance else ""


def _pick(rows: list[dict]) -> dict:
    """Closest logits to FP32 among those that hold; else the best validation AP."""
    kept = [r for r in rows if r["holds"]]
    return min(kept, key=lambda r: r["logit_error"]) if kept else max(rows, key=lambda r: r["val_ap"])


def _search(order: Callable[[list[dict]], Iterator[tuple[str, tuple[str, ...]]]],
            build: Callable[[str, tuple[str, ...]], tuple[Any, Any]], validation: KSDD2Dataset, ref: np.ndarray,
            search: Int8Search, on_candidate: Callable[[str], None] | None,
            reference: str, holds: Holds = by_validation_ap) -> tuple[Any, Int8Choice, Threshold]:
    """Score candidates in `order` (which sees the rows so far) on the validation split; `build`
    makes one: (runtime to score, artifact to keep). `ref`: the FP32 model's validation scores;
    `holds` says whether a candidate keeps FP32's quality. Returns (the chosen artifact, the
    choice, its own threshold)."""
    labels = validation.labels
    ref_ap = classification_metrics(labels, ref)["ap"]
    rows: list[dict] = []
    chosen, stopped = None, False
    for method, groups in order(rows):
        t0 = time.perf_counter()
        if on_candidate:
            on_candidate(method + "".join(f"+fp32:{g}" for g in groups))
        runtime, artifact = build(method, groups)
        preds = predict(runtime, validation, batch_size=8)
        rows.append({"calibration": method, "fp32_layers": list(groups),
                     "val_ap": classification_metrics(labels, preds.scores)["ap"],
                     "logit_error": logit_error(preds.scores, ref),
                     "seconds": time.perf_counter() - t0, "artifact": artifact, "scores": preds.scores})
        rows[-1]["holds"] = holds(rows[-1], ref_ap, search.tolerance)
        if search.early_exit and rows[-1]["holds"]:
            chosen, stopped = rows[-1], True
            break
    chosen = chosen or _pick(rows)
    m = classification_metrics(labels, chosen["scores"])
    choice = Int8Choice(chosen["calibration"], chosen["fp32_layers"], chosen["val_ap"], ref_ap, chosen["logit_error"],
                        bool(chosen["holds"]), search.tolerance, len(labels),
                        [{k: v for k, v in r.items() if k not in ("artifact", "scores")} for r in rows], stopped,
                        reference, chosen["holds"])
    return chosen["artifact"], choice, Threshold(m["best_threshold"], "validation best-F1 (INT8 model)", m["best_f1"])


def _then_fp32_groups(first: Sequence[str], search: Int8Search, base: str | None = None) -> Callable:
    """Search order: each of `first` with every convolution INT8; then, from `base` (default: the
    best of those), each FP32 candidate of `search.fp32_candidates` (a layer group, or several
    joined by "+"), then, when there are several, all of their groups together."""
    def order(rows: list[dict]) -> Iterator[tuple[str, tuple[str, ...]]]:
        yield from ((m, ()) for m in first)
        best = base or _pick(rows)["calibration"]
        candidates = [fp32_groups_of(c) for c in search.fp32_candidates]
        yield from ((best, groups) for groups in candidates)
        if len(candidates) > 1:
            yield best, tuple(dict.fromkeys(g for groups in candidates for g in groups))

    return order


STORED = "validation scores stored at training (PyTorch)"


def _fp32_reference(ref: np.ndarray | None, fp32_runtime: Callable[[], Any], validation: KSDD2Dataset,
                    name: str) -> tuple[np.ndarray, str]:
    """(the FP32 model's validation scores, where they came from): `ref` when stored, else a pass
    of `fp32_runtime()` (built only then)."""
    if ref is not None:
        return ref, STORED
    return predict(fp32_runtime(), validation, batch_size=8).scores, f"{name} FP32 pass"


class _Quantizer:
    """ONNX Runtime's quantizer on one model: the graph pre-processed once, and each calibration
    method's ranges computed the first time a candidate needs them (one histogram pass gives every
    method still due; the early exit's first try, MinMax, runs its cheaper pass alone)."""

    def __init__(self, fp32_path: Path, calibration: np.ndarray, search: Int8Search, tmp: Path, threads: int) -> None:
        self.pre = prepare_for_quantization(fp32_path, tmp / "pre.onnx")
        self.graph = onnx.load(str(self.pre), load_external_data=False)
        self.calibration, self.search, self.tmp, self.threads = calibration, search, tmp, threads
        self.caches = {m: tmp / f"{m}.json" for m in search.calibrations}
        self.count = iter(range(1 << 30))

    def quantize(self, method: str, groups: tuple[str, ...], **layout) -> Path:
        """A QDQ file with `method`'s ranges and the convolutions of `groups` FP32; `layout`:
        `quantize_prepared`'s conv_outputs / input_range."""
        if takes_cached_ranges() and not self.caches[method].is_file():
            due = {m: c for m, c in self.caches.items() if not c.is_file()}
            if self.search.early_exit and method == "minmax":
                due = {method: self.caches[method]}
            calibrate(self.pre, self.calibration, self.search.op_types, due, threads=self.threads)
        exclude = conv_nodes(self.graph, [p for g in groups for p in FP32_GROUPS[g]])
        return quantize_prepared(self.pre, self.tmp / f"c{next(self.count)}.onnx", self.calibration,
                                 self.search.op_types, method, exclude, cache=self.caches[method],
                                 threads=self.threads, **layout)


def choose_int8(fp32_path: Path, calibration: np.ndarray, validation: KSDD2Dataset, search: Int8Search = Int8Search(),
                on_candidate: Callable[[str], None] | None = None,
                ref: np.ndarray | None = None) -> tuple[onnx.ModelProto, Int8Choice, Threshold]:
    """ONNX Runtime: the chosen INT8 graph, the choice, and the INT8 model's own validation best-F1
    threshold (its scores shift a little from FP32's). `ref`: the FP32 model's validation scores
    when known (export verified the graph against the PyTorch model that produced them); else a pass."""
    import torch

    threads = torch.get_num_threads()  # this process's share of the cores (a `run --workers` worker: not all)
    ref, source = _fp32_reference(ref, lambda: OnnxRuntime(fp32_path, threads=threads), validation, "onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        quantizer = _Quantizer(fp32_path, calibration, search, Path(tmp), threads)

        def build(method: str, groups: tuple[str, ...]):
            path = quantizer.quantize(method, groups)
            return OnnxRuntime(path, threads=threads, precision="int8"), path

        path, choice, threshold = _search(_then_fp32_groups(search.calibrations, search), build, validation, ref,
                                          search, on_candidate, source)
        return onnx.load(str(path)), choice, threshold


QDQ_LOGIT_SLACK = 1.25  # OpenVINO's run of the QDQ file vs ONNX Runtime's: 0.90-1.15x the logit error (demo, 20 models)


def inherits_ort_validation(ort_choice: dict | None) -> Holds:
    """OpenVINO's rule: a candidate holds on its own validation AP, and the `qdq` candidate (the
    very graph ONNX Runtime's search chose) also holds when ONNX Runtime's validation held it
    and OpenVINO runs it about as faithfully (logit error at most QDQ_LOGIT_SLACK x ONNX
    Runtime's). On the demo's 13 validation defects one ranking swap moves AP by more than the
    tolerance: OpenVINO's run of the same file missed it on 7 of 20 models at 0.92-1.15x ONNX
    Runtime's logit error, and the NNCF candidates then kept in their place had 3-5x the logit
    error and lost 0.4-3.9 test AP points (docs/measured.md)."""
    def holds(row: dict, ref_ap: float, tolerance: float) -> str:
        if why := by_validation_ap(row, ref_ap, tolerance):
            return why
        if (row["calibration"] == "qdq" and ort_choice and ort_choice.get("within_tolerance")
                and row["logit_error"] <= QDQ_LOGIT_SLACK * float(ort_choice.get("logit_error", 0.0))):
            return "ONNX Runtime's validation of this QDQ file"
        return ""

    return holds


def choose_openvino_int8(fp32_model, calibration: np.ndarray, validation: KSDD2Dataset, qdq_path: Path | None,
                         search: Int8Search = Int8Search(), on_candidate: Callable[[str], None] | None = None,
                         ref: np.ndarray | None = None, fp32_path: Path | None = None,
                         input_range: tuple[float, float] | None = None):
    """OpenVINO: the chosen INT8 model (an openvino.Model), the choice and its threshold.

    Candidates, in order: "inputs:<calibration>" for each calibration of the search (from the FP32
    ONNX file at `fp32_path`: Q/DQ only where a convolution reads, its outputs FP32, the image input
    on its exact grid `input_range`; `quantize_prepared`), OpenVINO reading ONNX Runtime's
    validation-chosen QDQ file ("qdq", when `qdq_path` exists), NNCF's quantization of the FP32
    model ("nncf"), then NNCF with each FP32 layer group (and all) kept FP32; a candidate holds by
    `inherits_ort_validation`. The inputs-only files go first: on the demo their validation logits
    sat 0.03-0.05 from FP32's where ONNX Runtime's file (its conv outputs quantized before
    FeatureNorm) sat 0.06-0.10, at OpenVINO's INT8 speed (docs/measured.md)."""
    import torch

    from .deploy import onnx_info
    from .runtimes.openvino_runtime import OpenVinoRuntime, conv_names, convert, quantize_nncf

    threads = torch.get_num_threads()
    ref, source = _fp32_reference(ref, lambda: OpenVinoRuntime(fp32_model, threads), validation, "openvino")
    with tempfile.TemporaryDirectory() as tmp:
        quantizer = _Quantizer(fp32_path, calibration, search, Path(tmp), threads) if fp32_path else None

        def build(method: str, groups: tuple[str, ...]):
            if method.startswith(INPUTS_ONLY):
                model = convert(quantizer.quantize(method.removeprefix(INPUTS_ONLY), groups, conv_outputs=False,
                                                   input_range=input_range))
            elif method == "qdq":
                model = convert(qdq_path)
            else:
                model = quantize_nncf(fp32_model, calibration,
                                      conv_names(fp32_model, [p for g in groups for p in FP32_GROUPS[g]]))
            return OpenVinoRuntime(model, threads, "int8"), model

        qdq = qdq_path is not None and Path(qdq_path).is_file()
        ort_choice = onnx_info(qdq_path).metadata.get("int8") if qdq else None
        first = [*(INPUTS_ONLY + m for m in (search.calibrations if quantizer else ())), *(["qdq"] if qdq else []), "nncf"]
        return _search(_then_fp32_groups(first, search, base="nncf"), build, validation, ref, search, on_candidate,
                       source, inherits_ort_validation(ort_choice))
