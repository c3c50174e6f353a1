"""What pruning computes from the unpruned model and the calibration batches alone: the
criterion's channel scores and the teacher's seg maps the refit reproduces. Both are the same for
every ratio and budget a method prunes one model to, so they are computed once per model.

Why: a run prunes one baseline 19 times, and each prune step used to score it again (C4 on the
demo: 5.9 s a time at one thread, four steps) and run it over the calibration batches again for
the refit (1.7 s, 19 steps); at 640x232 both are 13x the pixels. Nothing changes but when they
are computed: the same function of the same model and batches.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..model import SegDecNet
from .criteria import Batch
from .methods import Method
from .prune import channel_scores
from .refit import seg_targets


@dataclass
class _Entry:
    batches: Sequence[Batch]
    scores: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)
    seg_targets: list[torch.Tensor] | None = None


class SourceMemo:
    """Per model object (an entry lives as long as its model; a model trained or pruned in place
    afterwards must not be given again) and per batches object (other batches: computed afresh)."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[SegDecNet, _Entry] = weakref.WeakKeyDictionary()
        self.computed = 0  # how many times a score or a map was computed rather than reused (tests count it)

    def _entry(self, model: SegDecNet, batches: Sequence[Batch]) -> _Entry:
        entry = self._entries.get(model)
        if entry is None or entry.batches is not batches:
            entry = self._entries[model] = _Entry(batches)
        return entry

    def scores(self, model: SegDecNet, method: Method, batches: Sequence[Batch], include_extractor: bool = False,
               options: dict | None = None, seed: int = 0) -> list[torch.Tensor]:
        """`channel_scores` of `model`, once per criterion and options (two methods may share one)."""
        entry = self._entry(model, batches)
        key = (method.criterion, include_extractor, tuple(sorted((options or {}).items())), seed)
        if key not in entry.scores:
            entry.scores[key] = channel_scores(model, method, batches, include_extractor, options, seed)
            self.computed += 1
        return entry.scores[key]

    def seg_targets(self, teacher: SegDecNet, batches: Sequence[Batch]) -> list[torch.Tensor]:
        """`refit.seg_targets` of `teacher`, once."""
        entry = self._entry(teacher, batches)
        if entry.seg_targets is None:
            entry.seg_targets = seg_targets(teacher, batches)
            self.computed += 1
        return entry.seg_targets
