"""A folder a deployment team can take: one model's FP32 and INT8 ONNX files, its OpenVINO FP32
and INT8 IRs where the run built them, a model card, and stand-alone `predict_onnx.py`
(onnxruntime, opencv and numpy only) and `predict_openvino.py` (openvino instead of
onnxruntime); both give the same decisions as `predict`.

The bundle is assembled in a temporary folder beside `out` and renamed into place, so a reader
never sees half a bundle; an older bundle at `out` is replaced, any other non-empty folder is not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from . import __version__
from .artifacts import sha256, strict_json
from .config import Config
from .deploy import ModelInfo, ir_info, onnx_path, open_runtime, openvino_path
from .results import RESULTS_FILE, library_versions

CARD = "model_card.json"
SCRIPT, OV_SCRIPT = "predict_onnx.py", "predict_openvino.py"
TEMPLATES = Path(__file__).parent / "templates"
PREPROCESSING = ("OpenCV imread (BGR for 3 channels, grayscale for 1), resize to width x height (bilinear), "
                 "multiply by scale, NCHW float32. Outputs: `decision` logit [B,1] (score = sigmoid; defective when "
                 "score >= threshold), `segmentation` logits [B,1,H/8,W/8] (defect map = sigmoid).")
METRICS = ("ap", "auroc", "threshold", "threshold_source", "precision", "recall", "f1", "fp_at_threshold",
           "fn_at_threshold", "best_threshold", "best_f1", "dice", "latency_ms_median", "latency_ms_p90",
           "throughput_ips", "threads", "device", "speedup_vs_baseline")


def make_bundle(cfg: Config, name: str, out: Path) -> list[Path]:
    """Write the bundle of model `name` of the run to `out`; returns the files written."""
    run = cfg.run_dir
    files = {"fp32": onnx_path(run, name), "int8": onnx_path(run, name, "int8")}
    how = {"fp32": "segdec-prune export --config CFG", "int8": "segdec-prune build --config CFG --precision int8"}
    for kind, path in files.items():
        if not path.is_file():
            known = sorted(p.stem for p in (run / "onnx").glob("*.onnx") if not p.stem.endswith("_int8"))
            hint = f" (models with ONNX files: {', '.join(known)})" if known and kind == "fp32" else ""
            raise FileNotFoundError(f"no {kind.upper()} ONNX file {path}{hint}; run `{how[kind]}` or `segdec-prune run` first")
    # Each must load in ONNX Runtime; a damaged file fails here, in one line.
    infos = {kind: open_runtime(path, threads=1)[1] for kind, path in files.items()}
    irs = {f"openvino_{dt}": openvino_path(run, name, dt) for dt in ("fp32", "int8")}
    for kind, xml in irs.items():  # built where OpenVINO is installed; read (not compiled) to check them
        if xml.is_file():
            infos[kind] = ir_info(xml)
            files[kind] = xml
    card = model_card(cfg, name, infos, files)
    out = Path(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for path in files.values():
            for part in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
                shutil.copy2(part, staging / part.name)
        scripts = [SCRIPT, *([OV_SCRIPT] if any(k.startswith("openvino") for k in files) else [])]
        for script in scripts:
            shutil.copy2(TEMPLATES / script, staging / script)
        (staging / CARD).write_text(json.dumps(strict_json(card), indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o755)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / p.name for p in files.values()] + [out / CARD, *(out / s for s in scripts)]


def model_card(cfg: Config, name: str, infos: dict[str, ModelInfo], files: dict[str, Path]) -> dict:
    """What a deployment needs to know, from the files themselves, the profile and the results."""
    run = cfg.run_dir
    profile = _json(run / "profiling_results.json").get("models", {}).get(name)
    ckpt = run / "models" / f"{name}.pth"
    if ckpt.is_file() and (profile or {}).get("file_bytes") != ckpt.stat().st_size:  # not profiled yet, or stale
        from .profiling import profile_checkpoint

        profile = profile_checkpoint(ckpt)
    results = _json(run / RESULTS_FILE)
    records = [{k: r.get(k) for k in ("runtime", "dtype", *METRICS)} for r in results.get("records", []) if r["model"] == name]
    fp32 = infos["fp32"]
    return {
        "format": "segdec-prune/model-card", "format_version": 1, "model": name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "segdec_prune": __version__,
        "files": {kind: {"file": p.name, "bytes": p.stat().st_size, "sha256": sha256(p),
                         **({"weights": p.with_suffix(".bin").name, "weights_sha256": sha256(p.with_suffix(".bin"))}
                            if p.suffix == ".xml" else {})} for kind, p in files.items()},
        "input": {**fp32.spec.__dict__, "preprocessing": PREPROCESSING},
        "threshold": {kind: (i.threshold.to_dict() if i.threshold else None) for kind, i in infos.items()},
        "architecture": {k: profile.get(k) for k in ("method", "ratio", "budget", "widths", "parameters", "macs",
                                                     "input_size", "macs_at_640x232", "mac_reduction",
                                                     "param_reduction")} if profile else None,
        "test_metrics": records or None,
        "test_metrics_note": (f"from {run / RESULTS_FILE} ({results.get('split', 'test')} split); P/R/F1/FP/FN at "
                              "the threshold above, best_* at the test-optimal threshold (optimistic)") if records else
                             f"no records: run `segdec-prune evaluate --config {cfg.source or 'CFG'}`",
        "calibration": {"images": cfg.deploy.calibration_images,
                        "positive_fraction": cfg.deploy.calibration_positive_fraction, "seed": cfg.deploy.seed,
                        "source": "training split", "int8_choice": infos["int8"].metadata.get("int8"),
                        **({"openvino_int8_choice": infos["openvino_int8"].metadata.get("int8")}
                           if "openvino_int8" in infos else {})},
        "libraries": library_versions(),
        "config": cfg.to_dict(),
    }


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CARD).is_file())):
        raise ValueError(f"--out {out} exists and is not a segdec-prune bundle; not overwriting it")


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the finished bundle into place; an older one is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

