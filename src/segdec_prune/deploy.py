"""Deployment artifacts of a run: verified ONNX files, INT8 ONNX files, TensorRT engines.

    models/{name}.pth -> onnx/{name}.onnx -> onnx/{name}_int8.onnx        (ONNX Runtime, CPU; U8S8)
                                          -> engines/{name}_fp16.engine     (TensorRT)
                                          -> engines/{name}_int8_qdq.onnx -> engines/{name}_int8.engine
                                             (symmetric S8S8 Q/DQ for TensorRT's explicit quantization)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from .checkpoint import Checkpoint, InputSpec, load_checkpoint
from .export import export_and_verify
from .runtimes.base import RUNTIMES


def model_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, baseline first (helper files such as the FN sparsity model excluded)."""
    paths = [p for p in (run_dir / "models").glob("*.pth") if not p.stem.endswith("_sparsity")]
    return sorted(paths, key=lambda p: (p.stem != "baseline_best", p.stem))


def onnx_path(run_dir: Path, name: str, precision: str = "fp32") -> Path:
    return run_dir / "onnx" / (f"{name}.onnx" if precision == "fp32" else f"{name}_{precision}.onnx")


def engine_path(run_dir: Path, name: str, precision: str) -> Path:
    return run_dir / "engines" / f"{name}_{precision}.engine"


def export_checkpoint(ckpt: Checkpoint, name: str, images: np.ndarray, out: Path):
    """Export + verify one model; records its input spec in the ONNX metadata."""
    spec = ckpt.input_spec
    meta = {"segdec_prune.name": name, "segdec_prune.input_spec": json.dumps(asdict(spec)),
            "segdec_prune.data_root": ckpt.data_root}
    return export_and_verify(ckpt.model, spec.height, spec.width, images, out, meta)


class ModelFileError(ValueError):
    """A model file (.onnx, .engine) cannot be used; the message names it and says why."""


def _first(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The ONNX model at `path`, or one clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError ...
        raise ModelFileError(f"cannot read {path}: not an ONNX model, or truncated/damaged ({_first(exc)})") from None


def onnx_input_spec(path: str | Path) -> tuple[InputSpec, str]:
    """The input spec and data root recorded at export."""
    props = {p.key: p.value for p in load_onnx(path).metadata_props}
    if "segdec_prune.input_spec" not in props:
        raise ValueError(f"{path} was not exported by segdec-prune (no input spec in its metadata)")
    return InputSpec.from_dict(json.loads(props["segdec_prune.input_spec"])), props.get("segdec_prune.data_root", "")


def check_runtime(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if precision not in RUNTIMES[runtime]:
        raise ValueError(f"{runtime} builds {', '.join(RUNTIMES[runtime])}, not {precision!r}")


def build_artifact(run_dir: Path, name: str, runtime: str, precision: str, calibration: np.ndarray | None,
                   int8_op_types: Sequence[str] = ("Conv",)) -> Path:
    """Build one model's artifact for a runtime and precision from its verified ONNX file."""
    check_runtime(runtime, precision)
    fp32 = onnx_path(run_dir, name)
    if not fp32.is_file():
        raise FileNotFoundError(f"no ONNX file {fp32}; run `segdec-prune export --config ...` first")
    spec, _ = onnx_input_spec(fp32)
    if precision == "int8":
        if calibration is None:
            raise FileNotFoundError("INT8 needs the calibration set; run `segdec-prune calibrate --config ...` first")
        from .runtimes.onnxruntime_runtime import quantize_int8

        q = onnx_path(run_dir, name, "int8") if runtime == "onnxruntime" else engine_path(run_dir, name, "int8_qdq")
        quantize_int8(fp32, q.with_suffix(".onnx"), calibration, int8_op_types, for_tensorrt=runtime == "tensorrt")
    if runtime == "onnxruntime":
        from .runtimes.onnxruntime_runtime import OnnxRuntime

        out = onnx_path(run_dir, name, precision)
        OnnxRuntime(out, threads=1)  # it must load, or it does not count as built
        return out
    from .runtimes.tensorrt_runtime import build_engine

    source = engine_path(run_dir, name, "int8_qdq").with_suffix(".onnx") if precision == "int8" else fp32
    return build_engine(source, engine_path(run_dir, name, precision), precision, (spec.channels, spec.height, spec.width))


def build_run(run_dir: Path, runtime: str, precision: str, calibration: np.ndarray | None,
              int8_op_types: Sequence[str] = ("Conv",), on_model: Callable[[str, Path], None] | None = None) -> list[Path]:
    check_runtime(runtime, precision)
    if runtime == "tensorrt":
        from .runtimes.tensorrt_runtime import TensorRTUnavailable, unavailable_reason

        if reason := unavailable_reason():
            raise TensorRTUnavailable(f"tensorrt skipped: {reason}")
    built = []
    for p in model_paths(run_dir):
        built.append(build_artifact(run_dir, p.stem, runtime, precision, calibration, int8_op_types))
        if on_model:
            on_model(p.stem, built[-1])
    return built


def open_runtime(path: str | Path, threads: int = 0):
    """A runtime for any artifact: .pth (PyTorch), .onnx (ONNX Runtime), .engine (TensorRT)."""
    path = Path(path)
    if path.suffix == ".onnx":
        from .runtimes.onnxruntime_runtime import OnnxRuntime

        spec, root = onnx_input_spec(path)
        try:
            return OnnxRuntime(path, threads, "int8" if path.stem.endswith("_int8") else "fp32"), spec, root
        except Exception as exc:  # a graph ONNX Runtime rejects
            raise ModelFileError(f"ONNX Runtime cannot load {path}: {_first(exc)}") from None
    if path.suffix == ".engine":
        from .runtimes.tensorrt_runtime import TensorRTRuntime, unavailable_reason

        if reason := unavailable_reason():
            raise ModelFileError(f"cannot run {path}: {reason}")
        name = path.stem.rsplit("_", 1)[0]
        source = path.parent.parent / "onnx" / f"{name}.onnx"
        if not source.is_file():
            raise ModelFileError(f"{path}: its input spec is read from {source}, which is missing")
        spec, root = onnx_input_spec(source)
        return TensorRTRuntime(path, path.stem.rsplit("_", 1)[1]), spec, root
    import torch

    from .runtimes import TorchRuntime
    from .training import resolve_device

    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    return TorchRuntime(ckpt.model, resolve_device("auto")), ckpt.input_spec, ckpt.data_root


def check_images(root: str | Path, spec: InputSpec, n: int = 8) -> np.ndarray:
    """The first n test images, preprocessed as in training: the export check's inputs."""
    from .data.ksdd2 import preprocess, scan_split

    pre = spec.preprocessing()
    refs = scan_split(root, "test")[:n]
    return np.stack([preprocess(r, pre)["image"].transpose(2, 0, 1) for r in refs]).astype(np.float32) / 255.0
