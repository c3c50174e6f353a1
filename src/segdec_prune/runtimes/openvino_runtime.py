"""OpenVINO on the CPU: an FP32 IR converted from the verified ONNX file, and INT8 IRs.

INT8 comes two ways, both scored on the validation split by `int8.choose_openvino_int8`:
NNCF's post-training quantization of the FP32 IR (`quantize_nncf`; it also quantizes the
FeatureNorm arithmetic and the pooling, and may keep some convolutions FP32), and OpenVINO
reading the ONNX Runtime QDQ model as it is (`convert`), which OpenVINO runs with its own
INT8 kernels. Importable without OpenVINO: `unavailable_reason()` says why it cannot run, and
the pipeline records it as skipped, like TensorRT.

The metadata export wrote into the ONNX file (input spec, threshold, INT8 choice) travels in
the IR's rt_info under `segdec_prune`, so an `.xml` describes itself as an `.onnx` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..artifacts import UMASK, disk_fault, write_error
from ..export import OUTPUTS

RT_INFO = "segdec_prune"  # the rt_info section our metadata lives in


class OpenVinoUnavailable(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """None when OpenVINO imports and NNCF is installed, else a one-line reason. NNCF is only
    looked up: importing it takes seconds, and only an NNCF quantization needs it."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed (pip install 'segdec-prune[openvino]')"
    if importlib.util.find_spec("nncf") is None:
        return "NNCF is not installed (pip install 'segdec-prune[openvino]')"
    return None


def _ov():
    if reason := unavailable_reason():
        raise OpenVinoUnavailable(reason)
    import openvino

    return openvino


def compile_config(threads: int) -> dict[str, Any]:
    """Fixed threads, the latency hint, FP32 arithmetic where a layer is not INT8 (the CPU plugin
    would otherwise pick bf16 on CPUs that have it), and no pinning: several compiled models
    share the cores in the interleaved latency runs, as ONNX Runtime sessions do without spinning."""
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False,
           "NUM_STREAMS": 1}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    return cfg


def convert(onnx_path: str | os.PathLike):
    """The ONNX file as an OpenVINO model (FP32 graphs and QDQ INT8 graphs alike): the graph
    `openvino.convert_model` gives (the ONNX frontend, then its two graph passes), read through
    the runtime's C++ frontend. The Python converter also sends usage telemetry, and each event
    forks the calling process to try the network: a pipeline worker (about 1 GB) forked about 20
    times per model read, which slowed both workers in the demo's build stages."""
    ov = _ov()
    try:
        from openvino._offline_transformations import (apply_moc_transformations,
                                                        compress_quantize_weights_transformation)
    except ImportError:  # a release without the passes under this name: the converter itself
        return ov.convert_model(str(onnx_path))
    model = ov.Core().read_model(str(onnx_path))
    apply_moc_transformations(model, cf=False, smart_reshape=True)  # as convert_model does
    compress_quantize_weights_transformation(model)
    return model


