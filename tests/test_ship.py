"""Shipping a model: `predict`, `bundle` + predict_onnx.py / predict_openvino.py, the stored
threshold, INT8 chosen on validation data, the ship table's operating point, damaged model files;
OpenVINO beside ONNX Runtime (skipped where it is not installed)."""

import csv
import json
import subprocess
import sys

import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from segdec_prune.checkpoint import load_checkpoint
from segdec_prune.cli import app
from segdec_prune.config import load_config
from segdec_prune.deploy import ir_info, onnx_info
from segdec_prune.runtimes.openvino_runtime import unavailable_reason as openvino_reason

runner = CliRunner()
OPENVINO = openvino_reason() is None
needs_openvino = pytest.mark.skipif(not OPENVINO, reason=f"OpenVINO unusable here: {openvino_reason()}")


def _invoke(*args: str):
    r = runner.invoke(app, list(args))
    return r, r.output.replace("\n", "")  # the console wraps long lines


def _rows(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def test_threshold_round_trips_checkpoint_onnx_card(shipped, tmp_path):
    cfg, run = shipped
    for name in ("baseline_best", "naive_l1_r50"):
        stored = load_checkpoint(run / "models" / f"{name}.pth").threshold
        assert stored is not None and stored.source == "validation best-F1" and 0 < stored.value < 1
        assert onnx_info(run / "onnx" / f"{name}.onnx").threshold == stored
        int8 = onnx_info(run / "onnx" / f"{name}_int8.onnx")
        assert int8.threshold.source == "validation best-F1 (INT8 model)"
    r, out = _invoke("bundle", "--config", str(cfg), "--model", "naive_l1_r50", "--out", str(tmp_path / "b"))
    assert r.exit_code == 0, out
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert card["threshold"]["fp32"]["value"] == load_checkpoint(run / "models" / "naive_l1_r50.pth").threshold.value
    assert card["input"]["height"] == 128 and card["architecture"]["widths"]["volume"]
    assert card["calibration"]["int8_choice"]["calibration"] in ("minmax", "percentile")
    assert card["libraries"]["onnxruntime"] and card["config"]["data"]["input_width"] == 64


def test_predict_folder_with_a_corrupt_image(shipped, images, tmp_path):
    _, run = shipped
    out = tmp_path / "pred"
    r, text = _invoke("predict", str(images), "--model", str(run / "onnx" / "naive_l1_r50.onnx"), "--out", str(out),
                      "--overlays", "--batch", "4")
    assert r.exit_code == 1, text
    assert "broken.png" in text and "6 images scored" in text
    assert "validation best-F1" in text  # the threshold is the model's own, and says so
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 6 and "broken.png" not in {p for row in rows for p in row["path"].split("/")}
    thr = onnx_info(run / "onnx" / "naive_l1_r50.onnx").threshold.value
    for row in rows:
        assert row["defective"] == ("yes" if float(row["score"]) >= thr else "no") and float(row["ms"]) > 0
        native = cv2.imread(row["path"]).shape
        assert cv2.imread(str(out / row["overlay"])).shape == native  # the defect map at the image's own size
    assert any(cv2.imread(row["path"]).shape[:2] == (517, 301) for row in rows)


def test_scores_agree_pth_onnx_and_bundle_script(shipped, images, tmp_path):
    cfg, run = shipped
    (images / "broken.png").unlink()
    scores = {}
    for kind, model in (("pth", run / "models" / "naive_l1_r50.pth"), ("onnx", run / "onnx" / "naive_l1_r50.onnx")):
        r, text = _invoke("predict", str(images), "--model", str(model), "--out", str(tmp_path / kind), "--batch", "3")
        assert r.exit_code == 0, text
        scores[kind] = {row["path"]: float(row["score"]) for row in _rows(tmp_path / kind / "predictions.csv")}
    bundle = tmp_path / "bundle"
    assert _invoke("bundle", "--config", str(cfg), "--model", "naive_l1_r50", "--out", str(bundle))[0].exit_code == 0
    script = subprocess.run([sys.executable, str(bundle / "predict_onnx.py"), str(bundle / "naive_l1_r50.onnx"),
                             str(images), "--out", str(tmp_path / "script.csv")], capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    rows = _rows(tmp_path / "script.csv")
    scores["script"] = {row["path"]: float(row["score"]) for row in rows}
    assert len(scores["script"]) == 6 and scores["script"].keys() == scores["pth"].keys()
    for path, ref in scores["pth"].items():
        assert abs(scores["onnx"][path] - ref) < 1e-3 and abs(scores["script"][path] - ref) < 1e-3
    predicted = {row["path"]: row["defective"] for row in _rows(tmp_path / "onnx" / "predictions.csv")}
    assert {row["path"]: row["defective"] for row in rows} == predicted  # same threshold, from the metadata


def test_bundle_replaces_an_old_bundle_but_not_other_folders(shipped, tmp_path):
    cfg, _ = shipped
    out = tmp_path / "b"
    for _ in range(2):
        r, text = _invoke("bundle", "--config", str(cfg), "--model", "baseline_best", "--out", str(out))
        assert r.exit_code == 0, text
    openvino = ["baseline_best_fp32.bin", "baseline_best_fp32.xml", "baseline_best_int8.bin", "baseline_best_int8.xml",
                "predict_openvino.py"] if OPENVINO else []
    assert sorted(p.name for p in out.iterdir()) == sorted(["baseline_best.onnx", "baseline_best_int8.onnx",
                                                            "model_card.json", "predict_onnx.py", *openvino])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    r, text = _invoke("bundle", "--config", str(cfg), "--model", "baseline_best", "--out", str(other))
    assert r.exit_code == 2 and "not a segdec-prune bundle" in text and (other / "notes.txt").exists()
    r, text = _invoke("bundle", "--config", str(cfg), "--model", "nope", "--out", str(tmp_path / "c"))
    assert r.exit_code == 2 and "no FP32 ONNX file" in text and "naive_l1_r50" in text


def _build_watching_datasets(shipped, monkeypatch, runtime):
    """Build naive_l1_r50's INT8 for `runtime`, recording the image ids of every data set the search
    predicts on; (path, choice, the ids seen per pass, validation ids, test ids)."""
    import segdec_prune.int8 as int8
    from segdec_prune.calibration import calibration_path, load_calibration
    from segdec_prune.data.ksdd2 import scan_split
    from segdec_prune.stages import RunState, build_model

    cfg, _ = shipped
    config = load_config(cfg)
    state = RunState(config)
    val_ids = {s["id"] for s in state.sets[1].samples}
    test_ids = {r.id for r in scan_split(config.data.root, "test")}
    seen = []
    real = int8.predict
    monkeypatch.setattr(int8, "predict", lambda rt, ds, **kw: seen.append({s["id"] for s in ds.samples}) or real(rt, ds, **kw))
    path, choice = build_model(state, "naive_l1_r50", runtime, "int8", load_calibration(calibration_path(config)))
    return path, choice, seen, val_ids, test_ids


def test_int8_is_chosen_on_validation_data_only(shipped, monkeypatch):
    _, choice, seen, val_ids, test_ids = _build_watching_datasets(shipped, monkeypatch, "onnxruntime")
    assert len(seen) == len(choice["candidates"]) == 2 + 1  # 2 calibrations, 1 FP32 layer group; FP32's scores stored
    assert choice["reference"].startswith("validation scores stored at training")
    assert all(ids == val_ids for ids in seen) and not val_ids & test_ids
    assert choice["val_images"] == len(val_ids) and {c["calibration"] for c in choice["candidates"]} == {"minmax", "percentile"}


def test_the_int8_builds_reuse_the_validation_scores_stored_at_training_only_for_the_same_images(shipped):
    """Prune stored the model's validation scores and export carried them: they equal a pass of
    the FP32 file, no INT8 file carries them, and other images (one fewer, one changed) get None."""
    from segdec_prune.data.dataset import KSDD2Dataset
    from segdec_prune.deploy import open_runtime, stored_val_scores
    from segdec_prune.evaluation import predict
    from segdec_prune.stages import RunState

    cfg, run = shipped
    val = RunState(load_config(cfg)).sets[1]
    info = onnx_info(run / "onnx" / "naive_l1_r50.onnx")
    stored = stored_val_scores(info, val)
    fresh = predict(open_runtime(run / "onnx" / "naive_l1_r50.onnx", threads=1)[0], val).scores
    assert stored is not None and len(stored) == len(val)
    np.testing.assert_allclose(stored, fresh, atol=1e-5, rtol=0)
    int8 = [onnx_info(run / "onnx" / "naive_l1_r50_int8.onnx")]
    int8 += [ir_info(run / "openvino" / "naive_l1_r50_int8.xml")] if OPENVINO else []
    assert all("val_scores" not in i.metadata and "int8" in i.metadata for i in int8)
    changed = [dict(s) for s in val.samples]
    changed[0]["image"] = changed[0]["image"].copy()
    changed[0]["image"][0, 0, 0] ^= 1
    assert stored_val_scores(info, KSDD2Dataset(val.samples[1:])) is None
    assert stored_val_scores(info, KSDD2Dataset(changed)) is None


def test_validation_threshold_drives_evaluate_and_the_ship_table(shipped):
    from segdec_prune.tables import ship_table

    cfg, run = shipped
    r, text = _invoke("evaluate", "--config", str(cfg))
    assert r.exit_code == 0, text
    res = json.loads((run / "real_evaluation_results.json").read_text())
    by = {(x["model"], x["runtime"], x["dtype"]): x for x in res["records"]}
    stored = load_checkpoint(run / "models" / "naive_l1_r50.pth").threshold.value
    rec = by["naive_l1_r50", "onnxruntime", "fp32"]
    assert rec["threshold"] == pytest.approx(stored) and rec["threshold_source"] == "validation best-F1"
    assert by["naive_l1_r50", "onnxruntime", "int8"]["int8"]["calibration"] in ("minmax", "percentile")
    assert rec["int8"] is None
    # Two models whose test-optimal F1 and validation-threshold F1 disagree: the table shows the latter.
    rows = [dict(rec, model="baseline_best", f1=0.41, best_f1=0.99, fp_at_threshold=7, fn_at_threshold=3,
                 latency_ms_median=9.0, ap=0.8),
            dict(rec, model="m", f1=0.52, best_f1=0.98, fp_at_threshold=5, fn_at_threshold=4, latency_ms_median=4.0, ap=0.9)]
    console_text = _render(ship_table(rows))
    assert "0.410" in console_text and "0.520" in console_text and "7/3" in console_text and "5/4" in console_text
    assert "0.990" not in console_text and "0.980" not in console_text and "validation threshold" in console_text


def _render(table) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return " ".join(console.export_text().split())


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_model_files_in_predict_build_and_bundle(shipped, images, tmp_path, damage):
    cfg, run = shipped
    rng = np.random.default_rng(1)
    for good in (run / "onnx" / "naive_l1_r50.onnx", run / "models" / "naive_l1_r50.pth"):
        bad = tmp_path / f"bad{good.suffix}"
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else rng.bytes(4096))
        r, text = _invoke("predict", str(images), "--model", str(bad), "--out", str(tmp_path / "p"))
        assert r.exit_code == 2 and str(bad) in text and "Traceback" not in text, text
    # The same damage inside a run: build and bundle name the file.
    broken = tmp_path / "run_copy"
    shutil.copytree(run, broken / "s")
    target = broken / "s" / "onnx" / "naive_l1_r50.onnx"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3] if damage == "truncated" else rng.bytes(4096))
    override = ["--set", f"run.dir={broken}"]
    for args in (["build", "--precision", "int8"], ["bundle", "--model", "naive_l1_r50", "--out", str(tmp_path / "b")]):
        r, text = _invoke(args[0], "--config", str(cfg), *override, *args[1:])
        assert r.exit_code == 2 and "naive_l1_r50.onnx" in text and "Traceback" not in text, text


