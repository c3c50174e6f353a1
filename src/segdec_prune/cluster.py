"""The Ray executor: the same step plan as a local run, its independent steps spread over a cluster.

The driver (this process) builds the plan and runs it with `driver.drive`, the loop the local
worker pool uses too: every step whose inputs are ready becomes a Ray task, the driver alone
writes manifest.json. A task gets the config and a step name, rebuilds the plan on its node and
runs that step, so nodes share code, config and storage, never Python objects. Steps that time
latency (`exclusive`) run alone on the driver's node: they ask for all of its CPUs and GPUs, so
no other task shares the machine while they time, and their figures come from one machine.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, from_dict
from .pipeline import Manifest, Outcome, Step, run_step

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
                                 "data.root on storage every node mounts at the same path (docs/scaling.md)")
    if not Path(cfg.data.root).is_dir():
        raise SharedStorageError(f"node {host} does not see the data folder {cfg.data.root}: mount it at the same "
                                 "path on every node")


def run_named_step(config: dict[str, Any], name: str, token: str, cpus: int) -> TaskResult:
    """One Ray task: check shared storage, rebuild the plan on this node, run step `name` quietly."""
    import torch

    from .allocator import keep_freed_memory
    from .pipeline import machine
    from .results import library_versions
    from .stages import RunState, plan
    from .training import new_progress

    keep_freed_memory()
    cfg = from_dict(config)
    check_shared_storage(cfg, token)
    torch.set_num_threads(max(1, cpus))
    state = RunState(cfg, progress=new_progress(disable=True), data_from=_data_state(json.dumps(config, sort_keys=True)))
    steps = {s.name: s for s in plan(cfg, state)}
    if name not in steps:
        raise ClusterError(f"node {socket.gethostname()} plans no step {name!r}: run the same segdec-prune "
                           "version on every node")
    status, detail, seconds = run_step(steps[name])
    return TaskResult(status, detail, seconds, library_versions(), machine(), socket.gethostname())


@functools.lru_cache(maxsize=1)
def _data_state(config: str):
    """A state whose splits are read once per worker process and config (on first use: most steps
    never need them): a worker runs many steps of one run, and reading the data is seconds a step."""
    from .stages import RunState

    return RunState(from_dict(json.loads(config)))


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


class RayPool:
    """Steps as Ray tasks, each asking for what `Requests.options` says."""

    def __init__(self, ray, requests: Requests, config: dict[str, Any], token: str) -> None:
        self.ray, self.requests, self.config, self.token = ray, requests, config, token
        self.task = ray.remote(max_retries=0)(run_named_step)

    def submit(self, step: Step, alongside: int = 1):
        opts = self.requests.options(step)
        return self.task.options(**opts).remote(self.config, step.name, self.token, int(opts["num_cpus"]))

    def wait(self, handles: list):
        [ref], _ = self.ray.wait(handles, num_returns=1)
        try:
            return ref, self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            return ref, getattr(exc, "cause", None) or exc

    def cancel(self, handles: list) -> None:
        for ref in handles:
            self.ray.cancel(ref, force=True)


def _drive(ray, cfg: Config, steps: Sequence[Step], manifest: Manifest, force: set[str],
           on_event: Callable[[Outcome], None], task_cpus: int) -> list[Outcome]:
    from .driver import drive, new_token

    pool = RayPool(ray, cluster_requests(ray, task_cpus), portable_config(cfg), new_token(cfg))
    return drive(steps, manifest, force, on_event, pool)
