import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from segdec_prune.checkpoint import Checkpoint, InputSpec, save_checkpoint
from segdec_prune.data.dataset import preprocessing_for, train_val_datasets
from segdec_prune.model import SegDecNet, Widths, prunable_convs
from segdec_prune.pruning.criteria import CRITERIA
from segdec_prune.pruning.methods import METHODS, UnknownMethodError, get_method, model_name
from segdec_prune.pruning.prune import prune_model, target_widths
from segdec_prune.pruning.workflow import sparsity_penalty, sparsity_trained

from .conftest import SIZE, SMALL


def test_names_and_errors():
    assert model_name("naive_l1", 0.2) == "naive_l1_r20" and model_name("ours_c3", 0.4) == "ours_c3_r40"
    with pytest.raises(UnknownMethodError, match="known: naive_l1, naive_fn"):
        get_method("l2")
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            target_widths(Widths(), bad)


def test_target_widths_plain_and_aligned():
    assert target_widths(Widths(), 0.2).volume == (26, 52, 52, 52, 52, 52, 52, 52, 820)
    assert target_widths(Widths(), 0.99).volume[0] == 1  # never zero channels
    c1 = target_widths(Widths(), 0.4, round_to=32)
    assert all(w % 32 == 0 for w in c1.volume) and c1.volume[-1] == 608 and c1.volume[0] == 32
    assert target_widths(Widths(), 0.6, include_extractor=True).extractor == (4, 7, 13)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_shrinks_widths_and_reloads(name, trained, batches, tmp_path):
    method = get_method(name)
    pruned, removed = prune_model(trained, method, 0.5, batches, SIZE, round_to=8, include_extractor=True)
    assert len(removed["volume.11.0"]) == SMALL.volume[-1] - pruned.widths.volume[-1]
    expected = target_widths(SMALL, 0.5, True, 8 if method.aligned else None)
    assert pruned.widths == expected
    if method.aligned:
        assert all(w % 8 == 0 for w in pruned.widths.volume[1:])
    assert trained.widths == SMALL  # the original is untouched
    assert pruned.extractor[1][0].in_channels == expected.volume[-1] + 1  # cat(volume, seg)
    assert pruned.seg_mask[0].in_channels == expected.volume[-1]
    assert pruned.volume[-1][1].scale.shape[1] == expected.volume[-1]  # FeatureNorm sliced too
    dec, seg = pruned(torch.rand(2, 3, *SIZE))
    assert dec.shape == (2, 1) and seg.shape == (2, 1, 16, 8)
    path = save_checkpoint(tmp_path / f"{name}.pth", pruned, InputSpec(height=128, width=64))
    code = "import sys;from segdec_prune.checkpoint import load_checkpoint;print(load_checkpoint(sys.argv[1]).model.widths.volume[-1])"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert int(out.stdout) == expected.volume[-1]


def test_criteria_choose_different_channels(trained, batches):
    removed = {n: tuple(prune_model(trained, get_method(n), 0.5, batches, SIZE)[1]["volume.11.0"])
               for n in ("naive_l1", "naive_fn", "ours_c2", "ours_c3", "ours_c4", "random")}
    assert len(set(removed.values())) == len(removed), removed


def _crit(name, model, batches, **opt):
    c = CRITERIA[name](**opt)
    c.prepare(model, batches)
    return c.scores


def test_c2_matches_direct_computation(trained, batches):
    scores = _crit("defect_grad_act", trained, batches)
    conv = prunable_convs(trained)[-1]
    block = trained.volume[-1]
    trained.decision_grad_scale = 1.0
    per_image = []
    for b in batches:
        for i in torch.nonzero(b["label"][:, 0] > 0.5).flatten():
            x = b["image"][i : i + 1]
            act = block(trained.volume[:-1](x))
            act.retain_grad()
            seg = trained.seg_mask(act)
            feats = trained.extractor(torch.cat([act, seg], 1))
            dec = trained.fc(torch.cat([feats.amax((2, 3)), feats.mean((2, 3)), seg.amax((2, 3)), seg.mean((2, 3))], 1))
            F.binary_cross_entropy_with_logits(dec, b["label"][i : i + 1]).backward()
            per_image.append((act * act.grad).sum((2, 3)).abs()[0].detach())
    torch.testing.assert_close(scores[conv], torch.stack(per_image).mean(0), rtol=1e-4, atol=1e-8)


def test_c3_matches_direct_computation(trained, batches):
    scores = _crit("l1_decorrelated", trained, batches, lam=0.5)
    conv, block = prunable_convs(trained)[1], trained.volume[2]
    with torch.no_grad():
        acts = torch.cat([block(trained.volume[:2](b["image"])) for b in batches])  # [N, C, H, W]
    flat = acts.transpose(0, 1).flatten(1).double()
    corr = torch.corrcoef(flat).abs().nan_to_num(1.0).fill_diagonal_(0)
    l1 = conv.weight.abs().sum((1, 2, 3)).double()
    expected = l1 / l1.max() * (1 - 0.5 * corr.max(1).values)
    torch.testing.assert_close(scores[conv].double(), expected, rtol=1e-4, atol=1e-6)


def test_c4_matches_direct_computation(trained, batches):
    scores = _crit("taylor", trained, batches, delta=1.0)
    conv = prunable_convs(trained)[4]
    trained.decision_grad_scale = 1.0
    trained.zero_grad()
    for b in batches:
        dec, seg = trained(b["image"])
        seg_l = (F.binary_cross_entropy_with_logits(seg, b["seg"], reduction="none") * b["weight"]).mean((1, 2, 3))
        loss = (seg_l * b["segmented"].float()).mean() + F.binary_cross_entropy_with_logits(dec, b["label"])
        loss.backward()
    expected = (conv.weight * conv.weight.grad).abs().sum((1, 2, 3))
    trained.zero_grad()
    torch.testing.assert_close(scores[conv], expected, rtol=1e-4, atol=1e-10)


def test_fn_sparsity_training_lowers_scale_l1(trained, tiny_config):
    train_set, val_set = train_val_datasets(tiny_config.data, preprocessing_for(tiny_config.data, tiny_config.train))
    model = SegDecNet(widths=SMALL)
    model.load_state_dict(trained.state_dict())
    baseline = Checkpoint(model=model, input_spec=InputSpec(height=128, width=64))
    l1 = sparsity_penalty(1.0)
    tiny_config.prune.fn_sparsity_epochs = 2
    ends = {}
    for lam in (0.0, 0.5):  # the same training without and with the penalty
        tiny_config.prune.fn_sparsity_lambda = lam
        ends[lam] = l1(sparsity_trained(baseline, tiny_config, train_set, val_set)).item()
    assert ends[0.5] < l1(model).item() and ends[0.5] < ends[0.0] - 1.0, ends
    assert (tiny_config.run_dir / "models" / "naive_fn_sparsity.pth").is_file()


def test_graph_handles_featurenorm_without_warnings(recwarn):
    from segdec_prune.pruning.prune import build_graph

    model = SegDecNet(widths=SMALL)
    graph = build_graph(model, torch.rand(1, 3, *SIZE))
    assert not [w for w in recwarn if "unwrapped" in str(w.message).lower()], [str(w.message) for w in recwarn]
    group = graph.get_pruning_group(prunable_convs(model)[-1], __import__("torch_pruning").prune_conv_out_channels, idxs=[0])
    targets = {type(dep.target.module).__name__ for dep, _ in group}
    assert {"Conv2d", "FeatureNorm"} <= targets  # the FeatureNorm is pruned with its conv
