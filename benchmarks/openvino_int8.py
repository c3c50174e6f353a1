"""Which OpenVINO INT8 keeps the FP32 model's AP? Every candidate, on validation and on test.

Per model of a built run (`segdec-prune run` with the openvino extra): OpenVINO FP32, then each
INT8 candidate the search tries before FP32 layer groups: `inputs:minmax` and `inputs:percentile`
(QDQ files with Q/DQ only where the convolutions read, the image on its exact 8-bit grid), `qdq`
(OpenVINO reading ONNX Runtime's chosen INT8 file, whose conv outputs are quantized too) and `nncf`
(NNCF's quantization: besides 7 of the 13 convolutions' inputs it quantizes FeatureNorm's
arithmetic, the pools and the concat). For each: validation AP and mean |logit - FP32's| (what the search sees), test AP in
points against FP32 (what a user gets), with a 95 % paired bootstrap interval over the test images
(how large a gap this test split resolves). Test AP here is for judging a rule, never for choosing.

    python benchmarks/openvino_int8.py --config configs/demo.toml [--models baseline_best ours_c4_m20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import Bench, gap_summary, paired_ap_interval
from segdec_prune.artifacts import write_json
from segdec_prune.calibration import calibration_path, load_calibration
from segdec_prune.config import load_config
from segdec_prune.data.dataset import KSDD2Dataset
from segdec_prune.deploy import model_paths, onnx_info, onnx_path
from segdec_prune.evaluation import classification_metrics, predict
from segdec_prune.int8 import Int8Search, _Quantizer, logit_error
from segdec_prune.runtimes.base import INPUTS_ONLY
from segdec_prune.runtimes.openvino_runtime import OpenVinoRuntime, convert, quantize_nncf

CANDIDATES = ("inputs:minmax", "inputs:percentile", "qdq", "nncf")


def score(model, threads: int, val: KSDD2Dataset, test: KSDD2Dataset, precision: str) -> dict:
    rt = OpenVinoRuntime(model, threads, precision)
    return {split: predict(rt, ds, batch_size=8).scores for split, ds in (("val", val), ("test", test))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--models", nargs="*", help="default: every model of the run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=None, help="JSON file (default RUN/openvino_int8_benchmark.json)")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 150))
    cfg = load_config(args.config)
    run = cfg.run_dir
    bench = Bench(cfg)
    val, test = bench.sets[1], bench.test_set
    calib = load_calibration(calibration_path(cfg))
    names = args.models or [p.stem for p in model_paths(run)]
    methods = tuple(c.removeprefix(INPUTS_ONLY) for c in CANDIDATES if c.startswith(INPUTS_ONLY))
    rows = []
    for name in names:
        fp32 = convert(onnx_path(run, name))
        ref = score(fp32, args.threads, val, test, "fp32")
        row = {"model": name, "fp32": {s: classification_metrics(ds.labels, ref[s])["ap"]
                                       for s, ds in (("val", val), ("test", test))}}
        pixels = onnx_info(onnx_path(run, name)).spec.pixel_range
        with tempfile.TemporaryDirectory() as tmp:
            quantizer = _Quantizer(onnx_path(run, name), calib, Int8Search(methods), Path(tmp), args.threads)
            for cand in CANDIDATES:
                if cand.startswith(INPUTS_ONLY):
                    model = convert(quantizer.quantize(cand.removeprefix(INPUTS_ONLY), (), conv_outputs=False,
                                                       input_range=pixels))
                elif cand == "qdq":
                    model = convert(onnx_path(run, name, "int8"))
                else:
                    model = quantize_nncf(fp32, calib)
                got = score(model, args.threads, val, test, "int8")
                row[cand] = {"val_ap": classification_metrics(val.labels, got["val"])["ap"],
                             "val_logit_error": logit_error(got["val"], ref["val"]),
                             "test_ap": classification_metrics(test.labels, got["test"])["ap"],
                             "test_logit_error": logit_error(got["test"], ref["test"]),
                             "test_gap_interval": paired_ap_interval(test.labels, got["test"], ref["test"])}
        rows.append(row)
        console.print(f"{name}: " + ", ".join(f"{c} test {100 * (row[c]['test_ap'] - row['fp32']['test']):+.2f} pts"
                                               for c in CANDIDATES))
    table = Table("model", "FP32 val / test AP",
                  *(f"{c}: val AP, logit err, test pts [95 % paired bootstrap]" for c in CANDIDATES),
                  title="OpenVINO INT8 candidates")
    for r in rows:
        table.add_row(r["model"], f"{r['fp32']['val']:.3f} / {r['fp32']['test']:.3f}",
                      *(f"{r[c]['val_ap']:.3f}, {r[c]['val_logit_error']:.3f}, "
                        f"{100 * (r[c]['test_ap'] - r['fp32']['test']):+.2f} "
                        "[{:+.2f}, {:+.2f}]".format(*r[c]["test_gap_interval"]) for c in CANDIDATES))
    console.print(table)
    for c in CANDIDATES:
        err = [r[c]["val_logit_error"] for r in rows]
        apart = sum(lo > 0 or hi < 0 for lo, hi in (r[c]["test_gap_interval"] for r in rows))
        console.print(f"{c}: test AP - FP32 {gap_summary([100 * (r[c]['test_ap'] - r['fp32']['test']) for r in rows])}; "
                      f"told apart from no gap: {apart}/{len(rows)}; validation logit error {min(err):.3f}-{max(err):.3f}")
    out = Path(args.output) if args.output else run / "openvino_int8_benchmark.json"
    write_json({"config": str(args.config), "threads": args.threads, "rows": rows}, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
