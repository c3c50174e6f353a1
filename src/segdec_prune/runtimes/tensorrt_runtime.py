"""TensorRT 10 engines (FP16 from the FP32 ONNX file, INT8 from a symmetric Q/DQ ONNX file) and a runtime.

Importable without TensorRT or a GPU: `unavailable_reason()` says why the runtime cannot be
used here, and the pipeline records it as skipped. INT8 uses explicit quantization (the
symmetric Q/DQ model ONNX Runtime's static quantization writes), which TensorRT 10 and 11 both
build; FP16 uses `BuilderFlag.FP16`, which TensorRT 11 removed (hence the `tensorrt<11` pin).
Inference uses the v3 API: `set_input_shape`, `set_tensor_address`, `execute_async_v3`, with
buffers held by torch CUDA tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write
from ..export import INPUT, OUTPUTS

MAX_BATCH = 16  # the optimisation profile of the engines we build: batch 1..16


class TensorRTUnavailable(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else a one-line reason."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'segdec-prune[tensorrt]' on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available to torch"
    return None


def _trt():
    reason = unavailable_reason()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    return trt


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str,
                 input_shape: tuple[int, int, int], max_batch: int = MAX_BATCH, opt_batch: int = 1,
                 workspace_gib: float = 2.0) -> Path:
    """Build and serialize an engine. `precision`: fp16 (FP32 ONNX) or int8 (Q/DQ ONNX)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision in ("fp16", "int8"):
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no FP16 builder flag; use TensorRT 10")
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers left unquantized run in FP16
    if precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ quantization
    profile = builder.create_optimization_profile()
    c, h, w = input_shape
    profile.set_shape(INPUT, (1, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    return atomic_write(engine_path, lambda tmp: tmp.write_bytes(bytes(blob)))


class TensorRTRuntime:
    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, precision: str = "fp16") -> None:
        trt = _trt()
        import torch

        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.device = torch.cuda.get_device_name()
        self.precision = precision

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape(INPUT, tuple(x.shape))
        self.context.set_tensor_address(INPUT, x.data_ptr())
        outs = {}
        for name in OUTPUTS:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outs[OUTPUTS[0]][:, 0].cpu().numpy(), outs[OUTPUTS[1]].cpu().numpy()


def latency_timer(onnx_path: str | os.PathLike, precision: str, sample: np.ndarray, warmup: int):
    """An engine built at `precision` from a single-input ONNX graph (a latency-table block, a
    planned network; int8: a Q/DQ graph), warmed up; call the result with a run count to get the
    median batch-1 milliseconds. Untested here: no GPU."""
    import tempfile
    from types import SimpleNamespace

    trt = _trt()
    import torch

    from ..evaluation import latency_samples

    with tempfile.TemporaryDirectory() as tmp:
        engine_file = build_engine(onnx_path, Path(tmp) / "block.engine", precision, tuple(sample.shape[1:]), max_batch=1)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_file.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).cuda()
    context.set_input_shape(INPUT, tuple(x.shape))
    buffers = {INPUT: x}
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
    for name, buf in buffers.items():
        context.set_tensor_address(name, buf.data_ptr())
    stream = torch.cuda.current_stream()
    engine_graph = SimpleNamespace(predict=lambda _x: context.execute_async_v3(stream.cuda_stream))
    latency_samples(engine_graph, x, warmup, torch.cuda.synchronize)
    return lambda runs: float(np.median(latency_samples(engine_graph, x, runs, torch.cuda.synchronize)) * 1e3)
