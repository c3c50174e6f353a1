import numpy as np
import pytest

from segdec_prune.evaluation import classification_metrics, dice_iou, segmentation_metrics


def test_hand_computed_classification_case():
    labels = np.array([1, 0, 1, 0, 0, 1], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.2, 0.1])
    m = classification_metrics(labels, scores)
    # ranking: P N P N N P -> precision at each positive: 1, 2/3, 3/6
    assert m["ap"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # ROC: of 9 (pos, neg) pairs, the positive wins 5
    assert m["auroc"] == pytest.approx(5 / 9)
    # threshold 0.5: predicted positive {0.9, 0.8, 0.7} -> TP 2, FP 1, FN 1, TN 2
    assert (m["tp_at_threshold"], m["fp_at_threshold"], m["fn_at_threshold"], m["tn_at_threshold"]) == (2, 1, 1, 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["fnr"] == pytest.approx(1 / 3)
    # best F1 over thresholds: at 0.7 (P=2/3, R=2/3) F1=0.667; at 0.1 (P=1/2, R=1) F1=0.667; at 0.9 F1=0.5
    assert m["best_f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["tp_at_best"] + m["fn_at_best"] == 3


def test_perfect_and_paper_ap():
    labels = np.array([0, 0, 1, 1], bool)
    m = classification_metrics(labels, np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["ap"] == 1 and m["auroc"] == 1 and m["best_f1"] == pytest.approx(1)
    assert m["fp_at_best"] == 0 and m["fn_at_best"] == 0 and m["best_threshold"] == pytest.approx(0.8)
    # paper's AP: trapezoid under the PR curve; differs from sklearn's step AP on imperfect rankings
    m = classification_metrics(np.array([1, 0, 1], bool), np.array([0.9, 0.8, 0.7]))
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    # PR points (recall, precision): (0, 1), (.5, 1), (.5, .5), (1, 2/3) -> .5 + .5 * (.5 + 2/3) / 2
    assert m["ap_paper"] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)


def test_single_class_is_rejected():
    with pytest.raises(ValueError, match="both"):
        classification_metrics(np.array([1, 1], bool), np.array([0.2, 0.3]))


def test_dice_iou_hand_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert dice_iou(a, b) == pytest.approx((2 * 4 / 16, 4 / 12))
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)


def test_segmentation_metrics_upsample_to_mask():
    prob = np.zeros((2, 2), np.float32)
    prob[0, 0] = 1.0
    mask = np.zeros((16, 16), np.uint8)
    mask[:8, :8] = 1
    m = segmentation_metrics([prob], [mask])
    assert m["seg_images"] == 1 and 0.3 < m["dice"] <= 1.0
    m = segmentation_metrics([np.ones((2, 2))], [mask])
    assert m["dice"] == pytest.approx(2 * 64 / (256 + 64))


def test_pareto_front_keeps_only_undominated_models_fastest_first():
    from segdec_prune.results import pareto_front

    def rec(model, ms, ap, runtime="onnxruntime"):
        return {"model": model, "runtime": runtime, "latency_ms_median": ms, "ap": ap}

    records = [rec("slow_good", 50, 0.95), rec("fast_bad", 5, 0.60), rec("dominated", 20, 0.70),
               rec("middle", 10, 0.90), rec("tie_slower", 12, 0.90), rec("undefined", 1, None),
               rec("torch_fastest", 1, 0.99, runtime="torch")]
    assert [r["model"] for r in pareto_front(records)] == ["fast_bad", "middle", "slow_good"]
    assert [r["model"] for r in pareto_front(records, runtime=None)] == ["torch_fastest"]
    both = [*records, rec("ov_fast", 3, 0.92, runtime="openvino")]  # the CPU runtimes compete with each other
    assert [r["model"] for r in pareto_front(both)] == ["ov_fast", "slow_good"]
    assert [r["model"] for r in pareto_front(both, runtime="onnxruntime")] == ["fast_bad", "middle", "slow_good"]


def test_ship_rows_start_from_the_baseline_as_trained():
    from segdec_prune.results import ship_rows

    def rec(model, runtime, dtype, ms, ap):
        return {"model": model, "runtime": runtime, "dtype": dtype, "latency_ms_median": ms, "ap": ap}

    records = [rec("baseline_best", "onnxruntime", "fp32", 40, 0.90), rec("baseline_best", "openvino", "int8", 9, 0.90),
               rec("baseline_best", "onnxruntime", "int8", 16, 0.89), rec("m20", "openvino", "int8", 3, 0.91)]
    rows = ship_rows(records)
    assert [(r["model"], r["runtime"], r["dtype"]) for r in rows] == [("baseline_best", "onnxruntime", "fp32"),
                                                                      ("m20", "openvino", "int8")]


def test_the_ship_table_keeps_every_name_and_figure_on_an_80_column_console():
    import io

    from rich.console import Console

    from segdec_prune.tables import ship_table, show

    def rec(model, runtime, dtype, ms, ap):
        return {"model": model, "runtime": runtime, "dtype": dtype, "latency_ms_median": ms, "ap": ap, "f1": 0.8125,
                "fp_at_threshold": 12, "fn_at_threshold": 30, "speedup_vs_baseline": 1.5,
                "speedup_vs_onnxruntime_fp32": 40 / ms, "mac_reduction": 0.834}

    out = io.StringIO()  # what piped output and CI get: rich's 80 columns, which used to cut names to "naive_l1_t1…"
    show(Console(file=out, width=80), ship_table([rec("baseline_best", "onnxruntime", "fp32", 40, 0.90),
                                                  rec("naive_l1_t17p25ms", "openvino", "int8", 3.25, 0.91)]))
    text = out.getvalue()
    for figure in ("baseline_best", "naive_l1_t17p25ms", "ov int8", "0.910", "0.812", "12/30", "3.2", "12.3x", "83%"):
        assert figure in text, (figure, text)
    assert "…" not in text


def test_paired_bootstrap_interval_of_an_ap_gap():
    """The benchmarks' interval: none for the same scores, above 0 where one model ranks every
    defect first and the other mixes them in, and across 0 for a single swap among many images."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).parents[1] / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    rng = np.random.default_rng(0)
    labels = np.arange(200) < 30
    ref = rng.random(200)
    assert common.paired_ap_interval(labels, ref, ref, draws=200) == (0.0, 0.0)
    perfect = labels + 0.01 * rng.random(200)
    lo, _ = common.paired_ap_interval(labels, perfect, ref, draws=200)
    assert lo > 0
    swapped = perfect.copy()
    pos, neg = np.flatnonzero(labels)[0], np.flatnonzero(~labels)[0]
    swapped[[pos, neg]] = swapped[[neg, pos]]  # one defect and one good image trade places
    lo, hi = common.paired_ap_interval(labels, swapped, perfect, draws=200)
    assert lo < 0 <= hi or lo <= 0 < hi
