"""The one interface every runtime implements: a batch of images in, logits out."""

from __future__ import annotations

from importlib import import_module
from typing import Protocol

import numpy as np

# What a build can target: runtime -> precisions.
RUNTIMES = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
# Runtimes whose files are built on the CPU and timed there, beside each other (the ship table picks among them).
CPU_RUNTIMES = ("onnxruntime", "openvino")
# Runtimes that may be missing here (an extra not installed, no GPU); each module says why in `unavailable_reason()`.
OPTIONAL_RUNTIMES = ("openvino", "tensorrt")
# INT8 activation calibration methods (ONNX Runtime's quantization offers these).
INT8_CALIBRATIONS = ("minmax", "entropy", "percentile")
# OpenVINO's own INT8 candidates are "inputs:<calibration>": a QDQ file with Q/DQ only where convolutions read.
INPUTS_ONLY = "inputs:"
# Layers INT8 may keep in FP32, by the weight-name prefixes PyTorch gave them (they survive export).
FP32_GROUPS = {"first_conv": ("volume.0.",), "seg_head": ("seg_mask.",), "decision_head": ("extractor.",)}


def fp32_groups_of(candidate: str) -> tuple[str, ...]:
    """The layer groups one INT8 candidate keeps FP32: a group name, or several joined by "+"
    ("first_conv+seg_head+decision_head"). Raises ValueError naming an unknown group."""
    groups = tuple(g.strip() for g in candidate.split("+"))
    if unknown := [g for g in groups if g not in FP32_GROUPS]:
        raise ValueError(f"unknown FP32 layer group {', '.join(map(repr, unknown))} in {candidate!r}; "
                         f"groups: {', '.join(FP32_GROUPS)}, or several joined by '+'")
    return tuple(dict.fromkeys(groups))


def is_fp32_candidate(candidate: object) -> bool:
    """Whether `candidate` is a valid entry of `deploy.int8_fp32_candidates` (see `fp32_groups_of`)."""
    try:
        return isinstance(candidate, str) and bool(fp32_groups_of(candidate))
    except ValueError:
        return False


def unavailable_reason(runtime: str) -> str | None:
    """Why `runtime` cannot run on this machine, or None when it can (ONNX Runtime and torch always can).
    Imports only the runtime's own module, which itself imports its library lazily."""
    if runtime not in OPTIONAL_RUNTIMES:
        return None
    return import_module(f"{__package__}.{runtime}_runtime").unavailable_reason()


class Runtime(Protocol):
    """Load an artifact once; `predict` maps float32 images [B,C,H,W] in [0,1] to
    (decision logits [B], segmentation logits [B,1,H/8,W/8]) as numpy arrays."""

    name: str
    device: str

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
