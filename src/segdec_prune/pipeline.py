"""The whole pipeline as resumable stages, recorded in the run's manifest.json.

A stage records the fingerprints of its inputs (files: sha256; data folders: names, sizes and
times), a hash of the config it depends on, its outputs, wall time, library versions and device.
On the next run a stage whose record matches and whose outputs exist is skipped; `force` reruns
it. Outputs are written atomically and the manifest is rewritten after every stage (and every
pruned model), so a run killed at any point resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import sha256, write_json
from .config import Config

MANIFEST = "manifest.json"


def folder_fingerprint(folder: Path) -> str:
    """Cheap identity of a data folder: every file's relative name, size and mtime, in the order of
    their path components. Walked with `os.scandir` (each entry's stat comes with the listing):
    every step that reads the data takes this, 62 times in a demo rerun, where sorting 1,800
    `Path` objects and a stat call per file took most of the rerun's time."""
    files: list[tuple[tuple[str, ...], int, int]] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(str(folder), ())]
    while stack:
        where, parts = stack.pop()
        with os.scandir(where) as entries:
            for e in entries:
                if e.is_dir() and not e.is_symlink():  # as `Path.rglob`: a linked folder is not walked
                    stack.append((e.path, (*parts, e.name)))
                elif e.is_file():
                    st = e.stat()
                    files.append(((*parts, e.name), st.st_size, st.st_mtime_ns))
    h = hashlib.sha256()
    for parts, size, mtime in sorted(files):
        h.update(f"{os.sep.join(parts)}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    if path.is_dir():
        return "dir:" + folder_fingerprint(path)
    if not path.is_file():
        return "missing"
    st = path.stat()
    return _file_hash(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256, computed once per file version per process (many steps read the baseline)."""
    return sha256(path)


def params_hash(params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Step:
    """One unit of work: what it reads, what config it depends on, what it writes."""

    name: str
    run: Callable[[], Any]
    inputs: list[Path]
    params: Any
    outputs: Callable[[], list[Path]]
    stage: str = ""
    produces: list[Path] | None = None  # files it writes when it can run (default: outputs())
    gpu: bool = False  # runs faster on a GPU (training, TensorRT): a cluster gives it one
    exclusive: bool = False  # times latency: a cluster runs it alone on its node
    unavailable: Callable[[], str] | None = None  # why it cannot run on this machine ("" when it can)

    def products(self) -> list[Path]:
        """What later steps may read from it: the plan view's dependencies."""
        return self.outputs() if self.produces is None else self.produces


@dataclass
class Manifest:
    path: Path
    steps: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest":
        path = run_dir / MANIFEST
        steps = json.loads(path.read_text())["steps"] if path.is_file() else {}
        return cls(path, steps)

    def save(self) -> None:
        write_json({"steps": self.steps}, self.path)


@dataclass
class Outcome:
    name: str
    status: str  # done | skipped (up to date) | unavailable | failed | blocked (after a failed step)
    seconds: float
    detail: str = ""


def is_current(record: dict | None, step: Step, inputs: dict[str, str]) -> bool:
    if not record or record.get("status") != "done":
        return False
    if record.get("inputs") != inputs or record.get("params") != params_hash(step.params):
        return False
    return all(Path(p).exists() for p in record.get("outputs", []))


def needs_run(step: Step, manifest: Manifest, force: set[str]) -> tuple[bool, dict[str, str]]:
    """(whether the step must run, its input fingerprints): forced, or its record is stale."""
    inputs = {str(p): fingerprint(p) for p in step.inputs}
    forced = step.name in force or step.stage in force
    return forced or not is_current(manifest.steps.get(step.name), step, inputs), inputs


def record(manifest: Manifest, step: Step, inputs: dict[str, str], status: str, detail: str, seconds: float,
           versions: dict[str, str], device: str, node: str | None = None) -> Outcome:
    """Write one finished step into the manifest (saved at once, atomically); its outcome."""
    manifest.steps[step.name] = {
        "status": status, "stage": step.stage or step.name, "inputs": inputs,
        "params": params_hash(step.params), "outputs": [str(p) for p in step.outputs()],
        "wall_seconds": round(seconds, 3), "detail": str(detail), "versions": versions, "device": device,
        **({"node": node} if node else {}), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest.save()
    return Outcome(step.name, status, seconds, str(detail))


def run_step(step: Step) -> tuple[str, str, float]:
    """(status, detail, seconds) of running one step here; StageUnavailable is a status, not an error."""
    t0 = time.perf_counter()
    if step.unavailable and (reason := step.unavailable()):
        return "unavailable", reason, 0.0
    try:
        detail, status = step.run() or "", "done"
    except StageUnavailable as exc:
        detail, status = str(exc), "unavailable"
    return status, str(detail), time.perf_counter() - t0


def execute(steps: Iterable[Step], manifest: Manifest, force: set[str], versions: dict[str, str],
            device: str, on_event: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """The local executor: run or skip each step in plan order; the manifest is saved after every step."""
    outcomes = []
    for step in steps:
        stale, inputs = needs_run(step, manifest, force)
        if stale:
            out = record(manifest, step, inputs, *run_step(step), versions, device)
        else:
            out = Outcome(step.name, "skipped", 0.0, "up to date")
        outcomes.append(out)
        if on_event:
            on_event(out)
    return outcomes


class StageUnavailable(RuntimeError):
    """The stage cannot run on this machine (e.g. TensorRT without a GPU): recorded, not fatal."""


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.processor() or platform.machine()} ({platform.system()}){gpu}"


def config_sections(cfg: Config, *names: str) -> dict:
    return {n: asdict(getattr(cfg, n)) for n in names}
