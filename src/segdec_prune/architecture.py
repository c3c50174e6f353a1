"""What the config checks about the architecture, without importing torch (`model.py` re-exports
both): the decision head's input size and the ways to reset it after pruning."""

from __future__ import annotations

DECISION_RESETS = ("none", "fc", "head")


def decision_map_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the extractor output for an input of height x width."""
    h, w = height // 8, width // 8
    for _ in range(3):
        h, w = h // 2, w // 2
    return h, w
