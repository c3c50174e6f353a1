"""ONNX Runtime on the CPU: FP32, and static INT8 (QDQ) calibrated on the calibration set.

Only the ops named in `deploy.int8_op_types` are quantized (default: Conv). The convolutions
hold almost all of SegDecNet's MACs, so that is where INT8 pays; quantizing the FeatureNorm
arithmetic and the global pooling as well costs accuracy (the normalisation divides by a
per-image std) and has produced graphs that fail at run time, for no speed-up worth having.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from ..artifacts import atomic_write
from ..export import INPUT, OUTPUTS
from .base import INT8_CALIBRATIONS


def cpu_session(path: str | os.PathLike, threads: int = 0, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with fixed threads, as every latency figure of the project is measured
    (`optimize=False`: the graph as it is, e.g. a calibration graph whose every tensor is an output)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # No spin-waiting: idle sessions' spinning threads otherwise steal the cores of the one that
    # runs (interleaved r60 INT8 latency on 2 cores: 16.1 ms spinning, 7.4 ms not).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency_timer(path: str | os.PathLike, sample: np.ndarray, threads: int, warmup: int) -> Callable[[int], float]:
    """A warmed-up session for any single-input ONNX graph (a latency-table block, a planned
    network); call the result with a run count to get the median batch-1 milliseconds."""
    from ..evaluation import latency_samples

    session = cpu_session(path, threads)
    name = session.get_inputs()[0].name
    graph = SimpleNamespace(predict=lambda x: session.run(None, {name: x}))
    x = np.ascontiguousarray(sample, dtype=np.float32)
    latency_samples(graph, x, warmup)

    def median_ms(runs: int) -> float:
        latency_samples(graph, x, 1)  # untimed: caches, and the previous session's threads settle
        return float(np.median(latency_samples(graph, x, runs)) * 1e3)

    return median_ms


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int = 0, precision: str = "fp32") -> None:
        self.session = cpu_session(path, threads)
        self.device = "cpu"
        self.precision = precision
        self.threads = threads

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dec, seg = self.session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(images, dtype=np.float32)})
        return dec[:, 0], seg


class _Reader(CalibrationDataReader):
    """Calibration batches of equal size (the largest divisor of the image count up to `batch`):
    ONNX Runtime's histogram calibrators stack every batch's outputs and fail on a ragged last one."""

    def __init__(self, images: np.ndarray, batch: int = 8) -> None:
        batch = max(d for d in range(1, min(batch, len(images)) + 1) if len(images) % d == 0)
        self.batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {INPUT: np.ascontiguousarray(b, dtype=np.float32)}


CALIBRATIONS = dict(zip(INT8_CALIBRATIONS, (CalibrationMethod.MinMax, CalibrationMethod.Entropy,
                                            CalibrationMethod.Percentile)))


def prepare_for_quantization(fp32_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """ONNX Runtime's pre-processing (shape inference, folding) before quantization; done once
    per model however many quantizations follow."""
    quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
    return Path(out)


def conv_nodes(model: onnx.ModelProto, weight_prefixes: Sequence[str]) -> list[str]:
    """Names of the Conv nodes whose weight initializer starts with one of the prefixes (the
    PyTorch parameter names survive export, node names do not say which layer they are)."""
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[1].startswith(tuple(weight_prefixes))]


def quantize_prepared(prepared: str | os.PathLike, int8_path: str | os.PathLike, calibration: np.ndarray,
                      op_types: Sequence[str] = ("Conv",), method: str = "minmax", exclude: Sequence[str] = (),
                      for_tensorrt: bool = False, cache: str | os.PathLike | None = None, threads: int = 0,
                      conv_outputs: bool = True, input_range: tuple[float, float] | None = None) -> Path:
    """Static INT8 in QDQ format: per-channel int8 weights; activations calibrated by `method`
    (minmax, entropy or percentile); the nodes in `exclude` stay FP32.

    `conv_outputs=False` leaves the outputs of the quantized ops FP32 (Q/DQ only where they read):
    OpenVINO still runs those convolutions in INT8 (FakeQuantize on input and weights is all it
    needs), ONNX Runtime does not (its QLinearConv fusion needs the output's Q; such a file ran
    slower than FP32 there). A conv output is FeatureNorm's input, which divides by a per-image
    std: one per-tensor range over every image quantizes a low-contrast image's output coarsely,
    and that error is normalised back up (docs/measured.md, "OpenVINO INT8"). `input_range`
    fixes the image input's range instead of calibrating it: the input is 8-bit pixels times the
    model's scale, so [0, 255 x scale] quantizes it without error where a calibrated maximum
    clips the brightest pixels.

    For ONNX Runtime on x86 the activations are asymmetric uint8 (U8S8): its VNNI kernels take
    u8 x s8, and on the development CPU U8S8 ran 2.5x faster than FP32 where S8S8 ran slower.
    TensorRT's explicit quantization needs symmetric int8 activations (`for_tensorrt=True`).
    Where this ONNX Runtime takes cached ranges we calibrate ourselves, with 2048 histogram bins:
    quantize_static's entropy calibrator keeps 128 bins, for which the KL search has a single
    candidate (the full range), so "entropy" would silently equal minmax. `cache` (a JSON path)
    keeps those ranges, so variants that differ only in `exclude` calibrate once. `threads`: the
    calibration session's (0: every core).
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown INT8 calibration {method!r}; known: {', '.join(CALIBRATIONS)}")

    extra: dict = {"ActivationSymmetric": for_tensorrt, "CalibTensorRangeSymmetric": for_tensorrt}
    if not conv_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(op_types)
    if input_range is not None:
        extra["TensorQuantOverrides"] = {INPUT: [{"rmin": np.array(input_range[0], np.float32),
                                                   "rmax": np.array(input_range[1], np.float32)}]}

    def write(out: Path, options: dict) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
            quantize_static(
                str(prepared), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=list(op_types),
                nodes_to_exclude=list(exclude), calibrate_method=CALIBRATIONS[method], extra_options=extra, **options,
            )

    if not takes_cached_ranges():  # an older ONNX Runtime: its own calibrators
        return atomic_write(int8_path, lambda out: write(out, {}))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(cache) if cache else Path(tmp) / "ranges.json"
        if not cache.is_file():
            calibrate(prepared, calibration, op_types, {method: cache}, for_tensorrt, threads)
        return atomic_write(int8_path, lambda out: write(out, {"calibration_cache_path": str(cache)}))