def test_a_run_from_before_thresholds_gets_them_at_export(shipped, tmp_path):
    """A checkpoint without a stored threshold: export computes the validation one (what prune
    would have stored), and evaluate uses it for every runtime of that model."""
    from segdec_prune.checkpoint import save_checkpoint

    cfg, run = shipped
    old = tmp_path / "old" / "s"
    shutil.copytree(run, old)
    ckpt = load_checkpoint(old / "models" / "naive_l1_r50.pth")
    meta = {k: v for k, v in ckpt.metadata.items() if k != "threshold"}
    save_checkpoint(old / "models" / "naive_l1_r50.pth", ckpt.model, ckpt.input_spec, meta)
    override = ["--set", f"run.dir={tmp_path / 'old'}"]
    r, text = _invoke("export", "--config", str(cfg), *override)
    assert r.exit_code == 0 and "computed" in text, text
    computed = onnx_info(old / "onnx" / "naive_l1_r50.onnx").threshold
    assert computed.source == "validation best-F1 (computed at export)"
    assert computed.value == pytest.approx(ckpt.threshold.value, abs=1e-6)  # the same weights, the same split
    (old / "onnx" / "naive_l1_r50_int8.onnx").unlink()
    shutil.rmtree(old / "openvino", ignore_errors=True)  # converted from the old export: stale too
    r, text = _invoke("evaluate", "--config", str(cfg), *override)
    assert r.exit_code == 0, text
    recs = [x for x in json.loads((old / "real_evaluation_results.json").read_text())["records"] if x["model"] == "naive_l1_r50"]
    assert {x["runtime"] for x in recs} == {"torch", "onnxruntime"}
    assert all(x["threshold"] == computed.value and "computed at export" in x["threshold_source"] for x in recs)


