"""The fine-tuning recipe: the probe's choice, fixed recipes, early stopping, the stuck warning."""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch

from segdec_prune import training
from segdec_prune.checkpoint import Checkpoint, InputSpec, load_checkpoint
from segdec_prune.config import ConfigError, from_dict
from segdec_prune.pruning import recipe
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.workflow import RecoveryData, finetune_config, prune_and_recover, prune_one
from segdec_prune.training import EpochRecord, Validation, train

from .conftest import SIZE


def _cfg(tiny_config, **prune):
    cfg = dataclasses.replace(tiny_config, prune=dataclasses.replace(tiny_config.prune, distill=False, **prune))
    return cfg.validate()


def test_probe_picks_the_lr_with_the_best_validation_ap(trained, tiny_config, sets):
    # lr 1e-5 leaves the trained model as it is; lr 50 with momentum wrecks it within a few batches
    cfg = _cfg(tiny_config, finetune_lr="auto", probe_lrs=[50.0, 1e-5], probe_momenta=[0.9], probe_fraction=1.0)
    before = training.validate(trained, sets[1], torch.device("cpu")).ap
    weights = copy.deepcopy(trained.state_dict())
    chosen = recipe.choose(trained, cfg, finetune_config(cfg, 1), *sets, None)
    assert chosen.source == "probe" and (chosen.lr, chosen.momentum) == (1e-5, 0.9)
    by_lr = {c["lr"]: c for c in chosen.candidates}
    assert by_lr[1e-5]["val_ap"] == pytest.approx(before, abs=0.02)
    assert by_lr[1e-5]["val_ap"] > by_lr[50.0]["val_ap"] or not by_lr[50.0]["finite"]
    assert chosen.iterations >= 1 and chosen.seconds > 0
    assert all(torch.equal(v, weights[k]) for k, v in trained.state_dict().items())  # the model is untouched


def test_a_fixed_lr_skips_the_probe(trained, tiny_config, sets, monkeypatch):
    monkeypatch.setattr(recipe, "train", lambda *a, **k: pytest.fail("the probe ran"))
    cfg = _cfg(tiny_config, finetune_lr=0.004, finetune_momentum=0.5)
    chosen = recipe.choose(trained, cfg, finetune_config(cfg, 1), *sets, None)
    assert (chosen.lr, chosen.momentum, chosen.source, chosen.candidates) == (0.004, 0.5, "config", [])


def test_early_stopping_keeps_the_best_epochs_weights(trained, tiny_config, sets, monkeypatch):
    aps, seen = iter([0.5, 0.9, 0.8, 0.7, 0.95]), []

    def fake_validate(model, dataset, device):
        seen.append(copy.deepcopy(model.state_dict()))
        ap = next(aps)
        return Validation(ap, 0.5, training.Threshold(0.5), np.full(len(dataset), ap))

    monkeypatch.setattr(training, "validate", fake_validate)
    ft = dataclasses.replace(finetune_config(_cfg(tiny_config), 5), lr=0.01, device="cpu")
    model = copy.deepcopy(trained)
    result = train(model, *sets, ft, None, None, show_progress=False, patience=2)
    assert result.stopped_early and len(result.history) == 4  # epochs 3 and 4 were no better than epoch 2
    assert result.best_epoch == 1 and result.best_val_ap == 0.9
    assert np.all(result.best_scores == 0.9)  # the kept weights' validation scores, stored with the checkpoint
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())


def test_probe_record_round_trips_through_the_checkpoint(trained, tiny_config, sets, batches, tmp_path):
    cfg = _cfg(tiny_config, finetune_lr="auto", probe_lrs=[0.001, 0.01], probe_momenta=[0.0], probe_fraction=0.5)
    baseline = Checkpoint(trained, InputSpec(height=SIZE[0], width=SIZE[1]), {})
    out = prune_one(baseline, get_method("naive_l1"), 0.5, cfg, RecoveryData(*sets, batches), finetune_epochs=1)
    meta = load_checkpoint(out.path).metadata
    assert meta["recipe"]["source"] == "probe" and len(meta["recipe"]["candidates"]) == 2
    assert meta["finetune_config"]["lr"] == meta["recipe"]["lr"] in (0.001, 0.01)
    assert meta["rounds"][0]["recipe"] == meta["recipe"]
    from segdec_prune.stages import prune_line

    assert 0 < out.validation_seconds < out.finetune_seconds  # the line says where fine-tuning's time went
    assert f"(validating {out.validation_seconds:.0f} s)" in prune_line(out)


def test_stuck_decision_loss_is_reported(trained, tiny_config, sets, batches, caplog):
    history = [EpochRecord(0, 0.1, 0.69, 0.8, 1.0), EpochRecord(1, 0.1, 0.3, 0.4, 1.0)]
    assert recipe.stuck(history) is None and recipe.stuck(history[:1]) == pytest.approx(0.69)
    # an lr too small to move anything, from a model pruned to its bones and given a coin-toss head
    cfg = _cfg(tiny_config, finetune_lr=1e-9, finetune_momentum=0.0)
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    baseline = Checkpoint(model, InputSpec(height=SIZE[0], width=SIZE[1]), {})
    with caplog.at_level(logging.WARNING):
        out = prune_one(baseline, get_method("naive_l1"), 0.6, cfg, RecoveryData(*sets, batches), finetune_epochs=1)
    assert "not recovered" in caplog.text and "naive_l1_r60" in caplog.text
    assert load_checkpoint(out.path).metadata["stuck_dec_loss"] == pytest.approx(0.693, abs=0.01)


