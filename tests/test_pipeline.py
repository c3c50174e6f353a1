"""The one-command pipeline: end to end on tiny data, resume after an interruption, outputs."""

import copy
import json
import re

import pytest
from typer.testing import CliRunner

from segdec_prune.artifacts import sha256, write_json
from segdec_prune.checkpoint import load_checkpoint
from segdec_prune.cli import app
from segdec_prune.pipeline import Manifest, execute
from segdec_prune.results import validate_results
from segdec_prune.runtimes.openvino_runtime import unavailable_reason as openvino_reason
from segdec_prune.stages import RunState, plan

runner = CliRunner()
RECORD_KEYS = {"model", "method", "ratio", "runtime", "dtype", "artifact", "device", "threads", "widths", "parameters",
               "macs", "param_reduction", "mac_reduction", "ap", "ap_paper", "auroc", "best_f1", "best_threshold",
               "fp_at_best", "fn_at_best", "precision", "recall", "f1", "fnr", "dice", "iou", "latency_ms_median",
               "latency_ms_p90", "throughput_ips", "speedup_vs_baseline", "speedup_vs_onnxruntime_fp32"}
CPU_KINDS = {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
             *([("openvino", "fp32"), ("openvino", "int8")] if openvino_reason() is None else [])}


def _config(tiny_synth, tmp_path, budgets: str = "", methods: str = '["naive_l1", "ours_c2"]'):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f'[data]\nroot = "{tiny_synth}"\ninput_height = 128\ninput_width = 64\nval_fraction = 0.3\n'
        '[train]\nepochs = 1\nbatch_size = 2\ndevice = "cpu"\n'
        f'[prune]\nmethods = {methods}\nratios = [0.5]\nfinetune_epochs = 1\ncalibration_batches = 2\n'
        'distill = true\nfinetune_momentum = 0.9\n'
        f'{budgets}'
        '[deploy]\ncalibration_images = 8\nruns = 3\nwarmup = 1\nthroughput_batch = 2\n'
        'int8_calibrations = ["minmax", "entropy"]\nint8_fp32_candidates = ["seg_head", "decision_head"]\n'
        'int8_early_exit = ["openvino"]\n'  # the demo's search: ONNX Runtime tries every candidate
        f'[run]\nname = "p"\ndir = "{tmp_path / "runs"}"\n'
    )
    return cfg


