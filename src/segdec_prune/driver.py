"""Running a step plan on parallel workers: the scheduling loop the Ray executor and the local
worker pool share, and the local pool (`run --workers N`).

The driver (this process) submits every step whose inputs are ready and alone writes
manifest.json, one record per finished step: an interrupted driver resumes like a one-process
run, and a failed step is recorded while the steps that do not need it go on. A worker gets the
config and a step name and rebuilds the plan itself (`cluster.run_named_step`), so workers share
code, config and storage, never Python objects.

Local workers are processes (spawned: a forked torch thread pool can hang) that share the cores
(see `LocalPool`): on 2 cores two 1-thread fine-tunings at once ran 1.23-1.27x faster than one 2-thread process
(benchmarks/finetune_speed.py). A step that times latency (`exclusive`) waits until the pool
is idle, gets every core, and nothing else starts while it runs, as in a one-process run.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .artifacts import atomic_write
from .config import Config
from .pipeline import Manifest, Outcome, Step, needs_run, record
from .schedule import dependencies, dependents


class Pool(Protocol):
    """Where steps run: submit one (`alongside`: the steps it shares the machine with, itself
    included: the compute-heavy ones running or ready, for a heavy step; all of them otherwise),
    wait for any, cancel the rest."""

    def submit(self, step: Step, alongside: int) -> Any: ...

    def wait(self, handles: list) -> tuple[Any, Any]:  # (handle, cluster.TaskResult or the exception it raised)
        ...

    def cancel(self, handles: list) -> None: ...


def new_token(cfg: Config) -> str:
    """A fresh token in the run folder: every worker reads it back to prove it sees the same storage."""
    from .cluster import TOKEN_FILE

    token = uuid.uuid4().hex
    atomic_write(cfg.run_dir / TOKEN_FILE, lambda tmp: tmp.write_text(token))
    return token


def drive(steps: Sequence[Step], manifest: Manifest, force: set[str], on_event: Callable[[Outcome], None],
          pool: Pool, exclusive_alone: bool = False, check_here: bool = False) -> list[Outcome]:
    """Run the plan on `pool`; outcomes in plan order. A failed step blocks only the steps that need
    its outputs. `exclusive_alone`: an exclusive step starts only on an idle pool and holds it.
    `check_here` (the pool is this machine): a step that says it cannot run here (`Step.unavailable`,
    e.g. TensorRT without a GPU) is recorded so at once, without a round trip to a worker. A
    node that cannot see the run folder, or a write that met a full or read-only disk, stops it all:
    every later step would fail alike."""
    from .artifacts import ArtifactWriteError
    from .cluster import SharedStorageError

    by_name = {s.name: s for s in steps}
    deps = dependencies(steps)
    users = dependents(deps)
    waiting = {n: len(d) for n, d in deps.items()}
    ready = deque(n for n in by_name if not waiting[n])
    blocked: dict[str, str] = {}  # step -> the failed step it needs
    running: dict[Any, tuple[str, dict[str, str], float]] = {}
    outcomes: dict[str, Outcome] = {}

    def finish(out: Outcome) -> None:
        outcomes[out.name] = out
        on_event(out)
        for u in users[out.name]:
            if out.status in ("failed", "blocked"):
                blocked.setdefault(u, blocked.get(out.name, out.name))
            waiting[u] -= 1
            if not waiting[u]:
                ready.append(u)

    def alone() -> bool:  # an exclusive step is running
        return exclusive_alone and any(by_name[n].exclusive for n, _, _ in running.values())

    while ready or running:
        for _ in range(len(ready)):  # steps that finish() makes ready go in the next round
            if alone():
                break
            name = ready.popleft()
            if name in blocked:
                finish(Outcome(name, "blocked", 0.0, f"not run: needs {blocked[name]}, which failed"))
                continue
            stale, inputs = needs_run(by_name[name], manifest, force)
            if not stale:
                finish(Outcome(name, "skipped", 0.0, "up to date"))
                continue
            reason = by_name[name].unavailable() if check_here and by_name[name].unavailable else ""
            if reason:
                finish(record(manifest, by_name[name], inputs, "unavailable", reason, 0.0, {}, ""))
                continue
            if exclusive_alone and by_name[name].exclusive and running:
                ready.append(name)  # waits for an idle pool
                continue
            # compute-heavy steps (training) share the cores with the heavy ones beside them only: the
            # baseline's training gets every core though the short calibration runs beside it
            heavy = by_name[name].gpu
            beside = [n for n, _, _ in running.values()] + list(ready)
            alongside = 1 + sum(1 for n in beside if by_name[n].gpu or not heavy)
            running[pool.submit(by_name[name], alongside)] = (name, inputs, time.perf_counter())
        if not running:
            if ready:
                continue
            break
        handle, result = pool.wait(list(running))
        name, inputs, t0 = running.pop(handle)
        if isinstance(result, BaseException):
            if isinstance(result, (SharedStorageError, ArtifactWriteError)):
                pool.cancel(list(running))
                raise type(result)(str(result)) from None
            detail = f"{type(result).__name__}: {result}".strip().splitlines()[0]
            out = record(manifest, by_name[name], inputs, "failed", detail, time.perf_counter() - t0, {}, "")
        else:
            out = record(manifest, by_name[name], inputs, result.status, result.detail, result.seconds,
                         result.versions, result.device, result.node)
        finish(out)
    return [outcomes[s.name] for s in steps]


class LocalPool:
    """`workers` spawned processes on this machine. A step gets cpu_count // min(`alongside`,
    `workers`) threads: the baseline's training, which no heavy step runs beside, gets every
    core; an exclusive step gets every core, in a pool started anew for it (the driver submits
    it only to an idle pool)."""

    def __init__(self, config: dict, token: str, workers: int, task: Callable[..., Any] | None = None) -> None:
        from .cluster import run_named_step

        self.config, self.token, self.workers = config, token, workers
        self.task = task or run_named_step  # (config, step name, token, threads) -> TaskResult, in a worker
        self.cores = os.cpu_count() or 1
        self.executor: futures.ProcessPoolExecutor | None = None  # started by the first step that runs

    def submit(self, step: Step, alongside: int) -> futures.Future:
        if step.exclusive and self.executor is not None:
            # fresh processes for a step that times: in a worker that had fine-tuned and built
            # before, evaluate's PyTorch passes took 127-131 s against 70-85 s (docs/measured.md);
            # the idle old workers exit on their own, nothing waits for them
            self.executor.shutdown(wait=False)
            self.executor = None
        if self.executor is None:
            self.executor = futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        cpus = self.cores if step.exclusive else max(1, self.cores // min(self.workers, max(1, alongside)))
        return self.executor.submit(self.task, self.config, step.name, self.token, cpus)

    def wait(self, handles: list) -> tuple[futures.Future, Any]:
        done, _ = futures.wait(handles, return_when=futures.FIRST_COMPLETED)
        f = next(iter(done))
        return f, f.exception() or f.result()

    def cancel(self, handles: list) -> None:
        for f in handles:
            f.cancel()


def execute_local(cfg: Config, steps: Sequence[Step], manifest: Manifest, force: set[str],
                  on_event: Callable[[Outcome], None], workers: int) -> list[Outcome]:
    """Run the plan on `workers` local processes (the driver records; see the module doc)."""
    from .cluster import portable_config

    pool = LocalPool(portable_config(cfg), new_token(cfg), workers)
    try:
        return drive(steps, manifest, force, on_event, pool, exclusive_alone=True, check_here=True)
    finally:
        if pool.executor is not None:
            pool.executor.shutdown(wait=True, cancel_futures=True)
