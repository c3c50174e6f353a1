"""Which INT8 candidates are worth searching? Every calibration x FP32-layer set, scored side by side.

Per model of a built run: ONNX Runtime INT8 for every calibration (minmax, entropy, percentile)
with every FP32 set (none, each group alone, all three), 15 candidates from one calibration pass;
each scored on the validation split (mean |decision logit - FP32's|, validation AP, what the search
sees) and on the test split (AP - FP32's in points, to judge the searches only). Then the search
rule (`int8._pick`: closest logits among those within the validation-AP tolerance) and candidate
order (`int8._then_fp32_groups`) replayed over
two candidate sets: the real-image configs' 7 (3 calibrations, then the best with each group alone
and all three) and the demo's 3 (minmax, percentile, then the better with all three FP32).

    python benchmarks/int8_candidates.py --config configs/demo.toml [--models baseline_best ...]

One thread per process: split the models over two processes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console

from common import Bench, gap_summary
from segdec_prune.calibration import calibration_path, load_calibration
from segdec_prune.config import load_config
from segdec_prune.deploy import model_paths, onnx_info, onnx_path, stored_val_scores
from segdec_prune.evaluation import classification_metrics, predict
from segdec_prune.int8 import Int8Search, _pick, _then_fp32_groups, by_validation_ap, logit_error
from segdec_prune.runtimes.base import FP32_GROUPS, INT8_CALIBRATIONS
from segdec_prune.runtimes.onnxruntime_runtime import (OnnxRuntime, calibrate, conv_nodes, prepare_for_quantization,
                                                       quantize_prepared)

SETS = ((), *((g,) for g in FP32_GROUPS), tuple(FP32_GROUPS))
SEARCHES = {"7 candidates (real-image configs)": Int8Search(),
            "3 candidates (demo)": Int8Search(("minmax", "percentile"), ("first_conv+seg_head+decision_head",))}


def score_candidates(fp32: Path, calib: np.ndarray, val, test, ref: np.ndarray, test_ref: np.ndarray) -> list[dict]:
    """All 15 candidates of one model: validation logit error and AP, test AP gap (points)."""
    ref_ap, test_ap = classification_metrics(val.labels, ref)["ap"], classification_metrics(test.labels, test_ref)["ap"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pre = prepare_for_quantization(fp32, Path(tmp) / "pre.onnx")
        graph = onnx.load(str(pre), load_external_data=False)
        caches = {m: Path(tmp) / f"{m}.json" for m in INT8_CALIBRATIONS}
        calibrate(pre, calib, ("Conv",), caches, threads=1)
        for i, (method, groups) in enumerate((m, g) for m in INT8_CALIBRATIONS for g in SETS):
            exclude = conv_nodes(graph, [p for g in groups for p in FP32_GROUPS[g]])
            path = quantize_prepared(pre, Path(tmp) / f"c{i}.onnx", calib, ("Conv",), method, exclude,
                                     cache=caches[method], threads=1)
            rt = OnnxRuntime(path, threads=1, precision="int8")
            scores, test_scores = predict(rt, val).scores, predict(rt, test).scores
            val_ap = classification_metrics(val.labels, scores)["ap"]
            rows.append({"calibration": method, "fp32_layers": groups, "val_ap": val_ap, "ref_ap": ref_ap,
                         "logit_error": logit_error(scores, ref),
                         "gap": 100 * (classification_metrics(test.labels, test_scores)["ap"] - test_ap)})
    return rows


def replay(rows: list[dict], search: Int8Search) -> dict:
    """`search`'s choice among the scored `rows`: its own candidate order and rule, no new passes."""
    by = {(r["calibration"], r["fp32_layers"]): {**r, "holds": by_validation_ap(r, r["ref_ap"], search.tolerance)}
          for r in rows}
    tried: list[dict] = []
    for method, groups in _then_fp32_groups(search.calibrations, search)(tried):
        tried.append(by[method, groups])
    return _pick(tried)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--models", nargs="*", help="default: every model of the run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    console = Console(width=max(Console().width, 140))
    cfg = load_config(args.config)
    bench, run = Bench(cfg), cfg.run_dir
    val, test = bench.sets[1], bench.test_set
    calib = load_calibration(calibration_path(cfg))
    gaps: dict[str, list[float]] = {name: [] for name in SEARCHES}
    for name in args.models or [p.stem for p in model_paths(run)]:
        fp32 = onnx_path(run, name)
        fp32_rt = OnnxRuntime(fp32, threads=1)
        ref = stored_val_scores(onnx_info(fp32), val)
        ref = predict(fp32_rt, val).scores if ref is None else ref
        rows = score_candidates(fp32, calib, val, test, ref, predict(fp32_rt, test).scores)
        err = {(r["calibration"], r["fp32_layers"]): r["logit_error"] for r in rows}
        best_other = min(min(err["minmax", s], err["percentile", s]) for s in SETS)
        line = [f"{name}: validation logit error entropy/best other {err['entropy', ()] / best_other:.2f}x, "
                f"all three FP32 / closest non-entropy {min(err['minmax', SETS[-1]], err['percentile', SETS[-1]]) / best_other:.3f}x"]
        for label, search in SEARCHES.items():
            pick = replay(rows, replace(search, tolerance=cfg.deploy.int8_ap_tolerance))
            gaps[label].append(pick["gap"])
            line.append(f"{label.split(' (')[0]}: {pick['calibration']}+{'+'.join(pick['fp32_layers']) or 'none'} "
                        f"{pick['gap']:+.2f}")
        console.print("; ".join(line))
    for label, points in gaps.items():
        console.print(f"{label}: test AP of the chosen INT8 - FP32 {gap_summary(points)}, "
                      f"mean |gap| {np.mean(np.abs(points)):.2f}")


if __name__ == "__main__":
    main()
