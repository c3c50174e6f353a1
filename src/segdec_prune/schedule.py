"""What a pipeline run would cost on N parallel workers, from the step times a manifest recorded.

Pure functions over a step graph: which step needs which (a step depends on the steps that
produce its input files), the critical path, and the makespan of list scheduling (whenever a
worker is free it takes the ready step with the longest path to the end; the classic HLFET
heuristic). Steps that are up to date cost nothing; a step never run is costed at its stage's
mean recorded time, or flagged unknown.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from .pipeline import Manifest, Step, needs_run


def dependencies(steps: Sequence[Step]) -> dict[str, list[str]]:
    """step name -> names of the earlier steps that write one of its inputs."""
    producer: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for step in steps:
        deps[step.name] = sorted({producer[str(p)] for p in step.inputs if str(p) in producer})
        for p in step.products():
            producer[str(p)] = step.name
    return deps


def dependents(deps: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """step name -> the steps that wait for it (`deps` turned around)."""
    users: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in ds:
            users[d].append(n)
    return users


def bottom_levels(costs: Mapping[str, float], deps: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Each step's cost plus the longest chain of steps that wait for it."""
    users = dependents(deps)

    @cache
    def level(n: str) -> float:
        return costs[n] + max((level(u) for u in users[n]), default=0.0)

    return {n: level(n) for n in deps}


def makespan(costs: Mapping[str, float], deps: Mapping[str, Sequence[str]], workers: int) -> float:
    """Wall time of list scheduling on `workers` identical workers (ties: plan order)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    priority = bottom_levels(costs, deps)
    order = {n: i for i, n in enumerate(deps)}
    waiting = {n: len(ds) for n, ds in deps.items()}
    users = dependents(deps)
    ready = [(-priority[n], order[n], n) for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []  # (finish time, name)
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            _, _, n = heapq.heappop(ready)
            heapq.heappush(running, (now + costs[n], n))
        now, done = heapq.heappop(running)
        for u in users[done]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (-priority[u], order[u], u))
    return now


@dataclass
class PlannedStep:
    name: str
    stage: str
    status: str  # "up to date" | "to run" | "unavailable" (as last time, e.g. TensorRT without a GPU)
    seconds: float | None  # what it is expected to take (0 when up to date; None: unknown)
    basis: str  # where the estimate comes from
    depends_on: list[str]


def stage_times(manifest: Manifest) -> dict[str, list[float]]:
    """stage -> the wall times of its steps that finished ("done") in this manifest."""
    times: dict[str, list[float]] = {}
    for rec in manifest.steps.values():
        if rec.get("status") == "done" and rec.get("wall_seconds") is not None:
            times.setdefault(rec.get("stage", ""), []).append(float(rec["wall_seconds"]))
    return times


def plan_view(steps: Sequence[Step], manifest: Manifest, force: set[str] = frozenset()) -> list[PlannedStep]:
    """Each step: up to date or not (as `run` would decide; a step after one that runs counts as
    running too, an upper bound: rewritten inputs usually change), its dependencies, expected time."""
    deps = dependencies(steps)
    times = stage_times(manifest)
    rows, to_run = [], set()
    for step in steps:
        stage = step.stage or step.name
        record = manifest.steps.get(step.name)
        upstream = [d for d in deps[step.name] if d in to_run]  # its inputs will be rewritten first
        if not upstream and not needs_run(step, manifest, force)[0]:
            rows.append(PlannedStep(step.name, stage, "up to date", 0.0, "skipped", deps[step.name]))
            continue
        if record and record.get("status") == "unavailable":
            rows.append(PlannedStep(step.name, stage, "unavailable", 0.0, "unavailable last time", deps[step.name]))
            continue
        if record and record.get("status") == "done" and record.get("wall_seconds") is not None:
            seconds, basis = float(record["wall_seconds"]), "last run"
        elif times.get(stage):
            seconds, basis = sum(times[stage]) / len(times[stage]), f"stage mean ({len(times[stage])})"
        else:
            seconds, basis = None, "unknown"
        rows.append(PlannedStep(step.name, stage, "to run", seconds, basis, deps[step.name]))
        to_run.add(step.name)
    return rows


def estimate(rows: Sequence[PlannedStep], workers: int) -> dict[str, float | int]:
    """Total work, critical path and list-scheduled wall time on `workers` (unknown steps cost 0)."""
    costs = {r.name: r.seconds or 0.0 for r in rows}
    deps = {r.name: r.depends_on for r in rows}
    return {"work_s": sum(costs.values()), "critical_path_s": max(bottom_levels(costs, deps).values(), default=0.0),
            "wall_s": makespan(costs, deps, workers), "workers": workers,
            "unknown_steps": sum(r.seconds is None for r in rows)}
