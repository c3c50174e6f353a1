"""The seg head's least-squares refit after pruning (pruning/refit.py)."""

from __future__ import annotations

import copy
import dataclasses

import torch

from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.prune import prune_model
from segdec_prune.pruning.refit import refit_seg_head
from segdec_prune.pruning.workflow import RecoveryData, prune_and_recover

from .conftest import SIZE


def _raw_maps(model, batches) -> torch.Tensor:
    out = []
    hook = model.seg_mask[0].register_forward_hook(lambda m, i, o: out.append(o))
    with torch.no_grad():
        for b in batches:
            model(b["image"])
    hook.remove()
    return torch.cat(out)


def test_refit_recovers_the_teachers_read_out_when_the_volume_is_the_same(trained, batches):
    student = copy.deepcopy(trained)
    with torch.no_grad():
        student.seg_mask[0].weight.normal_()  # a wrong read-out of the very same features
    r2 = refit_seg_head(student, trained, batches, ridge=1e-9)
    assert r2 > 0.999
    torch.testing.assert_close(_raw_maps(student, batches), _raw_maps(trained, batches), atol=1e-3, rtol=1e-3)


def test_refit_brings_a_pruned_map_closer_to_the_teachers_and_touches_nothing_else(trained, batches):
    pruned, _ = prune_model(trained, get_method("naive_l1"), 0.6, batches, SIZE)
    before = copy.deepcopy(pruned.state_dict())
    target = _raw_maps(trained, batches)
    error = lambda m: float((_raw_maps(m, batches) - target).pow(2).mean())  # noqa: E731
    unfitted = error(pruned)
    r2 = refit_seg_head(pruned, trained, batches)
    assert error(pruned) < unfitted and 0 < r2 <= 1
    changed = [k for k, v in pruned.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["seg_mask.0.weight"]


def test_the_recipe_option_refits_and_records_it(trained, tiny_config, sets, batches):
    data = RecoveryData(*sets, batches)
    off = dataclasses.replace(tiny_config, prune=dataclasses.replace(tiny_config.prune, refit_seg_head=False))
    assert tiny_config.prune.refit_seg_head  # the default
    fitted = prune_and_recover(trained, get_method("naive_l1"), 0.6, tiny_config, data, finetune_epochs=0)
    plain = prune_and_recover(trained, get_method("naive_l1"), 0.6, off, data, finetune_epochs=0)
    assert 0 < fitted.rounds[0]["seg_refit_r2"] <= 1 and "val_ap_unfitted" in fitted.rounds[0]
    assert "seg_refit_r2" not in plain.rounds[0]
    assert not torch.equal(fitted.model.seg_mask[0].weight, plain.model.seg_mask[0].weight)
    assert torch.equal(fitted.model.volume[0][0].weight, plain.model.volume[0][0].weight)


def test_the_step_line_and_the_checkpoint_say_what_the_refit_did(trained, tiny_config, sets, batches):
    from segdec_prune.checkpoint import Checkpoint, InputSpec, load_checkpoint
    from segdec_prune.pruning.workflow import prune_one
    from segdec_prune.stages import prune_line

    base = Checkpoint(trained, InputSpec(height=SIZE[0], width=SIZE[1]), {})
    out = prune_one(base, get_method("naive_l1"), 0.6, tiny_config, RecoveryData(*sets, batches), 0)
    assert out.val_ap_unfitted is not None and "before the seg-head refit" in prune_line(out)
    meta = load_checkpoint(out.path).metadata
    assert meta["rounds"][0]["val_ap_pruned"] == out.val_ap_pruned
    assert 0 < meta["rounds"][0]["seg_refit_r2"] <= 1


def test_one_pass_through_the_volume_validates_both_read_outs(trained, sets):
    """What prune_and_recover measures before and after the refit, from one volume pass: the same
    as validating each read-out in its own model."""
    from segdec_prune.training import validate, validate_seg_heads

    val, cpu = sets[1], torch.device("cpu")
    other = copy.deepcopy(trained.seg_mask)
    with torch.no_grad():
        other[0].weight.mul_(-2.0)
    swapped = copy.deepcopy(trained)
    swapped.seg_mask = copy.deepcopy(other)
    for got, ref in zip(validate_seg_heads(trained, val, cpu, [other, trained.seg_mask]),
                        (validate(swapped, val, cpu), validate(trained, val, cpu))):
        assert got.ap == ref.ap and got.threshold == ref.threshold
        torch.testing.assert_close(torch.from_numpy(got.scores), torch.from_numpy(ref.scores))
    assert not torch.equal(*(torch.from_numpy(v.scores) for v in validate_seg_heads(trained, val, cpu, [other, trained.seg_mask])))
