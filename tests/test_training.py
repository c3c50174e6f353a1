import torch

from segdec_prune.checkpoint import InputSpec, load_checkpoint
from segdec_prune.config import TrainConfig
from segdec_prune.data.dataset import preprocessing_for, train_val_datasets
from segdec_prune.model import SegDecNet
from segdec_prune.training import loss_weights, train


def test_dynamic_balancing_follows_the_paper():
    cfg = TrainConfig(epochs=10, delta=2.0)
    assert loss_weights(0, cfg) == (1.0, 0.0)
    assert loss_weights(5, cfg) == (0.5, 1.0)
    cfg.dyn_balanced_loss = False
    assert loss_weights(5, cfg) == (1.0, 2.0)


def _run(cfg, path):
    torch.manual_seed(cfg.train.seed)
    train_set, val_set = train_val_datasets(cfg.data, preprocessing_for(cfg.data, cfg.train))
    model = SegDecNet()
    spec = InputSpec(height=cfg.data.input_height, width=cfg.data.input_width)
    return model, train(model, train_set, val_set, cfg.train, path, spec, {"name": "t"}, show_progress=False)


def test_two_epoch_training_lowers_loss_saves_best_and_is_deterministic(tiny_config, tmp_path):
    tiny_config.train.dyn_balanced_loss = False  # fixed weights, so losses are comparable
    model, result = _run(tiny_config, tmp_path / "a.pth")
    first, last = result.history[0], result.history[-1]
    assert last.loss < first.loss
    assert all(h.val_ap is not None for h in result.history)
    saved = load_checkpoint(tmp_path / "a.pth")
    assert saved.metadata["training"]["best_epoch"] == result.best_epoch
    for k, v in model.state_dict().items():  # the model is left holding the best weights
        assert torch.equal(v.cpu(), saved.model.state_dict()[k])
    _, again = _run(tiny_config, tmp_path / "b.pth")
    assert [h.loss for h in again.history] == [h.loss for h in result.history]


def test_on_epoch_sees_every_epochs_weights_and_changes_nothing(tiny_config, tmp_path):
    import copy

    train_set, val_set = train_val_datasets(tiny_config.data, preprocessing_for(tiny_config.data, tiny_config.train))
    seen = []
    torch.manual_seed(tiny_config.train.seed)
    model = SegDecNet()
    result = train(model, train_set, val_set, tiny_config.train, None, None, show_progress=False,
                   on_epoch=lambda m, rec: seen.append((rec, copy.deepcopy(m.state_dict()))))
    assert [rec for rec, _ in seen] == result.history and len(seen) == tiny_config.train.epochs
    best = seen[result.best_epoch][1]  # the weights kept are the best epoch's, as the hook saw them
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, seen[0][1][k]) for k, v in seen[-1][1].items())  # each epoch its own
    _, plain = _run(tiny_config, None)
    assert [h.loss for h in plain.history] == [h.loss for h in result.history]  # the hook changed no result


def test_bf16_trains_the_forward_pass_in_bf16_and_keeps_fp32_weights(tiny_config, tmp_path, monkeypatch):
    import segdec_prune.training as training

    monkeypatch.setattr(training, "bf16_native", lambda device: True)  # autocast runs (emulated) on any CPU
    tiny_config.train.epochs = 1
    _, fp32 = _run(tiny_config, None)
    tiny_config.train.precision = "bf16"
    model, bf16 = _run(tiny_config, tmp_path / "bf16.pth")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert bf16.history[0].loss != fp32.history[0].loss  # the bf16 arithmetic did run
    assert abs(bf16.history[0].loss - fp32.history[0].loss) < 0.1 * fp32.history[0].loss
    assert load_checkpoint(tmp_path / "bf16.pth").metadata["training"]["precision"] == "bf16"


def test_bf16_without_native_bf16_trains_in_fp32(tiny_config, monkeypatch, caplog):
    import segdec_prune.training as training

    monkeypatch.setattr(training, "bf16_native", lambda device: False)
    assert training.forward_precision("bf16", torch.device("cpu")) == "fp32"
    assert "no native bf16" in caplog.text
    tiny_config.train.epochs, tiny_config.train.precision = 1, "bf16"
    _, result = _run(tiny_config, None)
    assert result.precision == "fp32"


def test_featurenorm_under_bf16_gives_a_constant_channel_a_finite_gradient():
    from segdec_prune.model import FeatureNorm

    norm = FeatureNorm(2)
    x = torch.randn(1, 2, 6, 4)
    x[:, 1] = 0.5  # a channel bf16 rounded to one value: var 0, where sqrt's gradient is infinite
    x = x.bfloat16().requires_grad_()
    norm(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(norm.scale.grad).all()
    y = torch.randn(1, 2, 6, 4)
    assert torch.allclose(norm(y.bfloat16()), norm(y.bfloat16().float()))  # statistics in FP32, as FP32 input
