"""ONNX export, checked against PyTorch on real preprocessed images before anything uses it.

The torch.export-based exporter (`dynamo=True`), opset 18, a dynamic batch axis, named outputs
`decision` (logit [B,1]) and `segmentation` (logits [B,1,H/8,W/8]). The file is written only
after `onnx.checker` passes and ONNX Runtime reproduces PyTorch within tolerance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from .artifacts import atomic_write
from .model import SegDecNet

OPSET = 18
INPUT, OUTPUTS = "image", ("decision", "segmentation")
# FP32 vs FP32: differences come only from kernel order (ORT vs PyTorch). Logits are O(1..10).
ATOL, RTOL = 1e-3, 1e-3


class ExportCheckError(RuntimeError):
    """The exported graph does not reproduce PyTorch; the message gives the worst difference."""


@dataclass
class ExportReport:
    path: Path
    max_abs_diff_decision: float
    max_abs_diff_segmentation: float
    images: int
    atol: float = ATOL
    rtol: float = RTOL


def export_onnx(model: SegDecNet, height: int, width: int) -> onnx.ModelProto:
    """Export to an in-memory ONNX model (no file written yet)."""
    example = torch.rand(2, model.in_channels, height, width)  # batch 2: size-1 dims get specialised
    return export_module(model, example, OUTPUTS, dynamic_batch=True)


def export_module(module: torch.nn.Module, example: torch.Tensor, outputs: tuple[str, ...] = ("features",),
                  dynamic_batch: bool = False) -> onnx.ModelProto:
    """Any single-input module through the same exporter (the latency table exports blocks)."""
    module = module.cpu().eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT], output_names=list(outputs),
            dynamic_shapes=shapes, external_data=False, verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs optional torchvision ops, deprecations and optimiser steps; none concern us."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def compare(model: SegDecNet, proto: onnx.ModelProto, images: np.ndarray) -> tuple[float, float]:
    """Max |ORT - PyTorch| of (decision, segmentation) on `images`; raises past the tolerance."""
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = [t.numpy() for t in model.cpu().eval()(torch.from_numpy(images))]
    got = sess.run(list(OUTPUTS), {INPUT: images})
    diffs = []
    for name, r, g in zip(OUTPUTS, ref, got):
        if r.shape != g.shape:
            raise ExportCheckError(f"{name}: ONNX shape {g.shape} != PyTorch {r.shape}")
        diffs.append(float(np.max(np.abs(r - g))))
        if not np.allclose(g, r, atol=ATOL, rtol=RTOL):
            raise ExportCheckError(
                f"{name}: ONNX Runtime differs from PyTorch by up to {diffs[-1]:.2e} (tolerance atol {ATOL}, rtol {RTOL})"
            )
    return diffs[0], diffs[1]


def export_and_verify(model: SegDecNet, height: int, width: int, images: np.ndarray,
                      path: str | os.PathLike, metadata: dict[str, str] | None = None) -> ExportReport:
    """Export, check numerically on `images` (preprocessed, float32 [N,C,H,W]), then write
    (with `metadata` as the model's metadata_props)."""
    proto = export_onnx(model, height, width)
    d_dec, d_seg = compare(model, proto, np.ascontiguousarray(images, dtype=np.float32))
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save_model(proto, str(tmp)))
    return ExportReport(path, d_dec, d_seg, len(images))