@pytest.mark.parametrize("key, value", [("finetune_lr", "fast"), ("finetune_lr", 0), ("finetune_lr", True), ("probe_lrs", []),
                                        ("probe_momenta", [1.0]), ("probe_fraction", 0), ("finetune_patience", -1)])
def test_recipe_options_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"prune.{key}"):
        from_dict({"prune": {key: value}})
    assert from_dict({"prune": {"finetune_lr": "auto"}}).prune.finetune_lr == "auto"
    assert from_dict({"prune": {"finetune_lr": 1}}).prune.finetune_lr == 1.0


def test_reset_decision_makes_the_head_unsure_and_only_before_fine_tuning(trained, tiny_config, sets, batches):
    from segdec_prune.model import reset_decision
    from segdec_prune.pruning.workflow import prune_and_recover

    x = torch.randn(3, 3, *SIZE)
    model = copy.deepcopy(trained)
    convs_before = [copy.deepcopy(b[0].weight) for b in model.extractor if isinstance(b, torch.nn.Sequential)]
    reset_decision(model, "fc")
    assert torch.equal(model(x)[0], torch.zeros(3, 1))  # every image scores 0.5
    assert torch.equal(model(x)[1], trained(x)[1])  # the segmentation path is untouched
    reset_decision(model, "head")
    convs_after = [b[0].weight for b in model.extractor if isinstance(b, torch.nn.Sequential)]
    assert not any(torch.equal(a, b) for a, b in zip(convs_before, convs_after))
    with pytest.raises(ValueError, match="unknown decision reset"):
        reset_decision(model, "all")
    # without fine-tuning after it a reset would ship a coin toss: it is skipped
    cfg = _cfg(tiny_config, reset_decision="fc")
    out = prune_and_recover(trained, get_method("naive_l1"), 0.5, cfg, RecoveryData(*sets, batches), finetune_epochs=0)
    assert not torch.equal(out.model(x)[0], torch.zeros(3, 1))
    still = _cfg(tiny_config, reset_decision="fc", finetune_lr=1e-12, finetune_momentum=0.0)
    tuned = prune_and_recover(trained, get_method("naive_l1"), 0.5, still, RecoveryData(*sets, batches), finetune_epochs=1)
    assert tuned.model.fc.weight.abs().max() < 1e-6  # reset, then an lr too small to move it


def test_fine_tuning_can_rerun_the_papers_dynamic_balancing(tiny_config):
    assert finetune_config(_cfg(tiny_config), 4).dyn_balanced_loss is False  # fixed weights by default
    ft = finetune_config(_cfg(tiny_config, finetune_dyn_balanced=True), 4)
    assert ft.dyn_balanced_loss is True and training.loss_weights(0, ft) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="prune.reset_decision"):
        from_dict({"prune": {"reset_decision": "everything"}})


def test_keeping_the_last_epoch_validates_it_alone_and_returns_its_weights(trained, tiny_config, sets, batches):
    cfg = _cfg(tiny_config, finetune_keep="last", finetune_patience=0, finetune_lr=0.05)
    seen = []
    out = prune_and_recover(trained, get_method("naive_l1"), 0.5, cfg, RecoveryData(*sets, batches), finetune_epochs=3,
                            on_epoch=lambda m, rec: seen.append((rec, copy.deepcopy(m.state_dict()))))
    history = out.rounds[0]["training"]["history"]
    assert [h["val_ap"] is not None for h in history] == [False, False, True]  # one validation pass, the last epoch's
    assert all(torch.equal(v, seen[-1][1][k]) for k, v in out.model.state_dict().items())
    assert out.val_ap == history[-1]["val_ap"] and out.val_scores is not None  # the threshold and scores: of it


def test_bf16_fine_tuning_is_recorded_and_said(trained, tiny_config, sets, batches, monkeypatch):
    from segdec_prune.stages import prune_line

    monkeypatch.setattr(training, "bf16_native", lambda device: True)
    cfg = _cfg(tiny_config, finetune_precision="bf16")
    assert finetune_config(cfg, 2).precision == "bf16" and cfg.train.precision == "fp32"  # the baseline's stays
    baseline = Checkpoint(trained, InputSpec(height=SIZE[0], width=SIZE[1]), {})
    out = prune_one(baseline, get_method("naive_l1"), 0.5, cfg, RecoveryData(*sets, batches), finetune_epochs=1)
    assert out.precision == "bf16" and "; 1 bf16 epochs in" in prune_line(out)
    assert load_checkpoint(out.path).metadata["rounds"][0]["training"]["precision"] == "bf16"
    plain = prune_one(baseline, get_method("naive_l1"), 0.5, _cfg(tiny_config), RecoveryData(*sets, batches), finetune_epochs=1)
    assert plain.precision == "fp32" and "bf16" not in prune_line(plain)
