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