@needs_openvino
def test_openvino_fp32_equals_onnxruntime_and_carries_the_metadata(shipped, tmp_path):
    from segdec_prune.deploy import open_runtime

    _, run = shipped
    x = np.random.default_rng(0).random((3, 3, 128, 64), dtype=np.float32)
    for name in ("baseline_best", "naive_l1_r50"):
        ov, info = open_runtime(run / "openvino" / f"{name}_fp32.xml", threads=1)
        ort, ort_info = open_runtime(run / "onnx" / f"{name}.onnx", threads=1)
        for got, ref in zip(ov.predict(x), ort.predict(x)):
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        assert info.spec == ort_info.spec and info.threshold == ort_info.threshold and ov.precision == "fp32"
    int8 = ir_info(run / "openvino" / "naive_l1_r50_int8.xml")
    assert int8.threshold.source == "validation best-F1 (INT8 model)" and int8.metadata["int8"]["calibration"] in (
        "inputs:minmax", "inputs:percentile", "qdq", "nncf")


@needs_openvino
def test_openvino_compiles_per_batch_and_pads_a_partial_batch_to_the_same_outputs(shipped):
    from segdec_prune.runtimes.openvino_runtime import OpenVinoRuntime, compile_config, read_ir

    _, run = shipped
    x = np.random.default_rng(1).random((11, 3, 128, 64), dtype=np.float32)
    for precision in ("fp32", "int8"):
        path = run / "openvino" / f"naive_l1_r50_{precision}.xml"
        rt = OpenVinoRuntime(path, threads=1, precision=precision)
        full, padded, one = rt.predict(x[3:]), rt.predict(x[8:]), rt.predict(x[8:9])  # 8; 3 padded to 8; 1
        assert sorted(rt.compiled) == [1, 8]
        for f, p in zip(full, padded):  # the same compiled batch: padding changes no other image's output
            np.testing.assert_array_equal(p, f[5:])
        if precision == "fp32":  # the static graphs compute what the exported dynamic one does
            dynamic = rt.core.compile_model(read_ir(path), "CPU", compile_config(1))
            ref = dynamic.create_infer_request().infer({0: x})
            want = np.asarray(ref[dynamic.output("decision")])[:, 0], np.asarray(ref[dynamic.output("segmentation")])
            for f, o, w in zip(full, one, want):
                np.testing.assert_allclose(f, w[3:], atol=1e-4, rtol=0)
                np.testing.assert_allclose(o, w[8:9], atol=1e-4, rtol=0)


