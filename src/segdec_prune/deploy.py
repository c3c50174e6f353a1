"""Deployment artifacts of a run: verified ONNX files, INT8 ONNX files, TensorRT engines.

    models/{name}.pth -> onnx/{name}.onnx -> onnx/{name}_int8.onnx  (ONNX Runtime, CPU; U8S8; chosen on validation, int8.py)
                                          -> openvino/{name}_fp32.xml (+ .bin)  (OpenVINO, CPU)
                                          -> openvino/{name}_int8.xml  (NNCF or the QDQ file; chosen on validation)
                                          -> engines/{name}_fp16.engine     (TensorRT)
                                          -> engines/{name}_int8_qdq.onnx -> engines/{name}_int8.engine
                                             (symmetric S8S8 Q/DQ for TensorRT's explicit quantization)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .artifacts import atomic_write
from .checkpoint import DEFAULT_THRESHOLD, Checkpoint, InputSpec, Threshold, ValScores, load_checkpoint
from .export import ExportCheckError, export_and_verify
from .runtimes.base import RUNTIMES

if TYPE_CHECKING:
    from .data.dataset import KSDD2Dataset
    from .int8 import Int8Search

PREFIX = "segdec_prune."  # ONNX metadata keys
VAL_SCORES = "val_scores"  # the FP32 model's validation scores: in FP32 files only, never in an INT8 one


def model_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, baseline first (helper files such as the FN sparsity model excluded)."""
    paths = [p for p in (run_dir / "models").glob("*.pth") if not p.stem.endswith("_sparsity")]
    return sorted(paths, key=lambda p: (p.stem != "baseline_best", p.stem))


def onnx_path(run_dir: Path, name: str, precision: str = "fp32") -> Path:
    return run_dir / "onnx" / (f"{name}.onnx" if precision == "fp32" else f"{name}_{precision}.onnx")


def engine_path(run_dir: Path, name: str, precision: str) -> Path:
    return run_dir / "engines" / f"{name}_{precision}.engine"


def openvino_path(run_dir: Path, name: str, precision: str) -> Path:
    return run_dir / "openvino" / f"{name}_{precision}.xml"


def artifact_path(run_dir: Path, name: str, runtime: str, precision: str) -> Path:
    """Where a build of `runtime` and `precision` writes its file (the torch "artifact" is the checkpoint)."""
    if runtime == "torch":
        return run_dir / "models" / f"{name}.pth"
    if runtime == "onnxruntime":
        return onnx_path(run_dir, name, precision)
    return openvino_path(run_dir, name, precision) if runtime == "openvino" else engine_path(run_dir, name, precision)


def export_checkpoint(ckpt: Checkpoint, name: str, images: np.ndarray, out: Path, threshold: Threshold | None = None):
    """Export + verify one model; records its input spec, data root and decision threshold
    (`threshold`, default the checkpoint's) in the ONNX metadata."""
    spec = ckpt.input_spec
    meta = {"name": name, "input_spec": json.dumps(asdict(spec)), "data_root": ckpt.data_root}
    if threshold := threshold or ckpt.threshold:
        meta["threshold"] = json.dumps(threshold.to_dict())
    if scores := ckpt.val_scores:  # the INT8 builds' FP32 reference (int8.py), for one pass fewer each
        meta[VAL_SCORES] = json.dumps(scores.to_dict())
    meta = {PREFIX + k: v for k, v in meta.items()}
    return export_and_verify(ckpt.model, spec.height, spec.width, images, out, meta)


@dataclass
class ModelInfo:
    """What a model file says about itself: input spec, training data, decision threshold."""

    spec: InputSpec
    data_root: str = ""
    threshold: Threshold | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # everything else recorded (e.g. the INT8 choice)

    @property
    def decision_threshold(self) -> float:
        return self.threshold.value if self.threshold else DEFAULT_THRESHOLD

    @property
    def threshold_source(self) -> str:
        return self.threshold.source if self.threshold else f"default {DEFAULT_THRESHOLD} (none stored)"


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


def onnx_info(path: str | Path) -> ModelInfo:
    """What export (and the INT8 build) recorded in the ONNX metadata."""
    return _info(path, _props(path))


def _props(path: str | Path) -> dict[str, str]:
    """Our ONNX metadata entries, without the key prefix."""
    return {p.key[len(PREFIX):]: p.value for p in load_onnx(path).metadata_props if p.key.startswith(PREFIX)}


