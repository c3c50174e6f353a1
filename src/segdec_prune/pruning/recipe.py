"""The fine-tuning recipe of a pruned model: fixed by the config, or chosen by a short probe.

No fixed learning rate recovers every data set: the step that suits one (KSDD1 from a lightly
damaged model) kills the decision head on another (magnetic tiles, pruned to chance). So with
`prune.finetune_lr = "auto"` each candidate (lr x momentum) fine-tunes a copy of the pruned
model for `prune.probe_fraction` of an epoch, on the same batches, and is scored on the
validation split (AP, ties: lower decision loss); the winner then fine-tunes in full. The probe
never looks at the test split.
Measured on the magnetic tiles it prefers the largest lr after a quarter epoch, which loses over
5 epochs (docs/measured.md, "Real images"), so no shipped config turns it on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

from rich.progress import Progress

from ..config import Config, TrainConfig
from ..model import SegDecNet
from ..training import ExtraLoss, batches_per_epoch, train

log = logging.getLogger(__name__)

CHANCE_DEC_LOSS = math.log(2)  # BCE of a coin toss on the balanced training epochs
STUCK_SHARE = 0.9  # a final training decision loss above this share of chance: not recovered


@dataclass
class Recipe:
    lr: float
    momentum: float
    source: str  # "config" or "probe"
    candidates: list[dict] = field(default_factory=list)  # the probe: lr, momentum, val_ap, val_loss, dec_loss
    iterations: int = 0  # batches each candidate trained
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def candidates(cfg: Config) -> list[tuple[float, float]]:
    """(lr, momentum) pairs the probe tries, in the config's order."""
    p = cfg.prune
    return [(float(lr), float(m)) for m in p.probe_momenta for lr in p.probe_lrs]


def choose(model: SegDecNet, cfg: Config, ft_cfg: TrainConfig, train_set, val_set,
           extra: ExtraLoss | None, progress: Progress | None = None, description: str = "probe") -> Recipe:
    """The recipe for fine-tuning `model` (left untouched): the config's, or the probe's winner
    (each candidate shown in `progress` when given)."""
    p = cfg.prune
    if p.finetune_lr != "auto":
        return Recipe(float(p.finetune_lr), p.finetune_momentum, "config")
    start = time.perf_counter()
    iterations = max(1, round(p.probe_fraction * batches_per_epoch(train_set, ft_cfg.batch_size)))
    tried = []
    for lr, momentum in candidates(cfg):
        trial = copy.deepcopy(model)
        probe_cfg = dataclasses.replace(ft_cfg, lr=lr, momentum=momentum, lr_schedule="constant")
        result = train(trial, train_set, val_set, probe_cfg, None, None, extra_loss=extra, show_progress=False,
                       progress=progress, description=f"{description} lr {lr:g} momentum {momentum:g}",
                       iterations=iterations)
        last = result.history[-1]
        tried.append({"lr": lr, "momentum": momentum, "val_ap": last.val_ap, "val_loss": last.val_loss,
                      "dec_loss": last.loss_dec, "finite": math.isfinite(last.loss)})
        log.debug("probe lr %g momentum %g: val AP %.4f, val loss %.4f", lr, momentum, last.val_ap, last.val_loss)
    ok = [c for c in tried if c["finite"]] or tried
    best = max(ok, key=lambda c: (c["val_ap"], -c["val_loss"]))
    return Recipe(best["lr"], best["momentum"], "probe", tried, iterations, time.perf_counter() - start)


def stuck(history: list) -> float | None:
    """The final training decision loss when it stayed near chance (the head did not recover), else None."""
    if not history:
        return None
    dec = history[-1].loss_dec
    return dec if dec > STUCK_SHARE * CHANCE_DEC_LOSS else None
