"""Per-block latency on the target runtime, measured once per machine and cached in the run.

Each prunable block (max-pool if one precedes it -> conv -> FeatureNorm -> ReLU) is exported at
its real input size and timed at a grid of (input, output) widths; a model's predicted latency
is the sum of its blocks' (interpolated) times plus the rest of the network, which is the
measured baseline minus the sum of its blocks. Runtimes pad channels to their SIMD/tensor-core
block, so a 17-channel layer can cost what a 32-channel one does: a probe sweeps one block's
output width and finds that step, predictions round widths up to it, and `prune.align` should
be a multiple of it (the CLI says so when it is not).

The cache file is keyed by everything that changes the numbers: runtime and its version,
precision, threads, input size, the baseline's widths, the CPU or GPU model. A different key is
a different file; a damaged file is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .artifacts import write_json
from .export import export_module, export_onnx
from .model import BlockShape, SegDecNet, Widths, block_shapes, conv_block
from .runtimes.base import RUNTIMES, unavailable_reason

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)
FORMAT = 2  # 2: OpenVINO blocks timed with the batch fixed, as OpenVinoRuntime compiles them
GRID_POINTS = 6  # widths per axis timed for each block (interpolated between)
WARMUP, RUNS = 2, 15
STEPS = (2, 4, 8, 16, 32)  # channel steps the probe tests
FLAT = 0.06  # within a step, widths cost the same as its top within this share


class LatencyTableError(ValueError):
    """A table cannot be built or used here; the message says why."""


@dataclass
class BlockTable:
    name: str
    cin: list[int]
    cout: list[int]
    ms: list[list[float]]  # ms[i][j] at cin[i], cout[j]; non-decreasing along both axes

    def predict(self, cin: int, cout: int, step: int) -> float:
        def snap(x: int, grid: list[int]) -> float:
            above = [g for g in grid if g >= x]
            return float(min(-(-x // step) * step, above[0]) if above else grid[-1])

        ms = np.asarray(self.ms)
        row = [np.interp(snap(cout, self.cout), self.cout, r) for r in ms]
        return float(np.interp(snap(cin, self.cin), self.cin, row))


@dataclass
class LatencyTable:
    key: dict
    step: int  # the runtime's channel step found by the probe
    probe: dict  # {"block", "cout", "ms"}: the sweep the step comes from
    blocks: list[BlockTable]
    baseline_ms: float  # the whole baseline, measured
    rest_ms: float  # baseline_ms minus its blocks: pools, heads, graph overhead
    seconds: float = 0.0
    path: str = ""

    def predict(self, widths: Widths) -> float:
        """Predicted batch-1 milliseconds of SegDecNet(widths) in this table's runtime. Where the
        blocks, timed one by one, add up to more than the whole baseline (a loaded machine), the
        rest is negative: then the blocks are scaled to the baseline instead, so that no
        prediction goes below zero and the baseline is still predicted exactly."""
        k = self.key
        shapes = block_shapes(widths, k["in_channels"], k["height"], k["width"], k["include_extractor"])
        blocks = sum(t.predict(b.cin, b.cout, self.step) for t, b in zip(self.blocks, shapes, strict=True))
        if self.rest_ms >= 0:
            return self.rest_ms + blocks
        return blocks * self.baseline_ms / (self.baseline_ms - self.rest_ms)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        d = {k: v for k, v in d.items() if k != "format"}
        return cls(**{**d, "blocks": [BlockTable(**b) for b in d["blocks"]]})


def device_name(runtime: str) -> str:
    """The CPU (or, for TensorRT, GPU) model: a table from another machine does not apply here."""
    if runtime == "tensorrt":
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    if runtime == "openvino":
        import openvino

        return openvino.__version__
    import tensorrt

    return tensorrt.__version__


def table_key(runtime: str, precision: str, threads: int, in_channels: int, height: int, width: int,
              widths: Widths, include_extractor: bool) -> dict:
    if runtime not in RUNTIMES or runtime == "torch":
        raise LatencyTableError(f"unknown runtime {runtime!r}; latency tables exist for {', '.join(RUNTIMES)}")
    if precision not in RUNTIMES[runtime]:
        raise LatencyTableError(f"{runtime} runs {', '.join(RUNTIMES[runtime])}, not {precision!r}")
    if reason := unavailable_reason(runtime):
        raise LatencyTableError(f"{runtime} latency table: {reason}")
    return {"format": FORMAT, "runtime": runtime, "version": runtime_version(runtime), "precision": precision,
            "threads": threads, "in_channels": in_channels, "height": height, "width": width,
            "widths": widths.to_dict(), "include_extractor": include_extractor, "device": device_name(runtime),
            "grid_points": GRID_POINTS, "runs": RUNS}


def run_key(cfg: "Config", runtime: str, precision: str, widths: Widths) -> dict:
    """The key of a run's table: its input size, prune.include_extractor and deploy.threads."""
    d = cfg.data
    return table_key(runtime, precision, cfg.deploy.threads, d.channels, d.input_height, d.input_width, widths,
                     cfg.prune.include_extractor)