def _info(path: str | Path, props: dict[str, str]) -> ModelInfo:
    if "input_spec" not in props:
        raise ModelFileError(f"{path} was not exported by segdec-prune (no input spec in its metadata)")
    meta = {k: _json_or_text(v) for k, v in props.items() if k not in ("input_spec", "data_root", "threshold")}
    return ModelInfo(InputSpec.from_dict(json.loads(props["input_spec"])), props.get("data_root", ""),
                     Threshold.from_dict(_json_or_text(props.get("threshold", "null"))), meta)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def stored_val_scores(info: ModelInfo, validation: "KSDD2Dataset") -> np.ndarray | None:
    """The scores training recorded for this model on `validation`, if they are of these very
    images (same fingerprint); else None, and the caller runs the pass itself."""
    scores = ValScores.from_dict(info.metadata.get(VAL_SCORES))
    if scores is None or scores.fingerprint != validation.fingerprint or len(scores.scores) != len(validation):
        return None
    return np.asarray(scores.scores, dtype=np.float32)


def checkpoint_info(ckpt: Checkpoint) -> ModelInfo:
    return ModelInfo(ckpt.input_spec, ckpt.data_root, ckpt.threshold, {"name": ckpt.metadata.get("name")})


def check_runtime(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if precision not in RUNTIMES[runtime]:
        raise ValueError(f"{runtime} builds {', '.join(RUNTIMES[runtime])}, not {precision!r}")


def build_artifact(run_dir: Path, name: str, runtime: str, precision: str, calibration: np.ndarray | None,
                   search: "Int8Search | None" = None, validation: "KSDD2Dataset | None" = None,
                   on_candidate: Callable[[str], None] | None = None) -> Path:
    """Build one model's artifact for a runtime and precision from its verified ONNX file.

    ONNX Runtime and OpenVINO INT8 search how to quantize and which layers stay FP32 on
    `validation` (int8.py); TensorRT INT8 uses the search's first calibration method, all
    convolutions INT8."""
    from .int8 import Int8Search

    check_runtime(runtime, precision)
    search = search or Int8Search()
    fp32 = onnx_path(run_dir, name)
    if not fp32.is_file():
        raise FileNotFoundError(f"no ONNX file {fp32}; run `segdec-prune export --config ...` first")
    info = onnx_info(fp32)
    spec = info.spec
    if precision == "int8" and calibration is None:
        raise FileNotFoundError("INT8 needs the calibration set; run `segdec-prune calibrate --config ...` first")
    if runtime == "onnxruntime":
        from .runtimes.onnxruntime_runtime import OnnxRuntime

        out = onnx_path(run_dir, name, precision)
        if precision == "int8":
            if validation is None:
                raise ValueError("ONNX Runtime INT8 is chosen on the validation split: pass it")
            build_int8(fp32, out, calibration, validation, search, on_candidate,
                       stored_val_scores(info, validation))
        OnnxRuntime(out, threads=1)  # it must load, or it does not count as built
        return out
    if runtime == "openvino":
        return build_openvino(run_dir, name, precision, calibration, validation, search, on_candidate)
    from .runtimes.onnxruntime_runtime import quantize_int8
    from .runtimes.tensorrt_runtime import TensorRTUnavailable, build_engine, unavailable_reason

    if reason := unavailable_reason():
        raise TensorRTUnavailable(f"tensorrt skipped: {reason}")
    source = fp32
    if precision == "int8":
        source = engine_path(run_dir, name, "int8_qdq").with_suffix(".onnx")
        quantize_int8(fp32, source, calibration, search.op_types, for_tensorrt=True, method=search.calibrations[0])
    return build_engine(source, engine_path(run_dir, name, precision), precision, (spec.channels, spec.height, spec.width))


def build_int8(fp32: Path, out: Path, calibration: np.ndarray, validation: "KSDD2Dataset", search: "Int8Search",
               on_candidate: Callable[[str], None] | None = None, reference: np.ndarray | None = None) -> Path:
    """The validation-chosen INT8 model, with the FP32 file's metadata plus the choice and its own
    threshold. `reference`: the FP32 model's validation scores when already known."""
    from .int8 import choose_int8

    proto, choice, threshold = choose_int8(fp32, calibration, validation, search, on_candidate, reference)
    props = {p.key: p.value for p in load_onnx(fp32).metadata_props if p.key != PREFIX + VAL_SCORES}
    props.update({PREFIX + "threshold": json.dumps(threshold.to_dict()), PREFIX + "int8": json.dumps(choice.to_dict())})
    onnx.helper.set_model_props(proto, props)
    return atomic_write(out, lambda tmp: onnx.save_model(proto, str(tmp)))


def build_openvino(run_dir: Path, name: str, precision: str, calibration: np.ndarray | None,
                   validation: "KSDD2Dataset | None", search: "Int8Search",
                   on_candidate: Callable[[str], None] | None = None) -> Path:
    """The OpenVINO IR of one model, converted from its verified ONNX file (FP32), or the
    validation-chosen INT8 IR (int8.choose_openvino_int8; ONNX Runtime's INT8 file is one
    candidate when it exists), carrying the ONNX metadata (plus the INT8 choice and threshold)."""
    from .runtimes.openvino_runtime import OpenVinoRuntime, OpenVinoUnavailable, convert, save_ir, unavailable_reason

    if reason := unavailable_reason():
        raise OpenVinoUnavailable(f"openvino skipped: {reason}")
    fp32 = onnx_path(run_dir, name)
    props = _props(fp32)
    model = convert(fp32)
    if precision == "int8":
        from .int8 import choose_openvino_int8

        if validation is None:
            raise ValueError("OpenVINO INT8 is chosen on the validation split: pass it")
        info = _info(fp32, props)
        model, choice, threshold = choose_openvino_int8(model, calibration, validation, onnx_path(run_dir, name, "int8"),
                                                        search, on_candidate, stored_val_scores(info, validation),
                                                        fp32, info.spec.pixel_range)
        props.update(threshold=json.dumps(threshold.to_dict()), int8=json.dumps(choice.to_dict()))
        props.pop(VAL_SCORES, None)
    elif (diff := _openvino_diff(model, fp32, _info(fp32, props))) > OPENVINO_ATOL:  # FP32: the same network as the verified ONNX file
        raise ExportCheckError(f"{name}: OpenVINO FP32 differs from ONNX Runtime by up to {diff:.2e} "
                               f"(tolerance {OPENVINO_ATOL:g}); not written")
    out = save_ir(model, openvino_path(run_dir, name, precision), props)
    OpenVinoRuntime(out, threads=1)  # it must load, or it does not count as built
    return out


OPENVINO_ATOL = 1e-4  # FP32 vs FP32: only kernel order differs (measured on the demo: 4e-6 to 4e-5)


def _openvino_diff(model, fp32: Path, info: ModelInfo) -> float:
    """Max |OpenVINO - ONNX Runtime| over both outputs on the export check's images (random ones
    when the model's data folder is not on this machine)."""
    from .runtimes.onnxruntime_runtime import OnnxRuntime
    from .runtimes.openvino_runtime import OpenVinoRuntime

    try:
        images = check_images(info.data_root, info.spec)
    except Exception:  # the data moved or is not here: numerics do not need real images
        images = np.random.default_rng(0).random((4, info.spec.channels, info.spec.height, info.spec.width),
                                                 dtype=np.float32)
    got, ref = OpenVinoRuntime(model, threads=1).predict(images), OnnxRuntime(fp32, threads=1).predict(images)
    return float(max(np.abs(g - r).max() for g, r in zip(got, ref)))


def ir_info(path: str | Path) -> ModelInfo:
    """What the OpenVINO build recorded in the IR's rt_info (the ONNX metadata, plus the INT8 choice)."""
    from .runtimes.openvino_runtime import read_ir, read_metadata

    try:
        props = read_metadata(read_ir(path))
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return _info(path, props)


def open_runtime(path: str | Path, threads: int = 0) -> tuple[Any, ModelInfo]:
    """A runtime for any artifact: .pth (PyTorch), .onnx (ONNX Runtime), .xml (OpenVINO IR),
    .engine (TensorRT), and what the file says about itself."""
    path = Path(path)
    if path.suffix == ".xml":
        from .runtimes.openvino_runtime import OpenVinoRuntime, unavailable_reason

        if reason := unavailable_reason():
            raise ModelFileError(f"cannot run {path}: {reason}")
        info = ir_info(path)
        try:
            return OpenVinoRuntime(path, threads, "int8" if "int8" in info.metadata else "fp32"), info
        except Exception as exc:
            raise ModelFileError(f"OpenVINO cannot compile {path}: {_first(exc)}") from None
    if path.suffix == ".onnx":
        from .runtimes.onnxruntime_runtime import OnnxRuntime

        info = onnx_info(path)
        int8 = path.stem.endswith("_int8") or "int8" in info.metadata
        try:
            return OnnxRuntime(path, threads, "int8" if int8 else "fp32"), info
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
        return TensorRTRuntime(path, path.stem.rsplit("_", 1)[1]), onnx_info(source)
    import torch

    from .runtimes import TorchRuntime
    from .training import resolve_device

    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    return TorchRuntime(ckpt.model, resolve_device("auto")), checkpoint_info(ckpt)


def check_images(root: str | Path, spec: InputSpec, n: int = 8) -> np.ndarray:
    """The first n test images, preprocessed as in training: the export check's inputs."""
    from .data.ksdd2 import preprocess, scan_split

    pre = spec.preprocessing()
    refs = scan_split(root, "test")[:n]
    return np.stack([preprocess(r, pre)["image"].transpose(2, 0, 1) for r in refs]).astype(np.float32) / 255.0
