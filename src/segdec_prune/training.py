"""One training loop, the paper's recipe, for the baseline and for fine-tuning pruned models.

Loss = w_seg * BCE(seg) x distance weights (segmented samples only) + w_dec * BCE(decision),
with dynamic balancing w_seg = 1 - e/E, w_dec = delta * e/E, gradient-flow adjustment (no
decision gradient into the segmentation path), plain SGD, balanced epochs. Model selection
uses validation AP (ties: lower validation decision loss), never the test set.
Fine-tuning reuses it with fixed weights, momentum, a cosine schedule and extra loss terms
(distillation), all from the config.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import default_collate

from . import distributed
from .checkpoint import InputSpec, Threshold, ValScores, save_checkpoint
from .config import TrainConfig
from .data.dataset import EpochSampler, KSDD2Dataset
from .evaluation import classification_metrics, predict
from .model import SegDecNet

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
# An extra loss term: (model, batch, (decision logits, segmentation logits)) -> scalar.
ExtraLoss = Callable[[SegDecNet, Batch, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


@dataclass
class EpochRecord:
    epoch: int
    loss_seg: float
    loss_dec: float
    loss: float
    seconds: float
    loss_extra: float = 0.0
    val_ap: float | None = None
    val_loss: float | None = None


@dataclass
class TrainResult:
    best_epoch: int
    best_val_ap: float
    best_threshold: Threshold | None = None  # validation best-F1 threshold of the kept weights
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    precision: str = "fp32"  # the forward pass's arithmetic as trained (bf16 asked for on a device without it: fp32)
    best_scores: np.ndarray | None = field(default=None, repr=False)  # validation scores of the kept weights

    def to_dict(self) -> dict:
        d = {**asdict(self), "history": [asdict(h) for h in self.history]}
        del d["best_scores"]  # stored once, as the checkpoint's `val_scores`
        return d


class Validation(NamedTuple):
    ap: float
    loss: float  # mean decision BCE
    threshold: Threshold  # best F1 on this split
    scores: np.ndarray  # per image, in the split's order


def val_scores(val_set: KSDD2Dataset, scores: np.ndarray | None) -> dict | None:
    """The checkpoint entry for a model's validation scores (what the INT8 builds reuse)."""
    return None if scores is None else ValScores(val_set.fingerprint, tuple(map(float, scores))).to_dict()