def table_path(run_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(run_dir) / "latency" / f"{key['runtime']}_{key['precision']}_t{key['threads']}_{digest}.json"


def load_table(path: Path, key: dict) -> LatencyTable | None:
    """The cached table at `path` if it holds `key`; None when missing, damaged or for another key."""
    try:
        table = LatencyTable.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("latency table %s is damaged (%s); measuring again", path, exc)
        return None
    if table.key != key:
        return None
    table.path = str(path)
    return table


def latency_table(run_dir: Path, key: dict, on_step: Callable[[str], None] | None = None) -> tuple[LatencyTable, bool]:
    """(table, reused): the cached table for `key`, or a new one measured and saved atomically."""
    if (table := cached(run_dir, key)) is not None:
        return table, True
    table = measure(key, on_step)
    table.path = str(write_json(table.to_dict(), table_path(run_dir, key)))
    return table, False


def grid(full: int, step: int, points: int = GRID_POINTS) -> list[int]:
    """Candidate widths: multiples of `step` up to `full` (and `full`), at most `points`, evenly spread."""
    cands = list(range(step, full + 1, step)) or [full]
    if cands[-1] != full:
        cands.append(full)
    if len(cands) <= points:
        return cands
    return [cands[i] for i in sorted(set(np.round(np.linspace(0, len(cands) - 1, points)).astype(int)))]


def block_module(b: BlockShape, cin: int, cout: int) -> nn.Module:
    return nn.Sequential(*([nn.MaxPool2d(2)] if b.pool else []), conv_block(cin, cout, b.kernel))


def resized(template: onnx.ModelProto, cin: int, cout: int) -> onnx.ModelProto:
    """The block's exported graph with (cin, cout) channels: the same ops, new weight shapes
    (one export per block instead of one per grid point: the exporter takes seconds)."""
    m = onnx.ModelProto()
    m.CopyFrom(template)
    del m.graph.value_info[:]
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        shape = numpy_helper.to_array(init).shape
        if len(shape) == 4 and init.name.endswith("weight"):
            new = (rng.standard_normal((cout, cin, *shape[2:])) * 0.05).astype(np.float32)
        elif len(shape) == 4 and shape[0] == 1:  # FeatureNorm scale / bias [1, C, 1, 1]
            new = np.ones((1, cout, 1, 1), np.float32)
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(new, init.name))
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = cin
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = cout
    return m


def _timer(key: dict, folder: Path) -> Callable[[onnx.ModelProto, np.ndarray], Callable[[int], float]]:
    """prepare(graph, sample) -> median_ms(runs): the graph built for the key's runtime and
    precision and warmed up (INT8: quantized first, calibrated on random inputs: the values do
    not change the kernels that run)."""
    runtime, precision, threads = key["runtime"], key["precision"], key["threads"]
    count = iter(range(1 << 30))

    def prepare(proto: onnx.ModelProto, sample: np.ndarray) -> Callable[[int], float]:
        path = folder / f"graph{next(count)}.onnx"
        onnx.save_model(proto, str(path))
        if precision == "int8":
            from .runtimes.onnxruntime_runtime import quantize_int8

            calib = np.random.default_rng(0).random((1, *sample.shape[1:]), dtype=np.float32)  # blocks: batch 1 only
            path = quantize_int8(path, path.with_name(f"{path.stem}_int8.onnx"), calib, for_tensorrt=runtime == "tensorrt")
        if runtime in ("onnxruntime", "openvino"):  # OpenVINO INT8: it reads the QDQ file
            return import_module(f".runtimes.{runtime}_runtime", __package__).latency_timer(path, sample, threads, WARMUP)
        from .runtimes.tensorrt_runtime import latency_timer as trt_timer

        return trt_timer(path, precision, sample, WARMUP)

    return prepare


