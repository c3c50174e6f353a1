import subprocess
import sys

import pytest
import torch

from segdec_prune.checkpoint import CheckpointError, InputSpec, load_checkpoint, save_checkpoint
from segdec_prune.model import FeatureNorm, GradientMultiply, SegDecNet, Widths, count_parameters, widths_from_state_dict


def test_parameter_count_matches_paper():
    assert count_parameters(SegDecNet(in_channels=3)) == 15_638_813


@pytest.mark.parametrize("h,w", [(640, 232), (176, 64), (128, 64), (256, 128)])
def test_output_shapes(h, w):
    model = SegDecNet().eval()
    with torch.no_grad():
        dec, seg = model(torch.rand(2, 3, h, w))
    assert dec.shape == (2, 1)
    assert seg.shape == (2, 1, h // 8, w // 8)
    assert torch.isfinite(dec).all() and torch.isfinite(seg).all()


def test_featurenorm_matches_formula():
    torch.manual_seed(0)
    fn = FeatureNorm(4)
    with torch.no_grad():
        fn.scale.copy_(torch.rand(1, 4, 1, 1) + 0.5)
        fn.bias.copy_(torch.randn(1, 4, 1, 1))
    x = torch.randn(3, 4, 7, 5) * 3 + 1
    std = torch.std(x, dim=(2, 3), keepdim=True)  # unbiased, as the paper
    mean = x.mean(dim=(2, 3), keepdim=True)
    expected = fn.scale * (x - mean) / (std + 1e-3).sqrt() + fn.bias
    torch.testing.assert_close(fn(x), expected, rtol=1e-5, atol=1e-5)


def test_gradient_multiply_scales_only_backward():
    x = torch.randn(5, requires_grad=True)
    y = GradientMultiply.apply(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5,), 0.25))


def test_gradient_adjustment_blocks_decision_gradient_into_volume():
    torch.manual_seed(0)
    model = SegDecNet(widths=Widths((4,) * 8 + (8,), (2, 2, 2)))
    x = torch.rand(1, 3, 128, 64)
    model.decision_grad_scale = 0.0
    model(x)[0].sum().backward()
    assert model.volume[0][0].weight.grad.abs().sum() == 0
    assert model.extractor[1][0].weight.grad.abs().sum() > 0
    model.zero_grad()
    model.decision_grad_scale = 1.0
    model(x)[0].sum().backward()
    assert model.volume[0][0].weight.grad.abs().sum() > 0


def test_widths_round_trip_through_state_dict():
    widths = Widths((8, 16, 16, 8, 8, 8, 8, 8, 32), (4, 8, 8))
    model = SegDecNet(widths=widths)
    assert widths_from_state_dict(model.state_dict()) == widths
    with pytest.raises(ValueError):
        Widths((8,) * 8, (1, 1, 1))


def test_checkpoint_round_trip_in_fresh_process(tmp_path):
    widths = Widths((8, 16, 16, 8, 8, 8, 8, 8, 32), (4, 8, 8))
    model = SegDecNet(widths=widths)
    path = save_checkpoint(tmp_path / "m.pth", model, InputSpec(height=128, width=64), {"name": "x"})
    code = (
        "import torch,sys; from segdec_prune.checkpoint import load_checkpoint;"
        "c=load_checkpoint(sys.argv[1]); d,s=c.model(torch.rand(1,3,128,64)); print(c.model.widths.volume[-1], s.shape[-1])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["32", "8"]
    loaded = load_checkpoint(path)
    assert loaded.input_spec.height == 128 and loaded.metadata["name"] == "x"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_bare_paper_state_dict_loads(tmp_path):
    model = SegDecNet()
    torch.save(model.state_dict(), tmp_path / "best_state_dict.pth")
    assert load_checkpoint(tmp_path / "best_state_dict.pth").model.widths == Widths()


def test_mismatched_checkpoint_gives_clear_error(tmp_path):
    model = SegDecNet(widths=Widths((8,) * 9, (2, 2, 2)))
    save_checkpoint(tmp_path / "m.pth", model, InputSpec())
    raw = torch.load(tmp_path / "m.pth", weights_only=True)
    raw["widths"]["volume"][3] = 16  # record says 16, weights are 8
    torch.save(raw, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "bad.pth")


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_unusable_files_are_rejected(tmp_path, content):
    path = tmp_path / "x.pth"
    if content is None:
        torch.save({"conv.weight": torch.zeros(2, 2), "fc.weight": torch.zeros(1)}, path)  # another net
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