def new_progress(disable: bool = False) -> Progress:
    """The progress display every long step uses: bar, count, elapsed time, a status field."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    return Progress(*columns, disable=disable)


def resolve_device(name: str) -> torch.device:
    """The config's device; under torchrun, "cuda" means this rank's own GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    ranks = distributed.ranks()
    return torch.device("cuda", ranks.local_rank) if name == "cuda" and ranks.world > 1 else torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (CPU: AVX-512 BF16 or AMX, as oneDNN reports;
    elsewhere autocast emulates it, slower than FP32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # a private oneDNN query (torch 2.x); a torch without it: FP32, never a slow emulation
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def forward_precision(asked: str, device: torch.device) -> str:
    """The precision `train` runs the forward pass in: bf16 only where the device has it."""
    if asked == "bf16" and not bf16_native(device):
        log.warning("bf16 asked for, but %s has no native bf16: training in fp32", device)
        return "fp32"
    return asked


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_weights(epoch: int, cfg: TrainConfig) -> tuple[float, float]:
    """(segmentation, decision) loss weights for a 0-based epoch."""
    if not cfg.dyn_balanced_loss:
        return cfg.seg_weight, cfg.delta
    frac = epoch / cfg.epochs
    return 1.0 - frac, cfg.delta * frac


def batch_losses(model: SegDecNet, batch: Batch, weighted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(segmentation loss, decision loss) of one batch, each a scalar mean over the batch."""
    return output_losses(model(batch["image"]), batch, weighted)


def output_losses(outputs: tuple[torch.Tensor, torch.Tensor], batch: Batch,
                  weighted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground-truth losses of `batch_losses` from outputs already computed."""
    dec, seg = outputs
    loss_dec = F.binary_cross_entropy_with_logits(dec, batch["label"])
    per_pixel = F.binary_cross_entropy_with_logits(seg, batch["seg"], reduction="none")
    if weighted:
        per_pixel = per_pixel * batch["weight"]
    per_sample = per_pixel.mean(dim=(1, 2, 3)) * batch["segmented"].float()
    return per_sample.sum() / len(per_sample), loss_dec


def validate(model: SegDecNet, dataset: KSDD2Dataset, device: torch.device) -> Validation:
    """AP, mean decision BCE, the best-F1 threshold and the scores on a held-out set."""
    return validate_seg_heads(model, dataset, device, [model.seg_mask])[0]


def validate_seg_heads(model: SegDecNet, dataset: KSDD2Dataset, device: torch.device,
                       seg_heads: Sequence[torch.nn.Module]) -> list[Validation]:
    """`validate` with each of `seg_heads` in the model's place, from one pass through the volume
    (the volume is nearly all the compute; a seg-head refit changes nothing else)."""
    preds = predict(_SegHeads(model.to(device).eval(), seg_heads, device), dataset, batch_size=8)
    return [_validation(preds.labels, preds.scores[:, k]) for k in range(len(seg_heads))]


class _SegHeads:
    """A runtime whose decision output has one column per seg head, all read off one volume."""

    def __init__(self, model: SegDecNet, seg_heads: Sequence[torch.nn.Module], device: torch.device) -> None:
        self.model, self.seg_heads, self.device = model, [h.to(device).eval() for h in seg_heads], device

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        volume = self.model.volume(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device))
        outs = [self.model.heads(volume, h) for h in self.seg_heads]
        return torch.cat([d for d, _ in outs], 1).float().cpu().numpy(), outs[0][1].float().cpu().numpy()


def _validation(labels: np.ndarray, scores: np.ndarray) -> Validation:
    raw = scores
    scores = np.nan_to_num(scores, nan=0.5)  # a diverged model (NaN outputs) scores as a coin toss
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    y = labels.astype(float)
    bce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    m = classification_metrics(labels, scores)
    return Validation(m["ap"], bce, Threshold(m["best_threshold"], f1=m["best_f1"]), raw)


def train(
    model: SegDecNet,
    train_set: KSDD2Dataset,
    val_set: KSDD2Dataset,
    cfg: TrainConfig,
    save_path: str | Path | None,
    input_spec: InputSpec | None,
    metadata: dict | None = None,
    extra_loss: ExtraLoss | None = None,
    show_progress: bool = True,
    description: str = "train",
    progress: Progress | None = None,
    iterations: int | None = None,
    patience: int = 0,
    on_epoch: Callable[[SegDecNet, EpochRecord], None] | None = None,
) -> TrainResult:
    """Train in place; leaves the model holding its best-by-validation weights and saves them
    to `save_path` (None: the caller saves). Pass `progress` to show it inside an existing display.
    `iterations` stops after that many batches instead of `cfg.epochs` whole epochs (iterative
    pruning's short rounds); the last (partial) epoch always validates. `patience` > 0 stops
    after that many validations without a better AP (early stopping; the best weights are kept).
    `on_epoch` sees the model and the record after each epoch (validated or not), e.g. to measure
    every epoch's weights in a benchmark; it must leave the model as it found it.
    Under torchrun it trains data-parallel (`distributed`): same epochs and global batch, rank 0
    validates and saves, and every rank returns with rank 0's best weights and result."""
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ranks, device = distributed.setup(resolve_device(cfg.device))
    if cfg.batch_size < ranks.world:
        raise ValueError(f"train.batch_size {cfg.batch_size} is the global batch: at least one sample per process "
                         f"({ranks.world}) needed")
    model.to(device)
    model.decision_grad_scale = 0.0 if cfg.gradient_adjustment else 1.0
    net = model if ranks.world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = EpochSampler(train_set.labels, cfg.frequency_sampling, cfg.seed)
    per_epoch = -(-len(sampler) // cfg.batch_size)
    total = iterations if iterations is not None else cfg.epochs * per_epoch
    if total < 1:
        raise ValueError(f"nothing to train: {total} iterations")
    epochs = -(-total // per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    precision = forward_precision(cfg.precision, device)
    # bf16: the convolutions' arithmetic (the weights, gradients, losses and validation stay FP32)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                if cfg.lr_schedule == "cosine" else None)
    result = TrainResult(best_epoch=-1, best_val_ap=-1.0, precision=precision)
    best_key, best_state, stale = (-1.0, float("inf")), None, 0
    start, step = time.perf_counter(), 0
    with nullcontext(progress) if progress is not None else new_progress(disable=not show_progress) as bar:
        task = bar.add_task(description, total=total, info="")
        for epoch in range(epochs):
            w_seg, w_dec = loss_weights(epoch, cfg)
            model.train()
            sums, n, t0 = np.zeros(4), 0, time.perf_counter()
            for indices, share in distributed.batch_shares(list(sampler), cfg.batch_size, ranks):
                if step == total:
                    break
                batch = {k: v.to(device) for k, v in default_collate([train_set[i] for i in indices]).items()}
                with autocast():
                    outputs = tuple(o.float() for o in net(batch["image"]))
                loss_seg, loss_dec = output_losses(outputs, batch, cfg.weighted_seg_loss)
                loss = w_seg * loss_seg + w_dec * loss_dec
                extra = extra_loss(model, batch, outputs) if extra_loss is not None else torch.zeros(())
                loss = loss + extra
                optimizer.zero_grad(set_to_none=True)
                # DDP averages gradients over ranks: weighting by ranks x share makes that the batch mean's
                # (one process: share 1, world 1, the loss as it is)
                (loss * (share * ranks.world)).backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                parts = torch.tensor([loss_seg.item(), loss_dec.item(), loss.item(), extra.item()], dtype=torch.float64)
                sums += distributed.sum_over_ranks(parts * share).numpy()  # the global batch's mean losses
                n, step = n + 1, step + 1
                bar.update(task, advance=1, info=f"ep {epoch + 1} seg {sums[0] / n:.4f} dec {sums[1] / n:.4f}")
            mean = (sums / max(n, 1)).tolist()
            rec = EpochRecord(epoch, *mean[:3], seconds=time.perf_counter() - t0, loss_extra=mean[3])
            if ranks.main and ((epoch + 1) % cfg.validate_every == 0 or epoch == epochs - 1):
                rec.val_ap, rec.val_loss, threshold, scores = validate(model, val_set, device)
                stale += 1
                if (rec.val_ap, -rec.val_loss) > (best_key[0], -best_key[1]):
                    best_key, stale = (rec.val_ap, rec.val_loss), 0
                    best_state = copy.deepcopy(model.state_dict())
                    result.best_epoch, result.best_val_ap, result.best_threshold = epoch, rec.val_ap, threshold
                    result.best_scores = scores
                bar.update(task, info=f"ep {epoch + 1} val AP {rec.val_ap:.4f} (best {result.best_val_ap:.4f})")
            result.history.append(rec)
            if on_epoch is not None and ranks.main:
                on_epoch(model, rec)
            if not bar.disable:
                bar.console.print(
                    f"{description} epoch {epoch + 1}/{epochs}: loss seg {rec.loss_seg:.4f} dec {rec.loss_dec:.4f}"
                    + (f" extra {rec.loss_extra:.4f}" if extra_loss is not None else "")
                    + (f", val AP {rec.val_ap:.4f}" if rec.val_ap is not None else "") + f" ({rec.seconds:.0f} s)"
                )
            if patience and distributed.from_main(stale) >= patience and epoch < epochs - 1:
                result.stopped_early = True  # validation AP has not risen for `patience` validations
                break
        if progress is not None:
            bar.remove_task(task)
    result.seconds = time.perf_counter() - start
    if ranks.main:
        assert best_state is not None  # the last epoch always validates
        model.load_state_dict(best_state)
    if ranks.world > 1:  # the others go on from rank 0's choice
        distributed.share_weights(model)
        result = distributed.from_main(result)
    if save_path is not None and ranks.main:
        assert input_spec is not None, "saving a checkpoint needs the model's input spec"
        meta = {**(metadata or {}), "training": result.to_dict(), "train_config": asdict(cfg),
                "threshold": result.best_threshold.to_dict(), "world_size": ranks.world,
                "val_scores": val_scores(val_set, result.best_scores)}
        save_checkpoint(save_path, model.cpu(), input_spec, meta)
        model.to(device)
    distributed.barrier()  # no rank reads the checkpoint before it is written
    return result


def batches_per_epoch(train_set: KSDD2Dataset, batch_size: int) -> int:
    """Batches in one balanced epoch (what `EpochSampler` draws), as `train` batches them."""
    return -(-len(EpochSampler(train_set.labels, False, 0)) // batch_size)