def find_step(cout: list[int], ms: list[float]) -> int:
    """The largest channel step within which widths cost the same as the step's top width."""
    at = dict(zip(cout, ms))
    best = 1
    for s in STEPS:
        tops = [(w, -(-w // s) * s) for w in cout if -(-w // s) * s in at and w % s]
        if not tops:
            continue
        dev = np.median([(at[t] - at[w]) / at[t] for w, t in tops])
        if dev <= FLAT:
            best = s
    return best


@contextlib.contextmanager
def network_timer(key: dict, reference_ms: float | None = None, rounds: int = 3) -> Iterator[Callable[[Widths], float]]:
    """time(widths) -> median ms of a whole SegDecNet(widths) (random weights) in the key's
    runtime and precision.

    With `reference_ms` (the table's baseline), each network is timed in `rounds` alternating
    blocks with the baseline (built once per timer) and reported as reference_ms x its ratio to
    the baseline: a machine that is momentarily slower or faster than when the table was measured
    (a shared 2-core CPU drifts by 5-10 %) then does not move the answer.
    """
    c, h, w = key["in_channels"], key["height"], key["width"]
    x = np.random.default_rng(0).random((1, c, h, w), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        prepare = _timer(key, Path(tmp))
        baseline = None if reference_ms is None else \
            prepare(export_onnx(SegDecNet(c, Widths.from_dict(key["widths"])), h, w), x)

        def time_network(widths: Widths) -> float:
            timers = [prepare(export_onnx(SegDecNet(c, widths), h, w), x), *([baseline] if baseline else [])]
            ms = np.median(np.array([[t(RUNS) for t in timers] for _ in range(rounds)]), axis=0)
            return float(ms[0] if baseline is None else reference_ms * ms[0] / ms[1])

        yield time_network


def measure_widths(key: dict, widths: Widths, reference_ms: float | None = None, rounds: int = 3) -> float:
    """One network's milliseconds; see `network_timer`."""
    with network_timer(key, reference_ms, rounds) as time_network:
        return time_network(widths)


def measure(key: dict, on_step: Callable[[str], None] | None = None) -> LatencyTable:
    """Time the probe, every block on its grid, and the whole baseline (tens of seconds on a CPU)."""
    start = time.perf_counter()
    say = on_step or (lambda _msg: None)
    widths = Widths.from_dict(key["widths"])
    shapes = block_shapes(widths, key["in_channels"], key["height"], key["width"], key["include_extractor"])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        prepare = _timer(key, Path(tmp))

        def timed(proto: onnx.ModelProto, x: np.ndarray) -> float:
            return prepare(proto, x)(RUNS)

        def sample(b: BlockShape, cin: int) -> np.ndarray:
            return rng.random((1, cin, b.height, b.width), dtype=np.float32)

        templates: dict[tuple, onnx.ModelProto] = {}

        def template(b: BlockShape) -> onnx.ModelProto:  # blocks of one shape share one export
            shape = (b.pool, b.kernel, b.cin, b.cout, b.height, b.width)
            if shape not in templates:
                templates[shape] = export_module(block_module(b, b.cin, b.cout), torch.rand(1, b.cin, b.height, b.width))
            return templates[shape]

        probe_block = next((b for b in shapes[1:] if b.cout >= 32 and b.cin == b.cout), None)
        probe = {"block": None, "cout": [], "ms": []}
        step = 1
        if probe_block is not None:
            say(f"probe {probe_block.name}")
            tpl, x = template(probe_block), sample(probe_block, probe_block.cin)
            couts = list(range(probe_block.cout // 2 + 1, probe_block.cout + 1))
            probe = {"block": probe_block.name, "cout": couts,
                     "ms": [timed(resized(tpl, probe_block.cin, c), x) for c in couts]}
            step = find_step(couts, probe["ms"])
        tables, prev = [], [key["in_channels"]]
        for b in shapes:
            say(f"block {b.name}")
            cins = [c + 1 for c in prev] if b.name == "extractor.0" else prev
            couts = grid(b.cout, step)
            tpl = template(b)
            ms = np.array([[timed(resized(tpl, ci, co), sample(b, ci)) for co in couts] for ci in cins])
            ms = np.maximum.accumulate(np.maximum.accumulate(ms, axis=0), axis=1)  # timing noise must not
            tables.append(BlockTable(b.name, cins, couts, ms.round(4).tolist()))  # make a wider layer cheaper
            prev = couts
    say("whole baseline")
    baseline_ms = measure_widths(key, widths)
    blocks_ms = sum(t.predict(b.cin, b.cout, step) for t, b in zip(tables, shapes))
    return LatencyTable(key, step, probe, tables, baseline_ms, baseline_ms - blocks_ms, time.perf_counter() - start)


def cached(run_dir: Path, key: dict) -> LatencyTable | None:
    """The run's table for `key` if one was measured (never measures)."""
    return load_table(table_path(run_dir, key), key)


def cached_for(cfg: "Config", runtime: str, precision: str, widths: Widths) -> LatencyTable | None:
    """The run's table for this runtime, precision and machine if one was measured; None also
    where there can be none (torch, a runtime not installed here)."""
    try:
        return cached(cfg.run_dir, run_key(cfg, runtime, precision, widths))
    except (LatencyTableError, ImportError):
        return None
