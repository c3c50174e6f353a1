"""Seeded splits that keep groups together and classes in proportion (pure functions)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from .ksdd2 import DatasetError


def group_keys(rels: Sequence[str], own: Sequence[str | None], pattern: str | None = None,
               size: int | None = None) -> tuple[list[str], int]:
    """Each image's group and how many images `pattern` did not match (each then its own group).

    `pattern`: a regex searched in the source-relative path; the group is its first capture
    group, or the whole match. `size`: blocks of that many consecutive images (sources numbered
    part by part). Neither: the reader's own group, else every image alone.
    """
    if pattern and size:
        raise DatasetError("give --group-by or --group-size, not both")
    if size:
        return [f"block{i // size}" for i in range(len(rels))], 0
    if not pattern:
        return [g if g is not None else f"image:{r}" for r, g in zip(rels, own)], 0
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"--group-by {pattern!r} is not a valid regular expression: {exc}") from None
    keys, unmatched = [], 0
    for r in rels:
        m = regex.search(r)
        if m is None:
            unmatched += 1
            keys.append(f"image:{r}")
        else:
            keys.append(m.group(1) if regex.groups else m.group(0))
    return keys, unmatched


def grouped_split(strata: Sequence[str], groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out share: whole groups only, each stratum near `fraction`.

    Groups are visited largest first (ties in seeded random order); a group is held out when
    that brings the held-out counts closer to their targets (squared error per stratum,
    weighted by 1/stratum size) than leaving it in.
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"a split fraction must be in (0, 1), got {fraction}")
    total = Counter(strata)
    target = {s: fraction * n for s, n in total.items()}
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    rng = np.random.default_rng(seed)
    names = sorted(members)
    order = sorted(rng.permutation(len(names)).tolist(), key=lambda k: -len(members[names[k]]))
    held = Counter()
    out = np.zeros(len(strata), bool)
    for k in order:
        idx = members[names[k]]
        counts = Counter(strata[i] for i in idx)
        gain = sum(c * (target[s] - held[s] - c / 2) / total[s] for s, c in counts.items())
        if gain > 0:
            out[idx] = True
            held.update(counts)
    return out
