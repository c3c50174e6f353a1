import pytest

from segdec_prune.config import ConfigError, from_dict, load_config


def test_repository_configs_load():
    demo = load_config("configs/demo.toml")
    assert demo.data.input_height % 8 == 0 and demo.data.root == "datasets/demo"
    paper = load_config("configs/ksdd2.toml")
    assert (paper.data.input_height, paper.data.input_width, paper.train.epochs) == (640, 232, 50)
    assert (paper.train.lr, paper.data.dilate, paper.train.seg_loss_max) == (0.01, 15, 3.0)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"data": {"input_height": 100}}, "data.input_height"),
        ({"data": {"input_width": 40}}, "data.input_height"),  # too small for the decision head
        ({"data": {"num_segmented": -1}}, "data.num_segmented"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"train": {"epocs": 3}}, "train.epocs"),
        ({"model": {}}, "model"),
        ({"prune": {"methods": ["naive_l2"]}}, "prune.methods"),
        ({"prune": {"ratios": [0.2, 1.0]}}, "prune.ratios"),
        ({"prune": {"c3_lambda": 2}}, "prune.c3_lambda"),
        ({"prune": {"finetune_keep": "first"}}, "prune.finetune_keep"),
        ({"prune": {"finetune_precision": "fp16"}}, "prune.finetune_precision"),
        ({"train": {"precision": "half"}}, "train.precision"),
        ({"prune": {"finetune_keep": "last", "finetune_patience": 2}}, "prune.finetune_keep"),  # nothing to stop on
        ({"deploy": {"int8_calibrations": ["kl"]}}, "deploy.int8_calibrations"),
        ({"deploy": {"int8_calibrations": []}}, "deploy.int8_calibrations"),
        ({"deploy": {"int8_fp32_candidates": ["stem"]}}, "deploy.int8_fp32_candidates"),
        ({"deploy": {"int8_fp32_candidates": ["first_conv+stem"]}}, "deploy.int8_fp32_candidates"),
        ({"deploy": {"int8_ap_tolerance": -0.1}}, "deploy.int8_ap_tolerance"),
        ({"deploy": {"int8_early_exit": ["tensorrt"]}}, "deploy.int8_early_exit"),
        ({"deploy": {"int8_early_exit": "yes"}}, "deploy.int8_early_exit"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_overrides_and_missing_file(tmp_path):
    cfg = load_config("configs/demo.toml", ["train.epochs=3", "data.root=elsewhere", "train.lr=0.5"])
    assert cfg.train.epochs == 3 and cfg.data.root == "elsewhere" and cfg.train.lr == 0.5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["epochs=3"])


@pytest.mark.parametrize("value, onnxruntime, openvino", [(True, True, True), (False, False, False),
                                                          (["openvino"], False, True), ([], False, False)])
def test_the_int8_early_exit_is_set_per_runtime(value, onnxruntime, openvino):
    from segdec_prune.int8 import Int8Search

    deploy = from_dict({"deploy": {"int8_early_exit": value}}).deploy
    assert [Int8Search.from_config(deploy, rt).early_exit for rt in ("onnxruntime", "openvino")] == [onnxruntime, openvino]
