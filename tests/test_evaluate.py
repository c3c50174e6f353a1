"""Evaluation split in two: per-model test passes (the pipeline's `test:` steps, beside other
steps) and one timing pass over every model; the stored test metrics are those of a fresh pass."""

import json
import shutil

import pytest

from segdec_prune.config import load_config
from segdec_prune.results import evaluate_run, model_test_passes, model_test_file


@pytest.fixture
def run_copy(shipped, tmp_path):
    cfg_file, run = shipped
    copy = tmp_path / "runs" / "s"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "test", ignore_errors=True)
    return load_config(cfg_file, [f"run.dir={tmp_path / 'runs'}"])


def _metrics(records):
    return {(r["model"], r["runtime"], r["dtype"]): (r["ap"], r["auroc"], r["dice"], r["f1"]) for r in records}


def test_stored_test_passes_give_the_metrics_of_a_fresh_pass_and_are_reused(run_copy):
    cfg = run_copy
    first = evaluate_run(cfg)  # no test files yet: every pass runs here
    assert first["seconds"]["tested_here"] > 0
    assert model_test_file(cfg.run_dir, "baseline_best").is_file() and model_test_file(cfg.run_dir, "naive_l1_r50").is_file()
    fresh = {}
    for name in ("baseline_best", "naive_l1_r50"):  # a fresh read and pass, as a `test:` step makes them
        for r in model_test_passes(cfg, name, threads=1)["records"]:
            fresh[name, r["runtime"], r["dtype"]] = (r["ap"], r["auroc"], r["dice"], r["f1"])
    stored = _metrics(first["records"])
    assert set(stored) == set(fresh) and len(stored) >= 3
    for key, values in stored.items():
        assert values == pytest.approx(fresh[key], abs=1e-6), key
    again = evaluate_run(cfg)  # up to date: only the timing runs
    assert again["seconds"]["tested_here"] == 0
    assert _metrics(again["records"]) == _metrics(first["records"])
    for r in again["records"]:  # timed here, every record: batch-1 latency and batch throughput
        assert r["latency_ms_median"] > 0 and r["throughput_ips"] > 0
        assert r["throughput_batch"] == cfg.deploy.throughput_batch and r["eval_seconds"] > 0


def test_a_stale_test_file_is_computed_again(run_copy):
    cfg = run_copy
    evaluate_run(cfg)
    path = model_test_file(cfg.run_dir, "naive_l1_r50")
    doc = json.loads(path.read_text())
    doc["records"][0]["ap"] = 0.123  # a doctored file with the right key is what evaluate reads
    path.write_text(json.dumps(doc))
    reused = evaluate_run(cfg)
    assert reused["seconds"]["tested_here"] == 0
    assert 0.123 in [r["ap"] for r in reused["records"] if r["model"] == "naive_l1_r50"]
    onnx = cfg.run_dir / "onnx" / "naive_l1_r50.onnx"
    onnx.write_bytes(onnx.read_bytes())  # same bytes: the key holds (content, not time)
    assert evaluate_run(cfg)["seconds"]["tested_here"] == 0
    doc["key"]["artifacts"]["onnxruntime fp32"] = "0" * 64  # as if the model had been exported again
    path.write_text(json.dumps(doc))
    redone = evaluate_run(cfg)
    assert redone["seconds"]["tested_here"] > 0
    assert 0.123 not in [r["ap"] for r in redone["records"] if r["model"] == "naive_l1_r50"]
