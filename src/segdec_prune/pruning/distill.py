"""Distillation from the unpruned baseline while a pruned model fine-tunes.

Training uses no augmentation, so the teacher's outputs for each training image never change:
they are computed once per run (one teacher pass over the training split), stored in the run
folder keyed by the baseline file's sha256, and reused by every pruned model. The fine-tuning
loop then needs no teacher forward pass: the loss looks the targets up by dataset index.

Both terms are the binary KL divergence between temperature-softened Bernoulli outputs,
scaled by T^2 (Hinton et al. 2015) so that their gradients keep their size as T changes:
the decision logit (one per image) and the segmentation logits (per pixel at 1/8 resolution).

`VolumeDistillation` is the opt-in feature term: the pruned 1024-channel volume against the
baseline's, with the teacher in the loop (its volume is 1024 x H/8 x W/8 floats per image, too
large to cache for a training split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import save_torch, sha256
from ..data.dataset import KSDD2Dataset
from ..model import SegDecNet
from ..training import Batch

CACHE_FORMAT = "segdec-prune/teacher-outputs"


@dataclass
class TeacherOutputs:
    """The baseline's logits for every image of a training split, in the split's order."""

    baseline_sha256: str
    ids: list[str]
    decision: torch.Tensor  # [N, 1]
    segmentation: torch.Tensor  # [N, 1, H/8, W/8]


def cache_path(run_dir: Path, baseline_sha256: str) -> Path:
    return Path(run_dir) / "teacher" / f"outputs_{baseline_sha256[:16]}.pt"


def sample_ids(dataset: KSDD2Dataset) -> list[str]:
    return [str(s["id"]) for s in dataset.samples]


@torch.no_grad()
def compute_teacher_outputs(teacher: SegDecNet, dataset: KSDD2Dataset, baseline_sha256: str,
                            device: torch.device | str = "cpu", batch_size: int = 16) -> TeacherOutputs:
    """One forward pass of the teacher over `dataset` (in order)."""
    teacher = teacher.to(device).eval()
    decs, segs = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        dec, seg = teacher(batch["image"].to(device))
        decs.append(dec.float().cpu())
        segs.append(seg.float().cpu())
    return TeacherOutputs(baseline_sha256, sample_ids(dataset), torch.cat(decs), torch.cat(segs))


def teacher_outputs(run_dir: Path, baseline_file: Path, teacher: SegDecNet, dataset: KSDD2Dataset,
                    device: torch.device | str = "cpu") -> TeacherOutputs:
    """The cached outputs for this baseline file and split, computed and stored when missing or
    stale (another baseline, another split). Written atomically."""
    digest = sha256(baseline_file)
    path = cache_path(run_dir, digest)
    ids = sample_ids(dataset)
    if path.is_file():
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is rebuilt, never trusted
            raw = {}
        expected = {"format": CACHE_FORMAT, "baseline_sha256": digest, "ids": ids}
        if isinstance(raw, dict) and all(raw.get(k) == v for k, v in expected.items()):
            return TeacherOutputs(digest, ids, raw["decision"], raw["segmentation"])
    out = compute_teacher_outputs(teacher, dataset, digest, device)
    save_torch({"format": CACHE_FORMAT, "baseline_sha256": digest, "ids": ids,
                "decision": out.decision, "segmentation": out.segmentation}, path)
    return out


def binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over elements of T^2 x KL(Bernoulli(sigmoid(t/T)) || Bernoulli(sigmoid(s/T))).

    Written as BCE(s/T, p) - BCE(t/T, p) with p = sigmoid(t/T): zero when the logits agree."""
    s, t = student_logits / temperature, teacher_logits / temperature
    p = torch.sigmoid(t)
    kl = (F.binary_cross_entropy_with_logits(s, p, reduction="none")
          - F.binary_cross_entropy_with_logits(t, p, reduction="none"))
    return temperature**2 * kl.mean()


class Distillation:
    """The extra loss term of fine-tuning: w_dec x KL(decision) + w_seg x KL(segmentation), with
    the teacher's outputs looked up by the batch's dataset indices."""

    def __init__(self, teacher: TeacherOutputs, dataset: KSDD2Dataset, temperature: float = 1.0,
                 dec_weight: float = 1.0, seg_weight: float = 1.0) -> None:
        if teacher.ids != sample_ids(dataset):
            raise ValueError("teacher outputs were computed for another training split; rebuild the cache")
        self.teacher = teacher
        self.temperature = temperature
        self.dec_weight = dec_weight
        self.seg_weight = seg_weight

    def __call__(self, model: SegDecNet, batch: Batch, outputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        dec, seg = outputs
        idx = batch["index"].cpu()
        t_dec = self.teacher.decision[idx].to(dec.device)
        t_seg = self.teacher.segmentation[idx].to(seg.device)
        return (self.dec_weight * binary_kl(dec, t_dec, self.temperature)
                + self.seg_weight * binary_kl(seg, t_seg, self.temperature))


class VolumeDistillation:
    """w x MSE between the pruned model's volume (the last conv block's FeatureNorm + ReLU output)
    and the same channels of the teacher's, computed by one teacher volume pass per batch.

    No regressor is needed: pruning keeps a subset of the teacher's channels, so the student's
    channel j is the teacher's channel `kept[j]`. The student's volume is read by a forward hook
    while the training loop runs its own forward pass; `close()` removes the hook."""

    def __init__(self, teacher: SegDecNet, student: SegDecNet, kept: list[int], weight: float) -> None:
        if len(kept) != student.widths.volume[-1]:
            raise ValueError(f"{len(kept)} kept channels for a volume of {student.widths.volume[-1]}")
        self.teacher = teacher.eval()
        self._teacher_device = next(teacher.parameters()).device  # put back by close()
        self.kept = torch.as_tensor(kept, dtype=torch.long)
        self.weight = weight
        self._volume: torch.Tensor | None = None
        self._device: torch.device | None = None  # where teacher and `kept` are, once the student's volume is seen
        self._hook = student.volume.register_forward_hook(self._keep)

    def _keep(self, _module, _inputs, output: torch.Tensor) -> None:
        self._volume = output

    def __call__(self, model: SegDecNet, batch: Batch, outputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self._volume is None:
            raise RuntimeError("the student's volume was not seen: was the hook's model the one trained?")
        if self._device != self._volume.device:  # once: train() moves the student after __init__
            self._device = self._volume.device
            self.teacher.to(self._device)
            self.kept = self.kept.to(self._device)
        with torch.no_grad():
            target = self.teacher.volume(batch["image"])[:, self.kept]
        return self.weight * F.mse_loss(self._volume, target)

    def close(self) -> None:
        self._hook.remove()
        self._volume = None
        self.teacher.to(self._teacher_device)
        self._device = None


def kept_after(kept: list[int], dropped: list[int]) -> list[int]:
    """The teacher's indices of the channels still there after one more round drops `dropped`
    (indices into the current model's channels)."""
    gone = set(dropped)
    return [k for j, k in enumerate(kept) if j not in gone]


def summed(*terms):
    """One extra loss from several (None terms left out), or None when there is none."""
    live = [t for t in terms if t is not None]
    if len(live) <= 1:
        return live[0] if live else None
    return lambda model, batch, outputs: sum(t(model, batch, outputs) for t in live)
