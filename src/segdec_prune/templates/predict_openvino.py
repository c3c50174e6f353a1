"""Score images with a segdec-prune OpenVINO IR. Needs only openvino, opencv-python and numpy.

    python predict_openvino.py model.xml IMAGE_OR_FOLDER... [--out predictions.csv] [--threshold T] [--threads N]

The IR (model.xml + model.bin) carries the input spec and decision threshold in its rt_info
(section segdec_prune, written by segdec-prune); everything else, preprocessing and the CSV
included, is predict_onnx.py's, which must sit beside this file (the bundle puts it there).
"""

import sys
from pathlib import Path

from predict_onnx import main


def load_openvino(path, threads):
    """(decision logits of a [1,C,H,W] batch, the model's segdec_prune metadata as JSON strings)."""
    import openvino as ov

    if not Path(path).with_suffix(".bin").is_file():
        sys.exit(f"error: {path}: its weights file {Path(path).with_suffix('.bin').name} is missing")
    core = ov.Core()
    model = core.read_model(path)
    info = model.get_rt_info()
    meta = {k: str(v.value if hasattr(v, "value") else v) for k, v in info["segdec_prune"].items()} \
        if "segdec_prune" in info else {}
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    shape = model.input(0).get_partial_shape()
    model.reshape([1, *list(shape)[1:]])  # one image at a time, the batch fixed: static shapes run faster
    compiled = core.compile_model(model, "CPU", config)
    request, output = compiled.create_infer_request(), compiled.output("decision")
    return (lambda x: request.infer({0: x})[output]), meta


if __name__ == "__main__":
    main(load_openvino, __doc__.splitlines()[0])
