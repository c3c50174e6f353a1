"""Recovery after pruning: distillation losses, the teacher cache, iterative pruning, the recipe."""

import dataclasses
import math

import pytest
import torch

from segdec_prune.checkpoint import InputSpec, save_checkpoint
from segdec_prune.config import ConfigError, from_dict
from segdec_prune.data.dataset import KSDD2Dataset, load_split, preprocessing_for, train_val_datasets
from segdec_prune.data.ksdd2 import Preprocessing
from segdec_prune.model import Widths
from segdec_prune.pruning.distill import (Distillation, VolumeDistillation, binary_kl, cache_path, kept_after,
                                         teacher_outputs)
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.prune import prune_model, prune_to_widths, round_widths, target_widths
from segdec_prune.pruning.workflow import RecoveryData, calibration_batches, finetune_config, prune_and_recover
from segdec_prune.training import train

from .conftest import SIZE, SMALL


def _kl_by_hand(s: float, t: float, temp: float) -> float:
    p, q = 1 / (1 + math.exp(-t / temp)), 1 / (1 + math.exp(-s / temp))
    return temp**2 * (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))


def test_binary_kl_equals_a_hand_computation():
    s, t = torch.tensor([0.5, -1.0, 3.0]), torch.tensor([2.0, -1.0, -0.5])
    expected = sum(_kl_by_hand(a, b, 2.0) for a, b in zip(s.tolist(), t.tolist())) / 3
    assert binary_kl(s, t, 2.0).item() == pytest.approx(expected, rel=1e-5)
    assert binary_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)  # zero when they agree


