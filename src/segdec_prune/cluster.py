"""The Ray executor: the same step plan as a local run, its independent steps spread over a cluster.

The driver (this process) builds the plan, submits every step whose inputs are ready as a Ray task
and alone writes manifest.json, one record per finished step: an interrupted driver resumes like a
local run, and a failed task is recorded and reported while the steps that do not need it go on.
A task gets the config and a step name, rebuilds the plan on its node and runs that step, so
nodes share code, config and storage, never Python objects. Steps that time latency (`exclusive`)
run alone on the driver's node: they ask for all of its CPUs and GPUs, so no other task shares
the machine while they time, and their figures come from one machine, as in a local run.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import atomic_write
from .config import Config, from_dict
from .pipeline import Manifest, Outcome, Step, needs_run, record, run_step
from .schedule import dependents, dependencies

INSTALL_HINT = "the Ray executor needs ray: pip install 'segdec-prune[cluster]'"
TOKEN_FILE = ".executor-token"  # written by the driver, read by every task: proves shared storage


class ClusterError(RuntimeError):
    """The cluster cannot run this plan (no ray, no shared storage, a request no node can meet)."""


class SharedStorageError(ClusterError):
    """A task's node does not see the run folder or the data the driver sees."""


@dataclass
class TaskResult:
    status: str
    detail: str
    seconds: float
    versions: dict[str, str]
    device: str
    node: str


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return ray


def portable_config(cfg: Config) -> dict[str, Any]:
    """The config as a dict with absolute data and run paths: tasks do not share the driver's cwd."""
    raw = cfg.to_dict()
    raw["data"]["root"] = str(Path(cfg.data.root).resolve())
    raw["run"]["dir"] = str(Path(cfg.run.dir).resolve())
    return raw


def check_shared_storage(cfg: Config, token: str) -> None:
    """Fail with one clear line when this node does not see the driver's run folder or data."""
    host = socket.gethostname()
    try:
        seen = (cfg.run_dir / TOKEN_FILE).read_text().strip()
    except OSError:
        seen = ""
    if seen != token:
        raise SharedStorageError(f"node {host} does not see the driver's run folder {cfg.run_dir}: put run.dir and "
                                 "data.root on storage every node mounts at the same path (README: On a Ray cluster)")
    if not Path(cfg.data.root).is_dir():
        raise SharedStorageError(f"node {host} does not see the data folder {cfg.data.root}: mount it at the same "
                                 "path on every node")


def run_named_step(config: dict[str, Any], name: str, token: str, cpus: int) -> TaskResult:
    """One Ray task: check shared storage, rebuild the plan on this node, run step `name` quietly."""
    import torch

    from .pipeline import machine
    from .results import library_versions
    from .stages import RunState, plan
    from .training import new_progress

    cfg = from_dict(config)
    check_shared_storage(cfg, token)
    torch.set_num_threads(max(1, cpus))
    steps = {s.name: s for s in plan(cfg, RunState(cfg, progress=new_progress(disable=True)))}
    if name not in steps:
        raise ClusterError(f"node {socket.gethostname()} plans no step {name!r}: run the same segdec-prune "
                           "version on every node")
    status, detail, seconds = run_step(steps[name])
    return TaskResult(status, detail, seconds, library_versions(), machine(), socket.gethostname())


@dataclass
class Requests:
    """How a step's needs become Ray resource requests on this cluster."""

    task_cpus: int
    cluster_gpus: float
    node_id: str  # the driver's node: where latency is timed
    node_cpus: float
    node_gpus: float

    def options(self, step: Step) -> dict[str, Any]:
        if step.exclusive:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            return {"num_cpus": self.node_cpus, "num_gpus": self.node_gpus,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(self.node_id, soft=False)}
        return {"num_cpus": self.task_cpus, "num_gpus": 1 if step.gpu and self.cluster_gpus else 0}


def cluster_requests(ray, task_cpus: int) -> Requests:
    """Resource requests for this cluster; refuses a CPU request that no node could meet."""
    node_id = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    mine = next((n["Resources"] for n in nodes if n["NodeID"] == node_id), None)
    if mine is None:
        raise ClusterError("the driver must run on a node of the cluster (ray start ...), not through a Ray client")
    most = max(n["Resources"].get("CPU", 0) for n in nodes)
    if task_cpus > most:
        raise ClusterError(f"--task-cpus {task_cpus}: no node has more than {most:g} CPUs")
    return Requests(task_cpus, ray.cluster_resources().get("GPU", 0), node_id, mine.get("CPU", 1), mine.get("GPU", 0))


def execute_ray(cfg: Config, steps: Sequence[Step], manifest: Manifest, force: set[str],
                on_event: Callable[[Outcome], None] | None = None, address: str | None = None,
                task_cpus: int = 1) -> list[Outcome]:
    """Run the plan on Ray (a new local instance when `address` is None and none is running);
    outcomes in plan order. A failed step blocks only the steps that need its outputs."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        return _drive(ray, cfg, steps, manifest, force, on_event or (lambda o: None), task_cpus)
    finally:
        if started:
            ray.shutdown()


def _drive(ray, cfg: Config, steps: Sequence[Step], manifest: Manifest, force: set[str],
           on_event: Callable[[Outcome], None], task_cpus: int) -> list[Outcome]:
    requests = cluster_requests(ray, task_cpus)
    token = uuid.uuid4().hex
    atomic_write(cfg.run_dir / TOKEN_FILE, lambda tmp: tmp.write_text(token))
    config = portable_config(cfg)
    task = ray.remote(max_retries=0)(run_named_step)
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

    while ready or running:
        while ready:
            name = ready.popleft()
            if name in blocked:
                finish(Outcome(name, "blocked", 0.0, f"not run: needs {blocked[name]}, which failed"))
                continue
            stale, inputs = needs_run(by_name[name], manifest, force)
            if not stale:
                finish(Outcome(name, "skipped", 0.0, "up to date"))
                continue
            opts = requests.options(by_name[name])
            cpus = int(opts["num_cpus"])
            running[task.options(**opts).remote(config, name, token, cpus)] = (name, inputs, time.perf_counter())
        if not running:
            break
        [ref], _ = ray.wait(list(running), num_returns=1)
        name, inputs, t0 = running.pop(ref)
        try:
            r = ray.get(ref)
            out = record(manifest, by_name[name], inputs, r.status, r.detail, r.seconds, r.versions, r.device, r.node)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, SharedStorageError):
                for other in running:
                    ray.cancel(other, force=True)
                raise SharedStorageError(str(cause)) from None
            detail = f"{type(cause).__name__}: {cause}".strip().splitlines()[0]
            out = record(manifest, by_name[name], inputs, "failed", detail, time.perf_counter() - t0, {}, "")
        finish(out)
    return [outcomes[s.name] for s in steps]
