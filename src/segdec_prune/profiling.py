"""MACs, parameters and file size of every model in a run, against the baseline.

MACs come from torch-pruning's counter (`count_ops_and_params`), which counts every conv
including the 15x15 one (baseline at 640x232: about 48.0 GMACs; the original project's
profiler reported 6.86 G, which missed most of it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch_pruning as tp

from .artifacts import write_json
from .checkpoint import load_checkpoint
from .model import SegDecNet

PAPER_SIZE = (640, 232)


def macs_and_params(model: SegDecNet, height: int, width: int) -> tuple[int, int]:
    model = model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.rand(1, model.in_channels, height, width))
    return int(macs), int(params)


def profile_checkpoint(path: Path) -> dict:
    """One model's method, widths, parameters and MACs (at its input size and the paper's)."""
    ckpt = load_checkpoint(path)
    spec = ckpt.input_spec
    macs, params = macs_and_params(ckpt.model, spec.height, spec.width)
    return {
        "method": ckpt.metadata.get("method", "baseline"),
        "ratio": ckpt.metadata.get("ratio", 0.0),
        "budget": (ckpt.metadata.get("plan") or {}).get("budget"),
        "widths": ckpt.model.widths.to_dict(),
        "parameters": params,
        "macs": macs,
        "input_size": [spec.height, spec.width],
        "macs_at_640x232": macs_and_params(ckpt.model, *PAPER_SIZE)[0],
        "file_bytes": path.stat().st_size,
        "recovery": recovery_summary(ckpt.metadata),
    }


def recovery_summary(meta: dict) -> dict | None:
    """How a pruned model was recovered: validation AP before/after, the recipe (and whether the
    probe chose it), the probe's cost, a stuck decision loss. None for the baseline."""
    if "val_ap_pruned" not in meta:
        return None
    rec = meta.get("recipe") or {}
    training = (meta.get("rounds") or [{}])[-1].get("training") or {}
    history = training.get("history") or [{}]
    return {"val_ap_pruned": meta["val_ap_pruned"], "val_ap": meta.get("val_ap"), "lr": rec.get("lr"),
            "momentum": rec.get("momentum"), "recipe_source": rec.get("source"),
            "probe_candidates": len(rec.get("candidates") or []), "probe_seconds": rec.get("seconds"),
            "epochs": len(history), "stopped_early": training.get("stopped_early"),
            "final_dec_loss": history[-1].get("loss_dec"), "stuck_dec_loss": meta.get("stuck_dec_loss")}


def profile_run(run_dir: str | Path) -> dict:
    """Profile `run_dir/models/*.pth` (baseline first) and write profiling_results.json."""
    run_dir = Path(run_dir)
    paths = sorted((run_dir / "models").glob("*.pth"), key=lambda p: (p.stem != "baseline_best", p.stem))
    if not paths or paths[0].stem != "baseline_best":
        raise FileNotFoundError(f"no baseline at {run_dir / 'models' / 'baseline_best.pth'}; run `segdec-prune train` first")
    records = {path.stem: profile_checkpoint(path) for path in paths}
    base = records["baseline_best"]
    for rec in records.values():
        rec["param_reduction"] = 1 - rec["parameters"] / base["parameters"]
        rec["mac_reduction"] = 1 - rec["macs"] / base["macs"]
        rec["file_reduction"] = 1 - rec["file_bytes"] / base["file_bytes"]
    result = {"run": str(run_dir), "counter": f"torch-pruning {tp.__version__} count_ops_and_params", "models": records}
    write_json(result, run_dir / "profiling_results.json")
    return result