def takes_cached_ranges() -> bool:
    """Whether this ONNX Runtime's quantize_static reads ranges we calibrated (`calibrate`)."""
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def calibrate(prepared: str | os.PathLike, calibration: np.ndarray, op_types: Sequence[str],
              caches: Mapping[str, Path], symmetric: bool = False, threads: int = 0) -> None:
    """Activation ranges for each method in `caches` (method -> JSON path quantize_static reads),
    with 2048-bin histograms. Ranges are symmetric only for TensorRT: ReLU outputs are >= 0, and
    a symmetric uint8 range (the percentile calibrator's default) would leave half the codes unused.

    Asymmetric entropy and percentile read the same histograms, whose bounds are MinMax's ranges,
    so several methods cost one pass over the calibration images (a full INT8 search: one instead
    of three); MinMax alone runs its cheaper calibrator (it keeps only each tensor's extremes)."""
    from onnxruntime.quantization.calibrate import TensorsData
    from onnxruntime.quantization.quantize import save_tensors_data  # ONNX Runtime releases with `takes_cached_ranges`

    methods = list(caches)
    if symmetric or methods == ["minmax"]:  # symmetric percentile histograms |x|: no sharing
        for method in methods:
            _collect(prepared, calibration, op_types, method, symmetric, threads,
                     lambda c, m=method: save_tensors_data(c.compute_data(), caches[m]))
        return

    def compute(calibrator) -> None:
        collector = calibrator.collector
        collector.get_entropy_threshold = entropy_threshold  # the same thresholds, without Python loops
        for method in methods:
            if method == "minmax":
                data = TensorsData(CalibrationMethod.MinMax, {t: (np.array([h[2]], np.float32), np.array([h[3]], np.float32))
                                                                   for t, h in collector.histogram_dict.items()})
            else:
                collector.method = method
                data = TensorsData(CALIBRATIONS[method], collector.compute_collection_result())
            save_tensors_data(data, caches[method])

    _collect(prepared, calibration, op_types, "entropy", False, threads, compute)


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's KL-divergence threshold (HistogramCollector.get_entropy_threshold) with its
    per-bin Python sums done by numpy and scipy.stats.entropy's arithmetic without its per-call
    wrapper: the same integer distributions, the same smoothing, the same float32 KL, so the same
    threshold (a test holds it to ONNX Runtime's), in a fraction of the time: its loops took about
    11 s a model on one core (26 histograms, whatever the model's size), where the whole 7-candidate
    search of a demo model now takes 9-35 s."""
    from onnxruntime.quantization.quant_utils import smooth_distribution
    from scipy.special import rel_entr

    hist, edges, lowest, highest = histogram[0], histogram[1], histogram[2], histogram[3]
    bins, half = hist.size, num_quantized_bins // 2
    zero = bins // 2
    below = np.concatenate([[0], np.cumsum(hist)])  # below[k]: the count in bins < k (int64, exact)
    kl, thresholds = [], []
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, bins)
        thresholds.append((edges[start], edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += below[start]
        p[-1] += below[bins] - below[end]
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(1)
        quantized[-1] += sliced[body:].sum()
        norm = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(1)
        q = np.zeros(p.size, dtype=np.int64)  # each block gets its count / its non-zero bins, truncated
        q[:body] = np.repeat(np.where(norm != 0, quantized / np.maximum(norm, 1), 0).astype(np.int64), merged)
        p, q = smooth_distribution(p), smooth_distribution(q)
        kl.append(np.inf if p is None or q is None else
                  float(np.array(rel_entr(p / p.sum(), q / q.sum()).sum(), dtype=edges.dtype)))
    low, high = thresholds[int(np.argmin(kl))]
    return (lowest if low < lowest else low), (highest if high > highest else high)


def _collect(prepared: str | os.PathLike, calibration: np.ndarray, op_types: Sequence[str], method: str,
             symmetric: bool, threads: int, compute: Callable) -> None:
    """Run ONNX Runtime's calibrator for `method` over the images, then `compute(calibrator)`.
    Its own session takes every core and spins; ours takes `threads` and does not (two builds
    calibrating at once on 2 cores, calibration + quantization of an r20 model: 3.6 s with its
    session, 3.0 s with ours). create_calibrator has opened its own by then, so the graph is
    opened twice."""
    from onnxruntime.quantization.calibrate import create_calibrator

    extra = {"symmetric": symmetric, "num_bins": 2048, "num_quantized_bins": 128}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(Path(prepared), list(op_types), str(Path(tmp) / "augmented.onnx"),
                                       CALIBRATIONS[method], extra_options=extra)
        calibrator.infer_session = cpu_session(calibrator.augmented_model_path, threads, optimize=False)
        calibrator.collect_data(_Reader(calibration))
        compute(calibrator)


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calibration: np.ndarray,
                  op_types: Sequence[str] = ("Conv",), for_tensorrt: bool = False, method: str = "minmax",
                  **layout) -> Path:
    """Pre-process and quantize in one go, every op of `op_types` INT8 (see `quantize_prepared`,
    whose conv_outputs / input_range `layout` passes on)."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = prepare_for_quantization(fp32_path, Path(tmp) / "pre.onnx")
        return quantize_prepared(pre, int8_path, calibration, op_types, method, for_tensorrt=for_tensorrt, **layout)
