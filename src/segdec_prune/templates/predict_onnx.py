"""Score images with a segdec-prune ONNX model. Needs only onnxruntime, opencv-python and numpy.

    python predict_onnx.py model.onnx IMAGE_OR_FOLDER... [--out predictions.csv] [--threshold T] [--threads N]

The model file carries its input spec and decision threshold (ONNX metadata, written by
segdec-prune); preprocessing is the training one: OpenCV read (BGR, or grayscale for 1-channel
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
import onnxruntime as ort

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def images(inputs):
    for p in map(Path, inputs):
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and not f.stem.endswith("_GT"))
        elif p.is_file():
            yield p
        else:
            sys.exit(f"error: input not found: {p}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", default="predictions.csv")
    ap.add_argument("--threshold", type=float, help="default: the model's validation threshold")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    spec = json.loads(meta["segdec_prune.input_spec"])
    stored = json.loads(meta.get("segdec_prune.threshold", "null"))
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
        logit = session.run(["decision"], {"image": x})[0][0, 0]
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
