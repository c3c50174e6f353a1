"""What pruning computes from the unpruned model once (pruning/memo.py): the same models, fewer passes."""

from __future__ import annotations

import copy
import dataclasses

import torch

from segdec_prune.checkpoint import InputSpec, save_checkpoint
from segdec_prune.pruning.allocate import Budget
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.workflow import RecoveryData, prune_and_recover
from segdec_prune.stages import RunState, baseline_path

from .conftest import SIZE


def _same(a, b) -> None:
    assert a.rounds[0]["removed_channels"] == b.rounds[0]["removed_channels"]
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_every_target_of_one_model_is_scored_and_mapped_once_and_prunes_as_a_fresh_pass(trained, tiny_config, sets,
                                                                                           batches):
    cfg = dataclasses.replace(tiny_config, prune=dataclasses.replace(tiny_config.prune, align=1, min_width=1,
                                                                      min_keep=0.0))  # a budget the tiny model meets
    shared = RecoveryData(*sets, batches)
    method = get_method("ours_c4")  # scores from data: gradient x activation
    targets = (0.3, 0.6, Budget("macs", 0.5))
    memoised = [prune_and_recover(trained, method, t, cfg, shared, finetune_epochs=0) for t in targets]
    assert shared.memo.computed == 2  # C4's scores and the refit's target maps, for three targets
    for target, out in zip(targets, memoised):
        _same(out, prune_and_recover(trained, method, target, cfg, RecoveryData(*sets, batches), 0))


def test_another_model_or_other_batches_are_computed_afresh(trained, tiny_config, sets, batches):
    data = RecoveryData(*sets, batches)
    method = get_method("ours_c2")
    prune_and_recover(trained, method, 0.5, tiny_config, data, finetune_epochs=0)
    other = copy.deepcopy(trained)
    with torch.no_grad():
        other.volume[0][0].weight.mul_(-1)
    prune_and_recover(other, method, 0.5, tiny_config, data, finetune_epochs=0)
    assert data.memo.computed == 4
    data.memo.scores(trained, method, list(batches))  # equal batches, another list: no reuse across batches
    assert data.memo.computed == 5


def test_a_workers_steps_share_one_baseline_until_its_file_changes(trained, tiny_config):
    path = baseline_path(tiny_config)
    save_checkpoint(path, trained, InputSpec(height=SIZE[0], width=SIZE[1]), {})
    home = RunState(tiny_config)
    first, second = (RunState(tiny_config, data_from=home) for _ in range(2))
    loaded = first.baseline
    assert second.baseline is loaded and first.batches is second.batches
    save_checkpoint(path, copy.deepcopy(trained), InputSpec(height=SIZE[0], width=SIZE[1]), {"retrained": True})
    assert second.baseline is not loaded and second.baseline.metadata.get("retrained")
