"""ONNX export, ONNX Runtime FP32/INT8, latency, and the TensorRT path (skipped without a GPU)."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segdec_prune.checkpoint import InputSpec, save_checkpoint
from segdec_prune.deploy import build_artifact, onnx_info, open_runtime
from segdec_prune.int8 import Int8Search
from segdec_prune.data.dataset import KSDD2Dataset, load_split
from segdec_prune.data.ksdd2 import Preprocessing
from segdec_prune.evaluation import interleaved_latency, measure_latency, predict
from segdec_prune.export import ExportCheckError, compare, export_and_verify, export_onnx
from segdec_prune.model import SegDecNet
from segdec_prune.pruning.methods import get_method
from segdec_prune.pruning.prune import prune_model
from segdec_prune.runtimes import TorchRuntime
from segdec_prune.runtimes.onnxruntime_runtime import OnnxRuntime, quantize_int8
from segdec_prune.runtimes.tensorrt_runtime import TensorRTUnavailable, unavailable_reason

from .conftest import SIZE, SMALL


@pytest.fixture(scope="module")
def images(batches):
    return torch.cat([b["image"] for b in batches]).numpy()


@pytest.fixture(scope="module")
def val_set(tiny_synth):
    """Stands in for a validation split (the tiny test split: both classes, 16 images)."""
    return KSDD2Dataset(load_split(tiny_synth, "test", Preprocessing(*SIZE)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained, batches, images):
    """A run folder with a baseline and a pruned model, both exported."""
    run = tmp_path_factory.mktemp("run")
    spec = InputSpec(height=SIZE[0], width=SIZE[1])
    pruned, _ = prune_model(trained, get_method("naive_l1"), 0.5, batches, SIZE)
    for name, model in (("baseline_best", trained), ("naive_l1_r50", pruned)):
        save_checkpoint(run / "models" / f"{name}.pth", model, spec, {"name": name})
        meta = {"segdec_prune.input_spec": '{"channels": 3, "height": 128, "width": 64, "dilate": 15}'}
        export_and_verify(model, *SIZE, images[:4], run / "onnx" / f"{name}.onnx", meta)
    return run


@pytest.mark.parametrize("name", ["baseline_best", "naive_l1_r50"])
def test_export_matches_pytorch_with_dynamic_batch(run_dir, name, trained, images):
    from segdec_prune.checkpoint import load_checkpoint

    model = load_checkpoint(run_dir / "models" / f"{name}.pth").model
    ort = OnnxRuntime(run_dir / "onnx" / f"{name}.onnx", threads=1)
    dec, seg = ort.predict(images[:5])  # exported with batch 2, run with 5
    ref_dec, ref_seg = TorchRuntime(model).predict(images[:5])
    np.testing.assert_allclose(dec, ref_dec, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(seg, ref_seg, atol=1e-3, rtol=1e-3)
    assert seg.shape == (5, 1, 16, 8)
    assert onnx_info(run_dir / "onnx" / f"{name}.onnx").spec.height == 128


def test_export_check_fails_loudly(trained, images, caplog):
    caplog.set_level(logging.INFO)
    proto = export_onnx(trained, *SIZE)
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith(("torch.onnx", "onnxscript", "onnx_ir"))]
    assert not chatter, chatter[:3]  # the optimiser's per-constant INFO lines stay out of the user's terminal
    other = SegDecNet(widths=SMALL)  # different weights, same graph
    with pytest.raises(ExportCheckError, match="differs from PyTorch by up to"):
        compare(other, proto, images[:2])


def test_int8_runs_and_tracks_fp32(run_dir, images, trained):
    q = quantize_int8(run_dir / "onnx" / "baseline_best.onnx", run_dir / "onnx" / "baseline_best_int8.onnx", images)
    int8 = OnnxRuntime(q, threads=1, precision="int8")
    fp32 = OnnxRuntime(run_dir / "onnx" / "baseline_best.onnx", threads=1)
    d8, s8 = int8.predict(images)
    d32, s32 = fp32.predict(images)
    assert np.corrcoef(d8, d32)[0, 1] > 0.9
    assert np.corrcoef(s8.ravel(), s32.ravel())[0, 1] > 0.9
    import onnx

    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibration_on_our_one_thread_session_gives_the_ranges_of_onnx_runtimes_own(run_dir, images, tmp_path,
                                                                                     monkeypatch, method):
    """The calibrator's session is replaced by one of `threads` threads that does not spin; the
    ranges it collects (and so the INT8 file) are those of ONNX Runtime's own session."""
    import json

    from segdec_prune.runtimes import onnxruntime_runtime as ortq

    pre = ortq.prepare_for_quantization(run_dir / "onnx" / "baseline_best.onnx", tmp_path / "pre.onnx")
    sessions = []
    real = ortq.cpu_session
    monkeypatch.setattr(ortq, "cpu_session", lambda *a, **k: sessions.append((a, k)) or real(*a, **k))
    ortq.calibrate(pre, images, ["Conv"], {method: tmp_path / "ours.json"}, threads=1)
    assert [a[1] for a, _ in sessions] == [1] and sessions[0][1] == {"optimize": False}
    from onnxruntime.quantization.calibrate import CalibraterBase

    own, create = {}, CalibraterBase.create_inference_session  # keep the session ONNX Runtime opens itself

    def record(self):
        create(self)
        own["session"] = self.infer_session

    monkeypatch.setattr(CalibraterBase, "create_inference_session", record)
    monkeypatch.setattr(ortq, "cpu_session", lambda *a, **k: own["session"])
    ortq.calibrate(pre, images, ["Conv"], {method: tmp_path / "all_cores.json"}, threads=1)
    ours, theirs = (json.loads((tmp_path / f).read_text()) for f in ("ours.json", "all_cores.json"))
    assert ours == theirs and len(ours) > 3  # min/max and histogram counts: exact whatever the threads