@needs_openvino
def test_openvino_reads_onnx_as_its_converter_does_without_calling_it(shipped, monkeypatch):
    """The same graph as `openvino.convert_model` (FP32 and the QDQ INT8 file), without the
    converter: its telemetry forked the whole worker process for every event."""
    import openvino as ov

    from segdec_prune.runtimes import openvino_runtime
    from segdec_prune.runtimes.openvino_runtime import OpenVinoRuntime, convert

    _, run = shipped
    x = np.random.default_rng(2).random((2, 3, 128, 64), dtype=np.float32)
    for onnx_file in ("naive_l1_r50.onnx", "naive_l1_r50_int8.onnx"):
        path = run / "onnx" / onnx_file
        want = ov.convert_model(str(path))
        with monkeypatch.context() as m:
            m.setattr(openvino_runtime._ov(), "convert_model", lambda *a, **k: pytest.fail("convert_model called"))
            got = convert(path)
        assert [op.get_type_name() for op in got.get_ordered_ops()] == [op.get_type_name() for op in want.get_ordered_ops()]
        for g, w in zip(OpenVinoRuntime(got, 1).predict(x), OpenVinoRuntime(want, 1).predict(x)):
            np.testing.assert_array_equal(g, w)


@needs_openvino
def test_an_openvino_fp32_build_that_differs_from_onnxruntime_is_not_written(shipped, tmp_path, monkeypatch):
    import segdec_prune.deploy as deploy
    from segdec_prune.export import ExportCheckError

    _, run = shipped
    copy = tmp_path / "s"
    shutil.copytree(run, copy)
    (copy / "openvino" / "naive_l1_r50_fp32.xml").unlink()
    monkeypatch.setattr(deploy, "OPENVINO_ATOL", 0.0)  # any difference at all now fails the check
    with pytest.raises(ExportCheckError, match="OpenVINO FP32 differs from ONNX Runtime by up to"):
        deploy.build_artifact(copy, "naive_l1_r50", "openvino", "fp32", None)
    assert not (copy / "openvino" / "naive_l1_r50_fp32.xml").exists()
    assert not [p for p in (copy / "openvino").iterdir() if p.name.startswith(".")]


