"""The method table: the names users know -> a criterion plus its options.

A leaf module (no torch, no criteria import): the config validates method names against it without
pulling in the criteria and the training loop. `criteria.py` checks that every criterion named
here is registered.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnknownMethodError(ValueError):
    pass


@dataclass(frozen=True)
class Method:
    name: str
    criterion: str
    description: str
    aligned: bool = False  # C1: widths rounded to multiples of prune.round_to
    sparsity: bool = False  # naive_fn: optional L1 sparsity training on FeatureNorm scales first


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("naive_l1", "l1", "L1 norm of each filter's weights"),
        Method("naive_fn", "fn_scale", "Network Slimming: |FeatureNorm scale|", sparsity=True),
        Method("ours_c1", "l1", "C1: L1 with widths aligned to multiples of N (hardware)", aligned=True),
        Method("ours_c2", "defect_grad_act", "C2: defect-aware |activation x decision-loss gradient|"),
        Method("ours_c3", "l1_decorrelated", "C3: L1 penalised by activation correlation (redundancy)"),
        Method("ours_c4", "taylor", "C4: Taylor-FO |w x dL/dw| per filter"),
        Method("random", "random", "control: random channels, naive_l1's widths"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def model_name(method: str, ratio: float) -> str:
    """`naive_l1_r20` for (naive_l1, 0.2): the names the original project used."""
    return f"{method}_r{round(ratio * 100):d}"


BUDGET_KINDS = ("macs", "latency")


def budget_model_name(method: str, kind: str, value: float) -> str:
    """`ours_c4_m20` for 20 % of the baseline's MACs kept; `ours_c4_t7p5ms` for a 7.5 ms target."""
    if kind == "macs":
        return f"{method}_m{round(value * 100):d}"
    return f"{method}_t{value:g}ms".replace(".", "p")