def test_one_calibration_pass_gives_each_methods_own_ranges(run_dir, images, tmp_path):
    """Every method's ranges from one shared pass equal those of that method's own calibrator."""
    import json

    from onnxruntime.quantization.quantize import save_tensors_data

    from segdec_prune.runtimes import onnxruntime_runtime as ortq

    pre = ortq.prepare_for_quantization(run_dir / "onnx" / "baseline_best.onnx", tmp_path / "pre.onnx")
    methods = ("minmax", "entropy", "percentile")
    ortq.calibrate(pre, images, ["Conv"], {m: tmp_path / f"shared_{m}.json" for m in methods}, threads=1)
    for m in methods:  # the method's own ONNX Runtime calibrator
        ortq._collect(pre, images, ["Conv"], m, False, 1,
                      lambda c, m=m: save_tensors_data(c.compute_data(), tmp_path / f"own_{m}.json"))
        shared, own = (json.loads((tmp_path / f"{k}_{m}.json").read_text()) for k in ("shared", "own"))
        assert shared == own and len(own["data"]) > 3, m


@pytest.mark.parametrize("early_exit", [True, False])
def test_int8_search_goes_on_until_a_candidate_holds_ap(run_dir, images, val_set, monkeypatch, early_exit):
    """The first candidate (minmax) loses AP: the early exit stops at the next one that holds it,
    the full search tries all and keeps one that holds it too."""
    import itertools

    import segdec_prune.int8 as int8

    good = np.where(val_set.labels, 0.9, 0.1)
    scores = itertools.chain([good, 1 - good], itertools.repeat(good))  # FP32, minmax (ranking inverted), the rest
    real = int8.predict

    def fake(runtime, dataset, batch_size=8):
        preds = real(runtime, dataset, batch_size)
        preds.scores = next(scores)
        return preds

    monkeypatch.setattr(int8, "predict", fake)
    search = Int8Search(calibrations=("minmax", "percentile"), fp32_candidates=("seg_head", "decision_head"),
                        early_exit=early_exit)
    _, choice, _ = int8.choose_int8(run_dir / "onnx" / "baseline_best.onnx", images, val_set, search)
    assert choice.within_tolerance and choice.val_ap == choice.val_ap_fp32 == 1.0
    assert choice.calibration == "percentile" and choice.early_exit is early_exit
    tried = [(c["calibration"], c["fp32_layers"]) for c in choice.candidates]
    assert tried == ([("minmax", []), ("percentile", [])] if early_exit else
                     [("minmax", []), ("percentile", []), ("percentile", ["seg_head"]),
                      ("percentile", ["decision_head"]), ("percentile", ["seg_head", "decision_head"])])


