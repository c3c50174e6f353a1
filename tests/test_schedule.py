"""`run --plan`: dependencies from the files steps write and read, and the wall-time estimate."""

from typer.testing import CliRunner

from segdec_prune.pipeline import Manifest, Step, params_hash
from segdec_prune.schedule import dependencies, estimate, makespan, plan_view


def _steps(tmp_path):
    f = {k: tmp_path / k for k in "ABCDE"}
    mk = lambda name, ins, out, stage="": Step(name, lambda: None, [f[i] for i in ins], {"p": name},  # noqa: E731
                                               lambda out=out: [f[out]], stage)
    return [mk("a", "", "A"), mk("b", "A", "B", "s"), mk("c", "A", "C"), mk("e", "A", "E", "s"), mk("d", "BC", "D")], f


def test_plan_estimate_matches_a_hand_computation(tmp_path):
    steps, files = _steps(tmp_path)
    done = lambda sec, stage="": {"status": "done", "stage": stage, "inputs": {}, "params": "old",  # noqa: E731
                                  "outputs": [], "wall_seconds": sec}
    manifest = Manifest(tmp_path / "manifest.json", {"a": done(2), "b": done(3, "s"), "c": done(5), "d": done(1)})
    assert dependencies(steps) == {"a": [], "b": ["a"], "c": ["a"], "e": ["a"], "d": ["b", "c"]}
    rows = plan_view(steps, manifest)
    assert [(r.status, r.seconds) for r in rows] == [("to run", 2), ("to run", 3), ("to run", 5), ("to run", 3), ("to run", 1)]
    assert rows[3].basis == "stage mean (1)"  # e never ran: costed like the other step of its stage
    # By hand: a 0-2; two workers take c (longest path 5+1) and b (3+1) at 2; b ends 5, e runs 5-8;
    # c ends 7, d runs 7-8. One worker: 2+3+5+3+1 = 14. Critical path a-c-d = 8.
    assert estimate(rows, 1) == {"work_s": 14, "critical_path_s": 8, "wall_s": 14, "workers": 1, "unknown_steps": 0}
    assert estimate(rows, 2)["wall_s"] == 8 and estimate(rows, 3)["wall_s"] == 8
    # a up to date (same inputs, params, outputs present): it costs nothing and nothing after it is forced to run.
    files["A"].write_text("x")
    manifest.steps["a"] = {**done(2), "params": params_hash({"p": "a"}), "outputs": [str(files["A"])]}
    rows = plan_view(steps, manifest)
    assert rows[0].status == "up to date" and estimate(rows, 2)["wall_s"] == 6  # b|c at 0; e 3-6; d 5-6
    rows = plan_view(steps, manifest, force={"a"})
    assert rows[0].status == "to run" and all(r.status == "to run" for r in rows)


def test_makespan_edge_cases():
    assert makespan({}, {}, 3) == 0
    assert makespan({"x": 4.0, "y": 4.0}, {"x": [], "y": []}, 8) == 4.0
    try:
        makespan({"x": 1.0}, {"x": []}, 0)
    except ValueError as exc:
        assert "workers" in str(exc)
    else:
        raise AssertionError("0 workers accepted")


def test_run_plan_on_a_config_runs_nothing(tiny_config, tmp_path):
    from segdec_prune.cli import app

    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[data]\nroot = "{tiny_config.data.root}"\ninput_height = 128\ninput_width = 64\n'
                   f'[run]\nname = "p"\ndir = "{tmp_path / "runs"}"\n')
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--plan", "--workers", "4"])
    assert r.exit_code == 0, r.output
    assert "train" in r.output and "4 workers: about" in r.output and "never run" in r.output
    assert not (tmp_path / "runs" / "p" / "models").exists()
