"""Inference runtimes behind one small interface (see base.Runtime)."""

from .base import Runtime

__all__ = ["Runtime", "TorchRuntime"]


def __getattr__(name: str):
    """TorchRuntime on first use: importing `runtimes.base` (the config does) must not load torch."""
    if name == "TorchRuntime":
        from .torch_runtime import TorchRuntime

        return TorchRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