def test_build_int8_and_open_runtime(run_dir, images, val_set):
    search = Int8Search(calibrations=("minmax",), fp32_candidates=())
    built = [build_artifact(run_dir, n, "onnxruntime", "int8", images, search, val_set)
             for n in ("baseline_best", "naive_l1_r50")]
    assert [p.name for p in built] == ["baseline_best_int8.onnx", "naive_l1_r50_int8.onnx"]
    rt, info = open_runtime(built[1], threads=1)
    assert rt.precision == "int8" and info.spec.width == 64
    assert info.metadata["int8"]["calibration"] == "minmax" and info.threshold.source.endswith("(INT8 model)")
    with pytest.raises(ValueError, match="validation split"):
        build_artifact(run_dir, "baseline_best", "onnxruntime", "int8", images)
    with pytest.raises(ValueError, match="onnxruntime builds fp32, int8"):
        build_artifact(run_dir, "baseline_best", "onnxruntime", "fp16", None)
    with pytest.raises(FileNotFoundError, match="export"):
        build_artifact(run_dir, "nope", "onnxruntime", "fp32", None)


def test_latency_and_throughput_fields_without_timing_asserts(trained, images, tiny_synth):
    res = measure_latency(TorchRuntime(trained), images[0], warmup=1, runs=3)
    assert res["latency_runs"] == 3 and 0 < res["latency_ms_median"] <= res["latency_ms_p90"]
    test_set = KSDD2Dataset(load_split(tiny_synth, "test", Preprocessing(*SIZE)))
    preds = predict(TorchRuntime(trained), test_set, batch_size=3)
    assert preds.inference_seconds > 0 and len(preds.scores) == len(test_set) == 16
    assert preds.throughput()["throughput_batch"] == 3 and preds.throughput()["throughput_ips"] > 0


def test_latency_is_interleaved_across_models():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def predict(self, x):
            calls.append(self.name)
            return x[:, 0, 0, 0], x

    res = interleaved_latency([Fake("a"), Fake("b")], np.zeros((1, 4, 4), np.float32), warmup=1, runs=5, rounds=2)
    assert [r["latency_runs"] for r in res] == [5, 5]
    # warm-up each, then round 1 (3 timed each), round 2 (1 untimed + 2 timed each)
    assert "".join(calls) == "ab" + "aaa" + "bbb" + "aaa" + "bbb"


@pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT and a GPU are present")
def test_tensorrt_reports_skip_without_gpu(run_dir):
    with pytest.raises(TensorRTUnavailable, match="tensorrt skipped: "):
        build_artifact(run_dir, "baseline_best", "tensorrt", "fp16", None)


@pytest.mark.gpu
@pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT unusable here: {unavailable_reason()}")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engine_matches_pytorch(run_dir, images, trained, precision):
    from segdec_prune.runtimes.tensorrt_runtime import TensorRTRuntime

    path = build_artifact(run_dir, "baseline_best", "tensorrt", precision, images)
    dec, seg = TensorRTRuntime(path, precision).predict(images[:4])
    ref_dec, _ = TorchRuntime(trained).predict(images[:4])
    assert seg.shape == (4, 1, 16, 8)
    assert np.corrcoef(dec, ref_dec)[0, 1] > 0.95


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_model_files_give_one_clear_line(run_dir, tmp_path, tiny_synth, damage):
    from typer.testing import CliRunner

    from segdec_prune.cli import app

    rng = np.random.default_rng(0)
    for good in (run_dir / "onnx" / "naive_l1_r50.onnx", run_dir / "models" / "naive_l1_r50.pth"):
        bad = tmp_path / f"bad{good.suffix}"
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else rng.bytes(4096))
        r = CliRunner().invoke(app, ["evaluate", "--model", str(bad), "--data", str(tiny_synth)])
        out = r.output.replace("\n", "")  # the console wraps long lines
        assert r.exit_code == 2, r.output
        assert str(bad) in out and "Traceback" not in out and "weights_only=False" not in out
        assert "damaged" in out, r.output
    engine = tmp_path / "engines" / "naive_l1_r50_fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(rng.bytes(4096))
    r = CliRunner().invoke(app, ["evaluate", "--model", str(engine), "--data", str(tiny_synth)])
    out = r.output.replace("\n", "")
    assert r.exit_code == 2 and str(engine) in out and "Traceback" not in out, r.output