@needs_openvino
def test_openvino_int8_is_chosen_on_validation_data_only(shipped, monkeypatch):
    path, choice, seen, val_ids, test_ids = _build_watching_datasets(shipped, monkeypatch, "openvino")
    tried = [(c["calibration"], c["fp32_layers"]) for c in choice["candidates"]]
    assert tried == [("inputs:minmax", []), ("inputs:percentile", []), ("qdq", []), ("nncf", []),
                     ("nncf", ["first_conv"])]  # the full search of the config
    assert len(seen) == 5 and all(ids == val_ids for ids in seen) and not val_ids & test_ids  # FP32's scores stored
    assert path.suffix == ".xml" and ir_info(path).metadata["int8"]["val_images"] == len(val_ids)


@needs_openvino
def test_openvinos_inputs_only_qdq_file_leaves_conv_outputs_fp32_keeps_the_pixels_exact_and_runs_int8(shipped, tmp_path):
    """The "inputs:" candidates' file: no Q on a conv output (FeatureNorm reads it in FP32), the
    image quantized on its own 8-bit grid (every pixel value comes back exactly; the calibrated
    range of ONNX Runtime's file does not), and OpenVINO still runs every convolution in INT8."""
    import onnx
    import openvino as ov

    from segdec_prune.calibration import calibration_path, load_calibration
    from segdec_prune.runtimes.onnxruntime_runtime import prepare_for_quantization, quantize_prepared
    from segdec_prune.runtimes.openvino_runtime import compile_config, convert

    cfg, run = shipped
    calib = load_calibration(calibration_path(load_config(cfg)))
    pre = prepare_for_quantization(run / "onnx" / "naive_l1_r50.onnx", tmp_path / "pre.onnx")
    pixels = np.arange(256, dtype=np.float32) / 255
    for layout, exact in (({}, False), ({"conv_outputs": False, "input_range": (0.0, 1.0)}, True)):
        path = quantize_prepared(pre, tmp_path / "q.onnx", calib, method="minmax", **layout)
        graph = onnx.load(str(path))
        made_by = {out: node.op_type for node in graph.graph.node for out in node.output}
        quants = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
        assert ("Conv" in {made_by.get(q.input[0]) for q in quants}) != exact
        init = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
        scale, zero = (init[n] for n in next(q for q in quants if q.input[0] == "image").input[1:])
        codes = np.clip(np.round(pixels / scale) + zero, 0, 255)
        assert np.array_equal(codes, np.arange(256)) == exact  # pixel k -> code k: nothing clipped, nothing merged
        compiled = ov.Core().compile_model(convert(path), "CPU", compile_config(1))
        convs = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ops()
                 if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
        assert convs and set(convs) <= {"u8", "i8"}, convs


