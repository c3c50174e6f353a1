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
