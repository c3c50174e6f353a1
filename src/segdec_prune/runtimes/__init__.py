"""Inference runtimes behind one small interface (see base.Runtime)."""

from .base import Runtime
from .torch_runtime import TorchRuntime

__all__ = ["Runtime", "TorchRuntime"]
