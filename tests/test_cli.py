"""The commands a user types, end to end on tiny data."""

import json

from typer.testing import CliRunner

from segdec_prune.cli import app

runner = CliRunner()


def test_synth_check_train_evaluate(tmp_path):
    data = tmp_path / "data"
    r = runner.invoke(app, ["data", "synth", "--out", str(data), "--train", "24", "--test", "12",
                            "--positive-fraction", "0.4", "--seed", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "check", str(data)])
    assert r.exit_code == 0, r.output
    assert "train" in r.output and "24" in r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[data]\nroot = "{data}"\ninput_height = 128\ninput_width = 64\nval_fraction = 0.3\n'
        f'[train]\nepochs = 1\nbatch_size = 2\ndevice = "cpu"\n[run]\nname = "t"\ndir = "{tmp_path / "runs"}"\n'
    )
    r = runner.invoke(app, ["train", "--config", str(cfg), "--quiet"])
    assert r.exit_code == 0, r.output
    ckpt = tmp_path / "runs" / "t" / "models" / "baseline_best.pth"
    assert ckpt.is_file()
    out = tmp_path / "metrics.json"
    r = runner.invoke(app, ["evaluate", "--model", str(ckpt), "--output", str(out)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.read_text())
    for key in ("ap", "auroc", "best_f1", "fp_at_best", "fn_at_best", "dice", "iou"):
        assert key in metrics
    assert metrics["images"] == 12

    r = runner.invoke(app, ["prune", "--config", str(cfg), "--method", "ours_c1", "--ratio", "0.5", "--finetune-epochs", "1",
                            "--set", "prune.round_to=16"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prune", "--config", str(cfg), "--all", "--finetune-epochs", "0",
                            "--set", "prune.methods=['naive_fn','ours_c4']", "--set", "prune.ratios=[0.3]"])
    assert r.exit_code == 0, r.output
    models = sorted(p.stem for p in ckpt.parent.glob("*.pth"))
    assert models == ["baseline_best", "naive_fn_r30", "ours_c1_r50", "ours_c4_r30"]
    r = runner.invoke(app, ["profile", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    prof = json.loads((tmp_path / "runs" / "t" / "profiling_results.json").read_text())["models"]
    assert prof["baseline_best"]["macs_at_640x232"] > 47e9 and prof["baseline_best"]["parameters"] == 15_638_813
    assert prof["ours_c1_r50"]["widths"]["volume"][-1] == 512 and 0.4 < prof["ours_c1_r50"]["mac_reduction"] < 0.9
    assert prof["naive_fn_r30"]["param_reduction"] > 0.2

    r = runner.invoke(app, ["export", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "t" / "onnx" / "ours_c1_r50.onnx").is_file()
    r = runner.invoke(app, ["build", "--config", str(cfg), "--runtime", "onnxruntime", "--precision", "int8"])
    assert r.exit_code == 2 and "calibrate" in r.output  # INT8 needs the calibration set first
    r = runner.invoke(app, ["calibrate", "--config", str(cfg), "--set", "deploy.calibration_images=8"])
    assert r.exit_code == 0 and "8 images" in r.output, r.output
    r = runner.invoke(app, ["build", "--config", str(cfg), "--runtime", "onnxruntime", "--precision", "int8"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["build", "--config", str(cfg), "--runtime", "tensorrt", "--precision", "fp16"])
    if r.exit_code == 3:  # no TensorRT/GPU here: one line saying why
        assert r.output.startswith("tensorrt skipped: ") and len(r.output.strip().splitlines()) <= 2
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "runs" / "t" / "onnx" / "ours_c1_r50_int8.onnx")])
    assert r.exit_code == 0 and "onnxruntime" in r.output, r.output
    r = runner.invoke(app, ["evaluate", "--config", str(cfg), "--set", "deploy.runs=3", "--set", "deploy.warmup=1"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "runs" / "t" / "real_evaluation_results.json").read_text())
    combos = {(x["model"], x["runtime"], x["dtype"]) for x in res["records"]}
    assert len(combos) == 4 * 3 and ("ours_c4_r30", "onnxruntime", "int8") in combos
    for rec in res["records"]:
        assert {"ap", "auroc", "best_f1", "fp_at_best", "fn_at_best", "dice", "latency_ms_median", "latency_ms_p90",
                "throughput_ips", "threads", "device", "mac_reduction", "widths", "method", "ratio"} <= set(rec)


def test_user_errors_are_one_clear_line(tmp_path):
    r = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert r.exit_code == 1 and "missing folder" in r.output
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "config file not found" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1\n")
    r = runner.invoke(app, ["train", "--config", str(bad)])
    assert r.exit_code == 2 and "train.lr" in r.output
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "x.pth")])
    assert r.exit_code == 2 and "checkpoint not found" in r.output
    good = tmp_path / "good.toml"
    good.write_text(f'[run]\ndir = "{tmp_path}"\n')
    r = runner.invoke(app, ["prune", "--config", str(good), "--method", "l2", "--ratio", "0.2"])
    assert r.exit_code == 2 and "unknown method 'l2'" in r.output and "naive_l1" in r.output
    r = runner.invoke(app, ["prune", "--config", str(good), "--method", "naive_l1", "--ratio", "1.2"])
    assert r.exit_code == 2 and "(0, 1)" in r.output
    r = runner.invoke(app, ["prune", "--config", str(good), "--method", "naive_l1", "--ratio", "0.2"])
    assert r.exit_code == 2 and "no baseline checkpoint" in r.output
    r = runner.invoke(app, ["prune", "--config", str(good), "--set", "prune.ratios=[0.2, 1.0]", "--all"])
    assert r.exit_code == 2 and "prune.ratios" in r.output


def test_a_long_error_stays_one_line_under_an_80_column_console(tmp_path):
    """Piped output (CI, `| grep`) has 80 columns: the error is still one line, its spaces kept."""
    missing = tmp_path / ("a rather long folder name " * 4).strip() / "model.onnx"
    r = runner.invoke(app, ["evaluate", "--model", str(missing)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert str(missing) in r.output
