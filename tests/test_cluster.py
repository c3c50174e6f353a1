"""Scale-out on this CPU machine: the Ray executor (2 CPUs) and data-parallel training via torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segdec_prune.cli import app
from segdec_prune.cluster import TOKEN_FILE, SharedStorageError, check_shared_storage
from segdec_prune.config import from_dict, load_config
from segdec_prune.distributed import Ranks, batch_shares
from segdec_prune.pipeline import Manifest
from segdec_prune.results import validate_results
from segdec_prune.schedule import plan_view
from segdec_prune.stages import RunState, plan, train_baseline

from .test_pipeline import CPU_KINDS, RECORD_KEYS, _config

runner = CliRunner()


def _done(run) -> dict[str, dict]:
    path = run / "manifest.json"
    steps = json.loads(path.read_text())["steps"] if path.is_file() else {}
    return {k: v for k, v in steps.items() if v["status"] == "done"}


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray", reason="the Ray executor needs the cluster extra")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_run(ray_address, tiny_synth, tmp_path_factory):
    """The tiny pipeline on Ray: a driver killed once two models are trained, then run again."""
    tmp = tmp_path_factory.mktemp("ray")
    cfg = _config(tiny_synth, tmp)
    run = tmp / "runs" / "p"
    driver = subprocess.Popen([sys.executable, "-m", "segdec_prune.cli", "run", "--config", str(cfg), "--executor",
                               "ray", "--address", ray_address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while sum(k.startswith("prune:") for k in _done(run)) < 1 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the driver ended before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = _done(run)
    resumed = runner.invoke(app, ["run", "--config", str(cfg), "--executor", "ray"])  # joins the test's instance
    return cfg, run, before, resumed


def test_ray_run_resumes_after_a_killed_driver_like_a_local_run(ray_run):
    cfg, run, before, resumed = ray_run
    assert resumed.exit_code == 0, resumed.output
    assert "train" in before and len(before) < 20
    for name in before:  # finished before the kill: not redone
        assert f"{name}: done" not in resumed.output
    steps = json.loads((run / "manifest.json").read_text())["steps"]
    for name, rec in before.items():
        assert steps[name]["finished"] == rec["finished"]
    config = load_config(cfg)
    planned = [s.name for s in plan(config, RunState(config))]
    assert sorted(steps) == sorted(planned)  # the local executor's steps, every one recorded
    assert all(rec["status"] in ("done", "unavailable") and rec.get("node") for rec in steps.values()
               if rec["finished"] not in {r["finished"] for r in before.values()})
    for rec in steps.values():
        assert all(os.path.exists(p) for p in rec["outputs"])
    res = json.loads((run / "real_evaluation_results.json").read_text())
    validate_results(res)
    assert res["schema_version"] == 5
    assert {x["model"] for x in res["records"]} == {"baseline_best", "naive_l1_r50", "ours_c2_r50"}
    assert {(x["runtime"], x["dtype"]) for x in res["records"]} == CPU_KINDS
    assert all(RECORD_KEYS <= set(x) for x in res["records"])
    assert (run / "charts" / "chart2_pareto.png").stat().st_size > 10_000
    assert not list(run.rglob(".*.tmp"))
    again = runner.invoke(app, ["run", "--config", str(cfg), "--executor", "ray"])
    assert again.exit_code == 0 and ": done in" not in again.output, again.output


def test_ray_reports_a_failed_step_and_finishes_the_others(ray_run):
    cfg, run, _, _ = ray_run
    (run / "models" / "naive_l1_r50.pth").write_bytes(b"not a checkpoint")
    r = runner.invoke(app, ["run", "--config", str(cfg), "--executor", "ray", "--force", "export"])
    assert r.exit_code == 1, r.output
    assert "failed: export:naive_l1_r50:" in r.output and "step(s) failed" in r.output
    steps = json.loads((run / "manifest.json").read_text())["steps"]
    assert steps["export:naive_l1_r50"]["status"] == "failed" and steps["export:naive_l1_r50"]["detail"]
    assert steps["export:ours_c2_r50"]["status"] == "done"  # independent: finished
    assert steps["build:onnxruntime-int8:ours_c2_r50"]["status"] == "done"
    assert "build:onnxruntime-int8:naive_l1_r50: blocked" in r.output  # needs the failed export
    assert "evaluate: blocked" in r.output


def test_local_workers_run_the_plan_like_one_process(tiny_synth, tmp_path):
    cfg = _config(tiny_synth, tmp_path)
    run = tmp_path / "runs" / "p"
    r = runner.invoke(app, ["run", "--config", str(cfg), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "local executor, 2 workers" in " ".join(r.output.split())
    steps = json.loads((run / "manifest.json").read_text())["steps"]
    config = load_config(cfg)
    assert sorted(steps) == sorted(s.name for s in plan(config, RunState(config)))
    assert all(rec["status"] in ("done", "unavailable") for rec in steps.values())
    res = json.loads((run / "real_evaluation_results.json").read_text())
    assert {(x["model"], x["runtime"], x["dtype"]) for x in res["records"]} == {
        (m, rt, dt) for m in ("baseline_best", "naive_l1_r50", "ours_c2_r50") for rt, dt in CPU_KINDS}
    again = runner.invoke(app, ["run", "--config", str(cfg), "--workers", "2"])
    assert again.exit_code == 0 and ": done in" not in again.output, again.output
    r = runner.invoke(app, ["run", "--config", str(cfg), "--workers", "2", "--executor", "ray"])
    assert r.exit_code == 2 and "--task-cpus" in r.output


def worker_pid(config, name, token, cpus):
    """A stand-in step body for LocalPool (a module-level function: spawned workers import it)."""
    return os.getpid()


def test_an_exclusive_step_runs_in_a_process_that_ran_nothing_before():
    from segdec_prune.driver import LocalPool
    from segdec_prune.pipeline import Step

    def step(name: str, exclusive: bool = False) -> Step:
        return Step(name, lambda: None, [], {}, list, exclusive=exclusive)

    pool = LocalPool({}, "token", 1, task=worker_pid)
    try:
        before = {pool.submit(step(f"s{i}"), 1).result() for i in range(3)}  # one worker: one process
        timed = pool.submit(step("evaluate", exclusive=True), 1).result()
        after = pool.submit(step("charts"), 1).result()
    finally:
        pool.executor.shutdown()
    assert len(before) == 1 and timed not in before
    assert after == timed  # the pool after it goes on in the fresh process


def test_a_worker_reads_the_data_once_and_scores_as_a_fresh_read(tiny_config, trained):
    from segdec_prune.cluster import _data_state, portable_config
    from segdec_prune.training import validate

    key = json.dumps(portable_config(tiny_config), sort_keys=True)
    first, second = (RunState(tiny_config, data_from=_data_state(key)) for _ in range(2))
    assert first.sets is second.sets  # two steps in one worker: one read
    fresh = RunState(tiny_config).sets
    cpu = torch.device("cpu")
    cached, read = validate(trained, first.sets[1], cpu), validate(trained, fresh[1], cpu)
    assert cached[:3] == read[:3] and np.array_equal(cached.scores, read.scores)
    assert first.sets[1].fingerprint == fresh[1].fingerprint  # so stored scores are reused across them


def test_an_exclusive_step_runs_alone(tmp_path):
    """Nothing else runs beside a step that times latency, and it waits for the running ones; a step
    that cannot run on this machine is recorded without a worker."""
    from segdec_prune.driver import drive
    from segdec_prune.pipeline import Step

    def step(name, inputs=(), exclusive=False):
        return Step(name, lambda: None, [tmp_path / i for i in inputs], {}, lambda: [tmp_path / name],
                    exclusive=exclusive)

    steps = [step("a"), step("b"), step("latency", exclusive=True), step("c"), step("after", ["latency"]),
             Step("trt", lambda: None, [], {}, lambda: [], unavailable=lambda: "no GPU here")]

    class Pool:
        def __init__(self):
            self.running, self.seen = [], []

        def submit(self, s, alongside):
            assert alongside >= 1
            self.seen.append((s.name, list(self.running)))
            self.running.append(s.name)
            return s.name

        def wait(self, handles):
            from segdec_prune.cluster import TaskResult

            name = self.running.pop(0)
            (tmp_path / name).write_text("x")
            return name, TaskResult("done", "", 0.1, {}, "cpu", "here")

        def cancel(self, handles):
            pass

    pool = Pool()
    outcomes = drive(steps, Manifest(tmp_path / "manifest.json"), set(), lambda o: None, pool, exclusive_alone=True,
                     check_here=True)
    assert [o.status for o in outcomes] == ["done"] * 5 + ["unavailable"]
    assert outcomes[-1].detail == "no GPU here" and "trt" not in dict(pool.seen)  # recorded without a worker
    seen = dict(pool.seen)
    assert seen["latency"] == []  # started on an idle pool
    started = [n for n, _ in pool.seen]
    assert all("latency" not in beside for n, beside in pool.seen)  # nothing started beside it
    assert started.index("c") < started.index("latency")  # the others did not wait for it


def test_a_node_without_the_run_folder_is_named(tiny_config):
    tiny_config.run_dir.mkdir(parents=True)
    (tiny_config.run_dir / TOKEN_FILE).write_text("the driver's")
    with pytest.raises(SharedStorageError, match="does not see the driver's run folder"):
        check_shared_storage(tiny_config, "another driver's")
    check_shared_storage(tiny_config, "the driver's")


def test_ray_executor_without_ray_says_how_to_install(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nroot = "{tiny_config.data.root}"\n[run]\ndir = "{tmp_path}"\n')
    r = runner.invoke(app, ["run", "--config", str(cfg), "--executor", "ray"])
    assert r.exit_code == 2 and "pip install 'segdec-prune[cluster]'" in r.output, r.output
    r = runner.invoke(app, ["run", "--config", str(cfg), "--address", "auto"])
    assert r.exit_code == 2 and "--address needs --executor ray" in r.output


def test_batch_shares_split_each_global_batch_once():
    order = list(range(10, 17))  # 7 samples, global batch 3: 3, 3, 1
    for world in (1, 2, 3):
        shares = [list(batch_shares(order, 3, Ranks(r, world))) for r in range(world)]
        for i, chunk in enumerate(([10, 11, 12], [13, 14, 15], [16])):
            real = [ix for rank in shares for ix, s in [rank[i]] if s > 0 for ix in ix]
            assert real == chunk and sum(rank[i][1] for rank in shares) == pytest.approx(1.0)
    assert list(batch_shares([5], 3, Ranks(0, 2))) == [([5], 0.0)]  # nothing left: the sample, no weight


def test_torchrun_two_processes_trains_like_one(tiny_synth, tmp_path):
    """Same global batch (3: shares 1 and 2 per rank, so the weighting matters) and epochs."""
    raw = {"data": {"root": str(tiny_synth), "input_height": 128, "input_width": 64, "val_fraction": 0.3},
           "train": {"epochs": 2, "batch_size": 3, "validate_every": 1, "device": "cpu", "dyn_balanced_loss": False},
           "run": {"name": "one", "dir": str(tmp_path / "runs")}}
    cfg = from_dict(raw)
    single = train_baseline(cfg, RunState(cfg).sets, show_progress=False)
    toml = tmp_path / "ddp.toml"
    toml.write_text(f'[data]\nroot = "{tiny_synth}"\ninput_height = 128\ninput_width = 64\nval_fraction = 0.3\n'
                    '[train]\nepochs = 2\nbatch_size = 3\nvalidate_every = 1\ndevice = "cpu"\ndyn_balanced_loss = false\n'
                    f'[run]\nname = "two"\ndir = "{tmp_path / "runs"}"\n')
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "segdec_prune.cli", "train", "--config", str(toml)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("best validation AP") == 1  # rank 0 speaks for both
    ckpt = torch.load(tmp_path / "runs" / "two" / "models" / "baseline_best.pth", weights_only=False)
    meta = ckpt["metadata"]
    assert meta["world_size"] == 2
    ddp = meta["training"]["history"]
    assert len(ddp) == len(single.history) == 2
    # Epoch 1 averages 5 optimiser steps: equal up to float summation order. Later epochs drift
    # chaotically even in one process (1 vs 2 threads moves epoch 2's decision loss by ~3e-3).
    for key in ("loss_seg", "loss_dec", "loss"):
        assert ddp[0][key] == pytest.approx(getattr(single.history[0], key), rel=1e-5, abs=1e-6)
        assert ddp[1][key] == pytest.approx(getattr(single.history[1], key), abs=2e-2)
    assert not list((tmp_path / "runs").rglob(".*.tmp"))
    two = load_config(toml)  # the pipeline takes the torchrun baseline as its train step
    assert "data-parallel on 2 processes" in Manifest.load(two.run_dir).steps["train"]["detail"]
    rows = plan_view(plan(two, RunState(two)), Manifest.load(two.run_dir))
    assert rows[0].name == "train" and rows[0].status == "up to date"