def save_ir(model, xml_path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write model.xml + model.bin with `metadata` in rt_info, weights kept FP32; both files are
    written beside their targets and renamed into place, the .bin first (the .xml is what a
    reader opens, so it never finds a new .xml with an old or half-written .bin)."""
    ov = _ov()
    xml = Path(xml_path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO, key])
    code = None
    with tempfile.TemporaryDirectory(prefix=f".{xml.stem}.", dir=xml.parent) as tmp:
        tmp_xml = Path(tmp) / "model.xml"
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            for src, dst in ((tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin")), (tmp_xml, xml)):
                os.chmod(src, 0o666 & ~UMASK)
                os.replace(src, dst)
        except Exception as exc:
            if (code := disk_fault(exc, Path(tmp))) is None:
                raise
    if code is not None:  # OpenVINO says "iostream error" for a full disk; the user gets the reason
        raise write_error(xml, code)
    return xml


def read_metadata(model) -> dict[str, str]:
    """The segdec_prune section of a model's rt_info ({} when it has none: not ours)."""
    info = model.get_rt_info()
    if RT_INFO not in info:
        return {}
    return {k: str(v.value if hasattr(v, "value") else v) for k, v in info[RT_INFO].items()}


def read_ir(xml_path: str | os.PathLike):
    """The IR at `xml_path` (its .bin beside it), or ValueError saying why it cannot be read."""
    ov = _ov()
    xml = Path(xml_path)
    if not xml.is_file():
        raise ValueError(f"OpenVINO IR not found: {xml}")
    if not xml.with_suffix(".bin").is_file():
        raise ValueError(f"{xml}: its weights file {xml.with_suffix('.bin').name} is missing")
    try:
        return ov.Core().read_model(str(xml))
    except Exception as exc:  # a truncated .bin, a damaged .xml
        lines = [ln for ln in str(exc).strip().splitlines() if not ln.startswith(("Exception from", "Check "))]
        why = (lines or [type(exc).__name__])[-1].strip()
        raise ValueError(f"OpenVINO cannot read {xml}: truncated or damaged .xml/.bin ({why[:200]})") from None


def conv_names(model, weight_prefixes: Sequence[str]) -> list[str]:
    """Friendly names of the convolutions whose weight constant starts with one of the prefixes
    (OpenVINO keeps the ONNX initializer names, which are PyTorch's parameter names)."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        w = op.input_value(1).get_node()
        while w.get_type_name() != "Constant" and w.get_input_size():  # through a Convert / FakeQuantize
            w = w.input_value(0).get_node()
        if w.get_friendly_name().startswith(tuple(weight_prefixes)):
            names.append(op.get_friendly_name())
    return names


def quantize_nncf(model, calibration: np.ndarray, fp32_nodes: Sequence[str] = ()):
    """NNCF post-training INT8 (its CPU preset), calibrated on every calibration image, with
    `fp32_nodes` (friendly names) left FP32. Returns a new model; `model` is unchanged."""
    import nncf

    data = nncf.Dataset([np.ascontiguousarray(calibration[i : i + 1], dtype=np.float32)
                         for i in range(len(calibration))])
    scope = nncf.IgnoredScope(names=list(fp32_nodes)) if fp32_nodes else None
    with contextlib.redirect_stdout(io.StringIO()), _quiet_nncf():
        return nncf.quantize(model.clone(), data, subset_size=len(calibration),
                             target_device=nncf.TargetDevice.CPU, **({"ignored_scope": scope} if scope else {}))


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs a line per node it leaves alone and draws progress bars; a pipeline step should not."""
    import logging

    import nncf

    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.suppress(AttributeError):
            nncf.set_log_level(logging.ERROR)
        yield
    finally:
        log.setLevel(level)


def static_shape(model) -> tuple[int, ...] | None:
    """The input's (C, H, W) when only the batch may vary (our exports), else None."""
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or len(shape) != 4 or any(d.is_dynamic for d in list(shape)[1:]):
        return None
    return tuple(d.get_length() for d in list(shape)[1:])


class OpenVinoRuntime:
    """A model compiled once per batch size, with that batch fixed: on the demo models static
    shapes ran 1.1-1.6x faster at batch 1 and 1.0-1.5x at batch 8 than the dynamic-batch graph,
    INT8 the most (docs/measured.md). A batch smaller than one already compiled (a pass's last,
    partial batch) is padded to it: compiling again costs more than a few extra images, and
    every image is computed on its own (FeatureNorm is per sample)."""

    name = "openvino"

    def __init__(self, model_or_path, threads: int = 0, precision: str = "fp32") -> None:
        self.core = _ov().Core()
        self.model = read_ir(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
        self.shape = static_shape(self.model)
        self.config = compile_config(threads)
        self.compiled: dict[int, tuple] = {}  # batch (0: the graph as given) -> (infer request, outputs)
        self.device = "cpu"
        self.precision = precision
        self.threads = threads
        self._request(1)  # batch 1 (latency, predict) compiles now: an IR that cannot compile fails here

    def _request(self, batch: int) -> tuple:
        key = batch if self.shape else 0
        if key not in self.compiled:
            model = self.model
            if self.shape:
                model = self.model.clone()
                model.reshape([batch, *self.shape])
            # No CACHE_DIR: compiling a demo model takes 0.3 s; the cache's first write took 9 s (16 MB blob).
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.compiled[key] = compiled.create_infer_request(), [compiled.output(n) for n in OUTPUTS]
        return self.compiled[key]

    def _batch_for(self, n: int) -> int:
        """The batch `n` images run at: 1 alone, else the smallest compiled batch that holds them."""
        if n == 1 or not self.shape:
            return n
        return min((b for b in self.compiled if b >= n), default=n)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(images, dtype=np.float32)
        n = len(x)
        size = self._batch_for(n)
        if size > n:
            x = np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
        request, outputs = self._request(size)
        result = request.infer({0: x})
        dec, seg = (np.array(result[o][:n]) for o in outputs)  # copies: the request reuses its buffers
        return dec[:, 0], seg


def latency_timer(path: str | os.PathLike, sample: np.ndarray, threads: int, warmup: int) -> Callable[[int], float]:
    """A warmed-up compiled model for any single-input ONNX graph (a latency-table block);
    call the result with a run count to get the median batch-1 milliseconds."""
    from ..evaluation import latency_samples

    x = np.ascontiguousarray(sample, dtype=np.float32)
    model = convert(path)
    model.reshape(list(x.shape))  # static, as OpenVinoRuntime compiles it
    compiled = _ov().Core().compile_model(model, "CPU", compile_config(threads))
    request = compiled.create_infer_request()
    graph = SimpleNamespace(predict=lambda batch: request.infer({0: batch}))
    latency_samples(graph, x, warmup)

    def median_ms(runs: int) -> float:
        latency_samples(graph, x, 1)
        return float(np.median(latency_samples(graph, x, runs)) * 1e3)

    return median_ms