def test_distillation_weights_both_terms_and_looks_targets_up_by_index(tiny_synth):
    ds = KSDD2Dataset(load_split(tiny_synth, "train", Preprocessing(*SIZE))[:3])
    from segdec_prune.pruning.distill import TeacherOutputs

    teacher = TeacherOutputs("x", [s["id"] for s in ds.samples], torch.tensor([[1.0], [2.0], [-3.0]]),
                             torch.tensor([0.0, 1.0, -1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).clone())
    loss = Distillation(teacher, ds, temperature=1.5, dec_weight=0.3, seg_weight=2.0)
    batch = {"index": torch.tensor([2, 0])}
    dec, seg = torch.tensor([[0.5], [0.0]]), torch.full((2, 1, 2, 2), 0.25)
    dec_kl = (_kl_by_hand(0.5, -3.0, 1.5) + _kl_by_hand(0.0, 1.0, 1.5)) / 2
    seg_kl = (_kl_by_hand(0.25, -1.0, 1.5) + _kl_by_hand(0.25, 0.0, 1.5)) / 2
    assert loss(None, batch, (dec, seg)).item() == pytest.approx(0.3 * dec_kl + 2.0 * seg_kl, rel=1e-5)
    other = KSDD2Dataset(list(reversed(ds.samples)))
    with pytest.raises(ValueError, match="another training split"):
        Distillation(teacher, other)


class CountingForward:
    """Counts the teacher's forward calls."""

    def __init__(self, model):
        self.calls = 0
        self.hook = model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1


def test_teacher_cache_is_written_once_reused_and_rebuilt_for_a_new_baseline(trained, tiny_synth, tmp_path):
    ds = KSDD2Dataset(load_split(tiny_synth, "train", Preprocessing(*SIZE)))
    base = save_checkpoint(tmp_path / "models" / "baseline_best.pth", trained, InputSpec(height=SIZE[0], width=SIZE[1]))
    counter = CountingForward(trained)
    first = teacher_outputs(tmp_path, base, trained, ds)
    calls = counter.calls
    assert calls == -(-len(ds) // 16) and first.decision.shape == (len(ds), 1)
    assert first.segmentation.shape == (len(ds), 1, SIZE[0] // 8, SIZE[1] // 8)
    again = teacher_outputs(tmp_path, base, trained, ds)
    assert counter.calls == calls  # reused: no teacher forward pass
    assert torch.equal(again.decision, first.decision) and torch.equal(again.segmentation, first.segmentation)
    with torch.no_grad():
        trained.fc.bias += 1.0  # "another baseline": a new file, a new sha256
    try:
        save_checkpoint(base, trained, InputSpec(height=SIZE[0], width=SIZE[1]))
        rebuilt = teacher_outputs(tmp_path, base, trained, ds)
    finally:
        with torch.no_grad():
            trained.fc.bias -= 1.0
        counter.hook.remove()
    assert counter.calls == 2 * calls
    assert torch.allclose(rebuilt.decision, first.decision + 1.0, atol=1e-5)
    assert len(list((tmp_path / "teacher").glob("*.pt"))) == 2
    cache_path(tmp_path, rebuilt.baseline_sha256).write_bytes(b"damaged")  # a damaged cache is rebuilt
    assert torch.allclose(teacher_outputs(tmp_path, base, trained, ds).decision, first.decision, atol=1e-5)


def test_round_widths_reach_the_target_exactly():
    end = target_widths(Widths(), 0.6)
    rounds = round_widths(Widths(), end, 3)
    assert len(rounds) == 3 and rounds[-1] == end
    assert rounds[0].volume[-1] == 1024 - round(614 / 3) and rounds[1].volume[-1] == 1024 - round(2 * 614 / 3)
    assert round_widths(Widths(), end, 1) == [end]
    with pytest.raises(ValueError):
        round_widths(Widths(), end, 0)


def _cfg(tiny_config, **prune):
    cfg = dataclasses.replace(tiny_config, prune=dataclasses.replace(tiny_config.prune, **prune))
    return cfg.validate()


@pytest.mark.parametrize("method", ["naive_l1", "ours_c1", "ours_c4"])
def test_iterative_pruning_ends_at_the_one_shot_widths(method, trained, batches, tiny_config, tiny_synth):
    cfg = _cfg(tiny_config, round_to=8, steps=3, distill=False)
    sets = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    one_shot, _ = prune_model(trained, get_method(method), 0.6, batches, SIZE, round_to=8)
    out = prune_and_recover(trained, get_method(method), 0.6, cfg, RecoveryData(*sets, batches), finetune_epochs=1)
    assert out.model.widths == one_shot.widths
    assert [r["widths"] for r in out.rounds] == [w.to_dict() for w in round_widths(SMALL, one_shot.widths, 3)]
    per_epoch = -(-2 * int(sets[0].labels.sum()) // cfg.train.batch_size)
    assert sum(r["iterations"] for r in out.rounds) == per_epoch  # the same total fine-tuning as one-shot


def test_distillation_moves_a_pruned_model_toward_the_teacher(trained, tiny_synth, tiny_config, tmp_path):
    cfg = _cfg(tiny_config, finetune_lr=0.02, finetune_seg_weight=0.0, distill_dec_weight=1.0, distill_seg_weight=1.0)
    cfg.train.delta = 0.0  # distillation terms only: the test isolates what they do
    train_set, val_set = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    batches = calibration_batches(train_set, 2, 4, 0)
    base = save_checkpoint(tmp_path / "baseline_best.pth", trained, InputSpec(height=SIZE[0], width=SIZE[1]))
    teacher = teacher_outputs(tmp_path, base, trained, train_set)
    student, _ = prune_model(trained, get_method("naive_l1"), 0.5, batches, SIZE)
    loss = Distillation(teacher, train_set, cfg.prune.distill_temperature)

    def gap() -> float:
        with torch.no_grad():
            images = torch.stack([train_set[i]["image"] for i in range(len(train_set))])
            return loss(student, {"index": torch.arange(len(train_set))}, student.eval()(images)).item()

    before = gap()
    ft = dataclasses.replace(finetune_config(cfg, 3), device="cpu")
    train(student, train_set, val_set, ft, None, None, extra_loss=loss, show_progress=False)
    assert gap() < 0.7 * before


def test_volume_distillation_maps_the_kept_channels_to_the_teachers(trained, batches):
    """Pruning only the volume's last conv leaves every other channel as it was, so the student's
    volume is exactly the teacher's kept channels: the term is zero iff the mapping is right."""
    target = Widths(SMALL.volume[:-1] + (40,), SMALL.extractor)
    student, removed = prune_to_widths(trained, get_method("naive_l1"), target, batches, SIZE)
    last = [n for n, m in trained.named_modules() if m is trained.volume[-1][0]][0]
    kept = kept_after(list(range(SMALL.volume[-1])), removed[last])
    assert len(kept) == 40 and kept == sorted(set(range(64)) - set(removed[last]))
    term = VolumeDistillation(trained, student, kept, weight=2.0)
    images = batches[0]["image"]
    assert term(student, {"image": images}, student.eval()(images)).item() < 1e-10
    shifted = VolumeDistillation(trained, student, kept[1:] + kept[:1], weight=2.0)  # a wrong mapping is seen
    assert shifted(student, {"image": images}, student(images)).item() > 1e-3
    term.close(), shifted.close()
    assert not student.volume._forward_hooks  # closed: no hook left on the model


def test_volume_distillation_trains_the_pruned_volume_toward_the_teacher(trained, tiny_config):
    cfg = _cfg(tiny_config, finetune_lr=0.05, finetune_seg_weight=0.0, distill_volume_weight=1.0)
    cfg.train.delta = 0.0  # the volume term only: the test isolates what it does
    train_set, val_set = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    batches = calibration_batches(train_set, 2, 4, 0)
    student, removed = prune_model(trained, get_method("naive_l1"), 0.5, batches, SIZE)
    last = [n for n, m in trained.named_modules() if m is trained.volume[-1][0]][0]
    term = VolumeDistillation(trained, student, kept_after(list(range(64)), removed[last]), 1.0)
    images = torch.stack([train_set[i]["image"] for i in range(len(train_set))])

    def gap() -> float:
        with torch.no_grad():
            return term(student, {"image": images}, student.eval()(images)).item()

    before = gap()
    train(student, train_set, val_set, dataclasses.replace(finetune_config(cfg, 3), device="cpu"), None, None,
          extra_loss=term, show_progress=False)
    assert gap() < 0.7 * before
    term.close()
    # and through prune_and_recover, where the config turns it on: the loss term is logged per epoch
    out = prune_and_recover(trained, get_method("naive_l1"), 0.5, cfg, RecoveryData(train_set, val_set, batches),
                            finetune_epochs=1)
    assert out.rounds[0]["training"]["history"][0]["loss_extra"] > 0
    assert not out.model.volume._forward_hooks


def test_train_stops_after_the_given_iterations_and_uses_the_recipe(tiny_config):
    cfg = _cfg(tiny_config, finetune_momentum=0.5, finetune_schedule="cosine", finetune_lr=0.03)
    ft = finetune_config(cfg, 2)
    assert (ft.momentum, ft.lr_schedule, ft.lr, ft.dyn_balanced_loss) == (0.5, "cosine", 0.03, False)
    from segdec_prune.model import SegDecNet

    sets = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    result = train(SegDecNet(widths=SMALL), *sets, ft, None, None, show_progress=False, iterations=3)
    assert len(result.history) == 1 and result.history[0].val_ap is not None  # partial epoch validates


@pytest.mark.parametrize("key, value, match", [
    ("steps", 0, "prune.steps"), ("finetune_schedule", "step", "prune.finetune_schedule"),
    ("distill_temperature", 0.0, "prune.distill_temperature"), ("finetune_momentum", 1.0, "prune.finetune_momentum"),
    ("distill_seg_weight", -1.0, "prune.distill_seg_weight"), ("distill_volume_weight", -0.5, "prune.distill_volume_weight"),
])
def test_recipe_keys_are_validated(key, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict({"prune": {key: value}})