@needs_openvino
def test_bundle_predict_openvino_gives_the_decisions_of_predict(shipped, images, tmp_path):
    cfg, run = shipped
    (images / "broken.png").unlink()
    model = run / "openvino" / "naive_l1_r50_int8.xml"
    r, text = _invoke("predict", str(images), "--model", str(model), "--out", str(tmp_path / "p"), "--batch", "3")
    assert r.exit_code == 0 and "validation best-F1 (INT8 model)" in text, text
    bundle = tmp_path / "bundle"
    assert _invoke("bundle", "--config", str(cfg), "--model", "naive_l1_r50", "--out", str(bundle))[0].exit_code == 0
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["files"]["openvino_int8"]["weights"] == "naive_l1_r50_int8.bin"
    assert card["threshold"]["openvino_int8"]["source"] == "validation best-F1 (INT8 model)"
    script = subprocess.run([sys.executable, str(bundle / "predict_openvino.py"), str(bundle / model.name), str(images),
                             "--out", str(tmp_path / "script.csv"), "--threads", "1"], capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    ours = {row["path"]: row for row in _rows(tmp_path / "p" / "predictions.csv")}
    theirs = {row["path"]: row for row in _rows(tmp_path / "script.csv")}
    assert len(theirs) == 6 and theirs.keys() == ours.keys()
    for path, row in theirs.items():
        assert row["defective"] == ours[path]["defective"] and row["threshold"] == ours[path]["threshold"]
        assert abs(float(row["score"]) - float(ours[path]["score"])) < 1e-4


@needs_openvino
@pytest.mark.parametrize("damage", ["no_bin", "truncated_bin", "foreign"])
def test_a_bad_openvino_ir_gives_one_line(shipped, images, tiny_synth, tmp_path, damage):
    from segdec_prune.runtimes.openvino_runtime import convert, save_ir

    _, run = shipped
    xml = tmp_path / "m.xml"
    if damage == "foreign":  # a valid IR that segdec-prune did not write: no input spec
        save_ir(convert(run / "onnx" / "naive_l1_r50.onnx"), xml, {})
    else:
        shutil.copy2(run / "openvino" / "naive_l1_r50_fp32.xml", xml)
        data = (run / "openvino" / "naive_l1_r50_fp32.bin").read_bytes()
        if damage == "truncated_bin":
            xml.with_suffix(".bin").write_bytes(data[: len(data) // 3])
    expected = {"no_bin": "m.bin is missing", "truncated_bin": "truncated or damaged",
                "foreign": "not exported by segdec-prune"}[damage]
    for args in (["evaluate", "--model", str(xml), "--data", str(tiny_synth)],
                 ["predict", str(images), "--model", str(xml), "--out", str(tmp_path / "p")]):
        r, text = _invoke(*args)
        assert r.exit_code == 2 and expected in text and "Traceback" not in text, text