def test_run_end_to_end_then_nothing_to_do(tiny_synth, tmp_path):
    table = runner.invoke(app, ["latency-table", "--config", str(_config(tiny_synth, tmp_path))])  # before training:
    assert table.exit_code == 0 and "measured in" in table.output, table.output  # default widths
    run = tmp_path / "runs" / "p"
    [table_file] = (run / "latency").glob("onnxruntime_fp32_t2_*.json")
    target = round(0.6 * json.loads(table_file.read_text())["baseline_ms"], 2)
    budgets = f'budget_methods = ["naive_l1"]\ntarget_macs = [0.3]\ntarget_latency_ms = [{target}]\n'
    cfg = _config(tiny_synth, tmp_path, budgets)
    r = runner.invoke(app, ["run", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "latency-table:onnxruntime-fp32: done" in r.output and "reused" in r.output
    res = json.loads((run / "real_evaluation_results.json").read_text())
    assert res["schema_version"] == 5 and res["libraries"]["torch"]
    models = {x["model"] for x in res["records"]}
    budget_name = f"naive_l1_t{target:g}ms".replace(".", "p")
    assert models == {"baseline_best", "naive_l1_r50", "ours_c2_r50", "naive_l1_m30", budget_name}
    by = {(x["model"], x["runtime"], x["dtype"]): x for x in res["records"]}
    assert by["naive_l1_m30", "torch", "fp32"]["budget"]["kind"] == "macs"
    assert 0.25 <= 1 - by["naive_l1_m30", "torch", "fp32"]["mac_reduction"] <= 0.305
    for name in models:  # the table's prediction beside every ONNX Runtime FP32 measurement
        rec = by[name, "onnxruntime", "fp32"]
        assert rec["predicted_latency_ms"] > 0 and rec["latency_prediction_error"] is not None
        assert by[name, "onnxruntime", "int8"]["predicted_latency_ms"] is None  # no INT8 table was measured
    for name in models:  # every model at its own validation threshold; INT8 chosen and recorded
        thr = load_checkpoint(run / "models" / f"{name}.pth").threshold
        assert by[name, "torch", "fp32"]["threshold"] == by[name, "onnxruntime", "fp32"]["threshold"] == thr.value
        choice = by[name, "onnxruntime", "int8"]["int8"]
        n = len(choice["candidates"])  # no early exit for ONNX Runtime: all 2 calibrations + 2 groups + both
        assert choice["calibration"] in ("minmax", "entropy") and n == 2 + 2 + 1 and not choice["early_exit"]
        assert by[name, "onnxruntime", "int8"]["threshold_source"] == "validation best-F1 (INT8 model)"
    meta = load_checkpoint(run / "models" / f"{budget_name}.pth").metadata
    assert meta["ratio"] is None and meta["plan"]["budget"]["value"] == target and meta["plan"]["measured_plan_ms"] > 0
    assert {(x["runtime"], x["dtype"]) for x in res["records"]} == CPU_KINDS  # OpenVINO where it is installed
    for name in models if openvino_reason() is None else ():  # its INT8 chosen on validation, its own threshold
        ov = by[name, "openvino", "int8"]
        assert ov["int8"]["calibration"] in ("inputs:minmax", "inputs:entropy", "qdq", "nncf")
        assert ov["threshold_source"] == "validation best-F1 (INT8 model)"
        assert by[name, "openvino", "fp32"]["ap"] == pytest.approx(by[name, "onnxruntime", "fp32"]["ap"], abs=1e-6)
    base = by["baseline_best", "onnxruntime", "fp32"]["latency_ms_median"]
    for (name, runtime, dtype), rec in by.items():  # two speed-ups: same runtime and dtype, and vs the trained baseline
        assert rec["speedup_vs_onnxruntime_fp32"] == (pytest.approx(base / rec["latency_ms_median"])
                                                      if runtime != "torch" else None)
    validate_results(res)
    for rec in res["records"]:
        assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
        assert 0 <= rec["ap"] <= 1 and rec["latency_ms_median"] > 0
    broken = copy.deepcopy(res)
    broken["records"][1]["dtype"] = "float32"
    with pytest.raises(ValueError, match="records/1/dtype"):
        validate_results(broken)
    for name in ("chart1_master_benchmark.png", "chart2_pareto.png", "chart3_qualitative.png"):
        assert (run / "charts" / name).stat().st_size > 10_000
    manifest = json.loads((run / "manifest.json").read_text())["steps"]
    assert manifest["train"]["status"] == "done" and manifest["train"]["versions"]["torch"]
    # evaluate says where its time went: a test pass per runtime x dtype, summed from the records
    passes = sum(r["eval_seconds"] for r in res["records"])
    assert re.search(rf"test passes {passes:.0f} s \(torch fp32 \d+, onnxruntime fp32 \d+, onnxruntime int8 \d+.*\), "
                     r"the rest \d+ s", manifest["evaluate"]["detail"]), manifest["evaluate"]["detail"]
    assert not list(run.rglob(".*.tmp"))
    teacher = list((run / "teacher").glob("outputs_*.pt"))  # one teacher pass, shared by both models
    digest = sha256(run / "models" / "baseline_best.pth")
    assert [p.name for p in teacher] == [f"outputs_{digest[:16]}.pt"]
    meta = load_checkpoint(run / "models" / "ours_c2_r50.pth").metadata
    assert meta["teacher_sha256"] == digest and meta["prune_config"]["distill"] is True
    assert meta["rounds"][0]["iterations"] > 0 and meta["finetune_config"]["momentum"] == 0.9
    again = runner.invoke(app, ["run", "--config", str(cfg)])
    assert again.exit_code == 0, again.output
    assert ": done in" not in again.output  # every step was up to date
    assert "which model to ship" in again.output and "baseline_best" in again.output
    forced = runner.invoke(app, ["run", "--config", str(cfg), "--force", "charts"])
    assert "charts: done" in forced.output and "train: done" not in forced.output
    bad = runner.invoke(app, ["run", "--config", str(cfg), "--force", "nonsense"])
    assert bad.exit_code == 2 and "no such stage" in bad.output


def test_interrupted_run_resumes_where_it_stopped(tiny_synth, tmp_path, monkeypatch):
    from segdec_prune.config import load_config

    cfg = load_config(_config(tiny_synth, tmp_path))
    calls = []
    real_prune = RunState.prune

    def flaky(self, method, ratio, epochs):
        calls.append(method.name)
        if method.name == "ours_c2" and calls.count("ours_c2") == 1:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second pruned model
        return real_prune(self, method, ratio, epochs)

    monkeypatch.setattr(RunState, "prune", flaky)
    steps = [s for s in plan(cfg, RunState(cfg)) if s.stage in ("train", "prune", "")][:3]
    manifest = Manifest.load(cfg.run_dir)
    with pytest.raises(KeyboardInterrupt):
        execute(steps, manifest, set(), {}, "cpu")
    assert set(Manifest.load(cfg.run_dir).steps) == {"train", "prune:naive_l1_r50"}
    assert not (cfg.run_dir / "models" / "ours_c2_r50.pth").exists()
    outcomes = execute(plan(cfg, RunState(cfg))[:3], Manifest.load(cfg.run_dir), set(), {}, "cpu")
    assert [o.status for o in outcomes] == ["skipped", "skipped", "done"]
    assert calls == ["naive_l1", "ours_c2", "ours_c2"]


def test_json_artifacts_are_strict_json(tmp_path):
    path = write_json({"dice": float("nan"), "xs": [float("inf"), 0.5], "n": 3}, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"dice": None, "xs": [None, 0.5], "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_a_data_folders_fingerprint_is_the_one_earlier_manifests_hold(tmp_path):
    """The scandir walk gives what `sorted(rglob)` gave (names, sizes, times in path-component order,
    linked folders not walked), so runs recorded before it are still up to date; any change shows."""
    import hashlib
    import os

    from segdec_prune.pipeline import folder_fingerprint

    def by_rglob(folder):
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    root = tmp_path / "data"
    for rel in ("a/x.png", "a-b/x.png", "a.png", "a/b/c_GT.png", "B/y.png"):  # '-' and '.' sort before '/'
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "z.png").write_bytes(b"z")
    os.symlink(outside, root / "linked")
    os.symlink(outside / "z.png", root / "a" / "z.png")  # a linked file counts, as its target
    before = folder_fingerprint(root)
    assert before == by_rglob(root)
    (root / "a-b" / "x.png").write_bytes(b"changed")
    assert folder_fingerprint(root) != before
