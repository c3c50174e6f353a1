"""Checkpoints: one plain dict (widths, input spec, state_dict, metadata), no pickled classes.

Loaded with `torch.load(weights_only=True)`, so a checkpoint from anywhere is safe to open, and
a pruned model needs nothing but this package to rebuild.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import save_torch
from .data.ksdd2 import Preprocessing
from .errors import CheckpointError
from .model import SegDecNet, Widths, widths_from_state_dict

FORMAT = "segdec-prune/checkpoint"
FORMAT_VERSION = 1
DEFAULT_THRESHOLD = 0.5  # for files that store no validation threshold (said so wherever it is used)


@dataclass
class InputSpec:
    """What the model expects: the preprocessing that produced its training data."""

    channels: int = 3
    height: int = 640
    width: int = 232
    color: str = "bgr"  # OpenCV's channel order
    scale: float = 1 / 255
    dilate: int = 15

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def pixel_range(self) -> tuple[float, float]:
        """The values the model's input takes: 8-bit pixels times `scale` (INT8 quantizes it on this grid)."""
        return 0.0, 255 * self.scale

    def preprocessing(self) -> Preprocessing:
        """The data preprocessing that reproduces this model's training inputs."""
        return Preprocessing(height=self.height, width=self.width, channels=self.channels, dilate=self.dilate)


@dataclass(frozen=True)
class Threshold:
    """A model's operating point: the score above which an image is called defective.

    Chosen where model selection happens, on the validation split (best F1 there), so the test
    split never sets it; stored in the checkpoint, the ONNX metadata and the model card."""

    value: float
    source: str = "validation best-F1"
    f1: float | None = None  # the validation F1 at that threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Threshold | None":
        if not isinstance(d, dict) or not isinstance(d.get("value"), (int, float)):
            return None
        return cls(float(d["value"]), str(d.get("source", "")), d.get("f1"))


@dataclass(frozen=True)
class ValScores:
    """A model's decision scores on the validation split where it was selected, and that split's
    fingerprint (`KSDD2Dataset.fingerprint`): the INT8 searches take them as the FP32 reference
    instead of one more validation pass per build, but only for the very same images."""

    fingerprint: str
    scores: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ValScores | None":
        if not isinstance(d, dict) or not isinstance(d.get("fingerprint"), str) or not isinstance(d.get("scores"), list):
            return None
        return cls(d["fingerprint"], tuple(float(x) for x in d["scores"]))


@dataclass
class Checkpoint:
    model: SegDecNet
    input_spec: InputSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> Threshold | None:
        """The decision threshold train/prune chose on the validation split (None: not stored)."""
        return Threshold.from_dict(self.metadata.get("threshold"))

    @property
    def val_scores(self) -> ValScores | None:
        """The validation scores train/prune computed for these weights (None: not stored)."""
        return ValScores.from_dict(self.metadata.get("val_scores"))

    @property
    def data_root(self) -> str:
        """The data set it was trained on, as its config recorded it ("" when unknown)."""
        return self.metadata.get("config", {}).get("data", {}).get("root", "")


def save_checkpoint(
    path: str | os.PathLike, model: SegDecNet, input_spec: InputSpec, metadata: dict | None = None
) -> Path:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": "SegDecNet",
        "in_channels": model.in_channels,
        "widths": model.widths.to_dict(),
        "input_spec": asdict(input_spec),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata or {},
    }
    return save_torch(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model. Also accepts a bare state_dict from the paper's reference code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickled classes, not a torch file ...
        raise CheckpointError(f"cannot read {path}: {_why_unreadable(exc)}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a checkpoint dict")
    if raw.get("format") == FORMAT:
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path} has format version {raw['format_version']}; upgrade segdec-prune")
        state, spec, meta = raw["state_dict"], InputSpec.from_dict(raw["input_spec"]), raw["metadata"]
        try:
            widths = Widths.from_dict(raw["widths"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad widths record: {exc}") from None
        in_channels = int(raw["in_channels"])
    elif all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, meta = raw, {"source": "bare state_dict"}
        try:
            widths = widths_from_state_dict(state)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        in_channels = state["volume.0.0.weight"].shape[1]
        spec = InputSpec(channels=in_channels)
    else:
        raise CheckpointError(f"{path} is not a segdec-prune checkpoint (no '{FORMAT}' format tag)")
    model = SegDecNet(in_channels=in_channels, widths=widths)
    _check_shapes(model, state, path)
    model.load_state_dict(state)
    return Checkpoint(model=model.to(map_location), input_spec=spec, metadata=dict(meta))


def _why_unreadable(exc: Exception) -> str:
    """torch.load's error in one line, without its advice to load unsafely."""
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        return ("it is damaged or holds pickled Python objects, which a weights-only load refuses (running them "
                "could execute code from the file); a segdec-prune checkpoint holds tensors and plain values only")
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(exc).__name__
    return f"not a torch checkpoint, or truncated/damaged ({first})"


def _check_shapes(model: SegDecNet, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:5]))
        raise CheckpointError(f"{path} does not match SegDecNet{model.widths}: " + ", ".join(parts))
