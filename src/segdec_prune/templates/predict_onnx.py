"""Score images with a segdec-prune ONNX model. Needs only onnxruntime, opencv-python and numpy.

    python predict_onnx.py model.onnx IMAGE_OR_FOLDER... [--out predictions.csv] [--threshold T] [--threads N]

The model file carries its input spec and decision threshold (ONNX metadata, written by
segdec-prune; predict_openvino.py reads the same from an OpenVINO IR and reuses this file's
`main` with its own loader); preprocessing is the training one: OpenCV read (BGR, or grayscale for 1-channel
models), resize to the input size (bilinear), scale, NCHW float32. Scores are sigmoid(decision
logit); an image is defective when its score >= the threshold. Unreadable images are reported
on stderr and skipped (exit code 1).
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def images(inputs):
    for p in map(Path, inputs):
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and not f.stem.endswith("_GT"))
        elif p.is_file():
            yield p
        else:
            sys.exit(f"error: input not found: {p}")


def load_onnx(path, threads):
    """(decision logits of a [1,C,H,W] batch, the model's segdec_prune metadata as JSON strings)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    prefix = "segdec_prune."
    return (lambda x: session.run(["decision"], {"image": x})[0]), \
        {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)}


def main(load=load_onnx, description=__doc__.splitlines()[0]):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", default="predictions.csv")
    ap.add_argument("--threshold", type=float, help="default: the model's validation threshold")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    decision, meta = load(args.model, args.threads)
    if "input_spec" not in meta:
        sys.exit(f"error: {args.model} was not written by segdec-prune (no input spec in it)")
    spec = json.loads(meta["input_spec"])
    stored = json.loads(meta.get("threshold", "null"))
    threshold = args.threshold if args.threshold is not None else (stored["value"] if stored else 0.5)
    flag = cv2.IMREAD_COLOR if spec["channels"] == 3 else cv2.IMREAD_GRAYSCALE
    rows, skipped = [], 0
    for path in images(args.inputs):
        image = cv2.imread(str(path), flag)
        if image is None:
            print(f"warning: skipped {path}: unreadable", file=sys.stderr)
            skipped += 1
            continue
        x = cv2.resize(image, (spec["width"], spec["height"]))
        x = x[:, :, None] if x.ndim == 2 else x
        x = x.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(spec["scale"])
        t0 = time.perf_counter()
        logit = decision(x)[0, 0]
        ms = (time.perf_counter() - t0) * 1e3
        score = 1.0 / (1.0 + np.exp(-np.clip(float(logit), -80, 80)))
        rows.append([str(path), f"{score:.6f}", "yes" if score >= threshold else "no", f"{threshold:.6f}", f"{ms:.2f}"])
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "score", "defective", "threshold", "ms"])
        writer.writerows(rows)
    print(f"{len(rows)} images, {sum(r[2] == 'yes' for r in rows)} defective at {threshold:.4f} -> {args.out}")
    sys.exit(1 if skipped else 0)


if __name__ == "__main__":
    main()