def test_openvinos_qdq_candidate_inherits_onnx_runtimes_validation_only_when_it_runs_the_file_as_faithfully():
    """Below tolerance on its own validation AP, OpenVINO's run of ONNX Runtime's chosen QDQ file
    holds only when ONNX Runtime's search held that file and OpenVINO's logits stay as close to FP32."""
    from segdec_prune.int8 import QDQ_LOGIT_SLACK, by_validation_ap, inherits_ort_validation

    ort = {"within_tolerance": True, "logit_error": 0.1}
    holds = inherits_ort_validation(ort)
    row = {"calibration": "qdq", "val_ap": 0.80, "logit_error": 0.1 * QDQ_LOGIT_SLACK}
    assert by_validation_ap(row, 0.82, 0.005) == ""  # 2 points below FP32 on validation
    assert holds(row, 0.82, 0.005) == "ONNX Runtime's validation of this QDQ file"
    assert holds(row, 0.80, 0.005) == "validation AP"  # its own AP holds: said so first
    assert holds({**row, "logit_error": 0.1 * QDQ_LOGIT_SLACK + 1e-3}, 0.82, 0.005) == ""  # OpenVINO drifts further
    assert holds({**row, "calibration": "nncf"}, 0.82, 0.005) == ""  # another quantization: its own AP only
    assert inherits_ort_validation({**ort, "within_tolerance": False})(row, 0.82, 0.005) == ""
    assert inherits_ort_validation(None)(row, 0.82, 0.005) == ""  # no ONNX Runtime INT8 file



@pytest.mark.parametrize("ort_error, tried", [(0.25, ["qdq"]), (0.1, ["qdq", "nncf"])])
def test_openvinos_early_exit_stops_at_the_qdq_file_only_when_it_inherits(val_set, monkeypatch, ort_error, tried):
    """qdq ranks one defect below a good image (validation AP falls), its logits move by 0.29 on
    average: with ONNX Runtime's search at 0.25 it holds and the search stops; at 0.1 NNCF runs."""
    import segdec_prune.int8 as int8

    ref = np.where(val_set.labels, 0.9, 0.1)
    qdq = ref.copy()
    qdq[np.flatnonzero(val_set.labels)[0]] = 0.08
    scores = iter([qdq, ref])  # qdq, then nncf (equal to FP32)

    def fake(runtime, dataset, batch_size=8):
        return SimpleNamespace(scores=next(scores))

    monkeypatch.setattr(int8, "predict", fake)
    search = Int8Search(fp32_candidates=("seg_head",), early_exit=True)
    order = int8._then_fp32_groups(["qdq", "nncf"], search, base="nncf")
    _, choice, _ = int8._search(order, lambda m, g: (None, m), val_set, ref, search, None, "test",
                                int8.inherits_ort_validation({"within_tolerance": True, "logit_error": ort_error}))
    assert [c["calibration"] for c in choice.candidates] == tried and choice.within_tolerance
    assert choice.held_by == ("ONNX Runtime's validation of this QDQ file" if tried == ["qdq"] else "validation AP")


def test_fp32_groups_joined_by_plus_are_one_candidate(val_set, monkeypatch):
    """ "first_conv+seg_head" is one candidate keeping both groups FP32: tried once after the
    calibrations (no single-group candidates, no "all together" repeat), and kept when its logits
    are the closest to FP32's; an unknown group in a joined entry is refused."""
    import segdec_prune.int8 as int8

    ref = np.where(val_set.labels, 0.9, 0.1)
    scores = iter([np.clip(ref + 0.05, 0, 1), np.clip(ref + 0.04, 0, 1), np.clip(ref + 0.01, 0, 1)])
    monkeypatch.setattr(int8, "predict", lambda runtime, dataset, batch_size=8: SimpleNamespace(scores=next(scores)))
    built = []
    search = Int8Search(calibrations=("minmax", "percentile"), fp32_candidates=("first_conv+seg_head",))
    order = int8._then_fp32_groups(search.calibrations, search)
    _, choice, _ = int8._search(order, lambda m, g: built.append((m, g)) or (None, m), val_set, ref, search, None, "test")
    assert built == [("minmax", ()), ("percentile", ()), ("percentile", ("first_conv", "seg_head"))]
    assert (choice.calibration, choice.fp32_layers) == ("percentile", ["first_conv", "seg_head"])
    two = Int8Search(fp32_candidates=("first_conv+seg_head", "decision_head"))
    assert list(int8._then_fp32_groups(["minmax"], two, base="minmax")([]))[1:] == [
        ("minmax", ("first_conv", "seg_head")), ("minmax", ("decision_head",)),
        ("minmax", ("first_conv", "seg_head", "decision_head"))]
    with pytest.raises(ValueError, match="first_conv\\+stem"):
        Int8Search(fp32_candidates=("first_conv+stem",))
