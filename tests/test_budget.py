"""Budgets: global allocation, the MAC target on SegDecNet, the latency table's cache, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from segdec_prune import latency_table as lt
from segdec_prune.cli import app
from segdec_prune.config import from_dict
from segdec_prune.model import SegDecNet, Widths, conv_macs
from segdec_prune.profiling import macs_and_params
from segdec_prune.pruning.allocate import Budget, BudgetError, allocate, retention_loss
from segdec_prune.pruning.methods import budget_model_name, get_method
from segdec_prune.pruning.plan import plan_target

runner = CliRunner()
SIZE = (128, 64)


def toy_cost(ws) -> float:
    """A latency-like toy: per-layer cost on a staircase of 4 channels, layer 0 dearest."""
    steps = [-(-w // 4) * 4 for w in ws]
    return 3.0 * steps[0] + 1.0 * steps[1] + 0.5 * steps[1] * steps[2] / 16


@pytest.mark.parametrize("align", [1, 4, 8])
def test_allocation_meets_budget_floor_and_alignment(align):
    rng = np.random.default_rng(0)
    full = (32, 48, 64)
    scores = [rng.random(w) for w in full]
    budget = 0.4 * toy_cost(full)
    widths = allocate(scores, full, toy_cost, budget, min_width=6, align=align)
    assert toy_cost(widths) <= budget
    floor = -(-6 // align) * align
    assert all(w >= floor for w in widths)
    assert all(w % align == 0 for w in widths)
    for layer in range(3):  # tight: giving any layer its next chunk back breaks the budget
        if widths[layer] < full[layer]:
            more = list(widths)
            more[layer] = min(full[layer], (widths[layer] // align + 1) * align)
            assert toy_cost(more) > budget


def test_allocation_takes_the_unimportant_channels_first():
    full = (16, 16)
    flat = np.ones(16)
    skewed = np.r_[np.full(12, 1e-3), np.full(4, 10.0)]  # 12 channels carry almost nothing
    widths = allocate([flat, skewed], full, lambda ws: float(sum(ws)), 20, min_width=1, align=1)
    assert widths[1] == 4 and widths[0] == 16
    assert retention_loss(skewed)[12] < retention_loss(flat)[1]  # 12 near-zero channels cost less than 1 real one


def test_allocation_says_when_the_budget_cannot_be_met():
    with pytest.raises(BudgetError, match="narrowest widths"):
        allocate([np.ones(32)], (32,), lambda ws: float(ws[0]), 4, min_width=8, align=8)


def test_mac_target_holds_on_segdecnet(tiny_config):
    model, cfg = SegDecNet(), tiny_config
    planned = plan_target(model, get_method("naive_l1"), Budget("macs", 0.25), cfg, [])
    pruned = SegDecNet(widths=planned.widths)
    share = macs_and_params(pruned, *SIZE)[0] / macs_and_params(model, *SIZE)[0]
    assert 0.22 <= share <= 0.25, share
    assert all(w % cfg.prune.align == 0 for w in planned.widths.volume)
    assert planned.info["budget"]["kind"] == "macs" and planned.info["mac_fraction"] == pytest.approx(share, abs=0.002)
    for w in (Widths(), planned.widths):  # the planner's MAC formula is torch-pruning's count, to 0.3 %
        assert conv_macs(w, 3, *SIZE) == pytest.approx(macs_and_params(SegDecNet(widths=w), *SIZE)[0], rel=3e-3)


def test_budget_names_and_bad_targets():
    assert budget_model_name("ours_c4", "macs", 0.2) == "ours_c4_m20"
    assert budget_model_name("ours_c4", "latency", 7.5) == "ours_c4_t7p5ms"
    assert budget_model_name("naive_l1", "latency", 8) == "naive_l1_t8ms"
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(BudgetError, match=r"\(0, 1\)"):
            Budget("macs", bad)
    with pytest.raises(BudgetError):
        Budget("latency", 0)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """One real latency table for SegDecNet at 128x64 on ONNX Runtime (tens of seconds)."""
    run = tmp_path_factory.mktemp("lat")
    key = lt.table_key("onnxruntime", "fp32", 1, 3, *SIZE, Widths(), False)
    table, reused = lt.latency_table(run, key)
    assert not reused
    return run, key, table


def test_latency_table_predicts_the_baseline_and_is_reused(table_run, monkeypatch):
    run, key, table = table_run
    assert table.predict(Widths()) == pytest.approx(table.baseline_ms)  # rest = baseline - blocks, by definition
    narrow = Widths((16, 16, 16, 16, 16, 16, 16, 16, 128))
    assert 0 < table.predict(narrow) < table.baseline_ms
    assert table.step in (1, *lt.STEPS) and len(table.blocks) == 9
    monkeypatch.setattr(lt, "measure", lambda *a, **k: pytest.fail("a cached table was measured again"))
    again, reused = lt.latency_table(run, key)
    assert reused and again.blocks == table.blocks


def test_latency_table_is_rebuilt_when_its_key_changes_or_it_is_damaged(table_run, monkeypatch):
    run, key, table = table_run
    calls = []

    def fake(key, on_step=None):
        calls.append(key)
        return lt.LatencyTable(key, table.step, table.probe, table.blocks, table.baseline_ms, table.rest_ms)

    monkeypatch.setattr(lt, "measure", fake)
    other = {**key, "threads": 2}
    built, reused = lt.latency_table(run, other)
    assert not reused and calls == [other] and lt.table_path(run, other) != lt.table_path(run, key)
    assert lt.table_path(run, key).is_file()  # the first machine's/setting's table stays
    lt.table_path(run, other).write_text('{"format": 1, "blocks": [')  # truncated
    _, reused = lt.latency_table(run, other)
    assert not reused and len(calls) == 2
    assert json.loads(lt.table_path(run, other).read_text())["key"] == other


def test_latency_table_never_predicts_below_zero(table_run):
    _, _, table = table_run
    narrow = Widths((16, 16, 16, 16, 16, 16, 16, 16, 128))
    blocks = table.baseline_ms - table.rest_ms  # the full-width blocks' sum
    whole = blocks / 1.5  # blocks timed on a busy machine: 1.5x the whole network
    loaded = dataclasses.replace(table, baseline_ms=whole, rest_ms=whole - blocks)
    assert loaded.predict(Widths()) == pytest.approx(loaded.baseline_ms)
    assert 0 < loaded.predict(narrow) < loaded.baseline_ms


def test_latency_table_errors(tmp_path):
    with pytest.raises(lt.LatencyTableError, match="unknown runtime"):
        lt.table_key("coreml", "fp32", 1, 3, *SIZE, Widths(), False)
    with pytest.raises(lt.LatencyTableError, match="not 'fp16'"):
        lt.table_key("onnxruntime", "fp16", 1, 3, *SIZE, Widths(), False)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_latency_tables_time_blocks_and_networks_in_their_runtime(runtime, precision, tmp_path):
    """A block graph (batch 1, as the table exports it) and a whole network, in each CPU runtime
    and precision (INT8 blocks once failed: calibrated with a batch of 4)."""
    import torch

    if runtime == "openvino":
        from segdec_prune.runtimes.openvino_runtime import unavailable_reason

        if reason := unavailable_reason():
            pytest.skip(f"OpenVINO unusable here: {reason}")
        import openvino

        assert lt.table_key(runtime, precision, 1, 3, *SIZE, Widths(), False)["version"] == openvino.__version__
    key = lt.table_key(runtime, precision, 1, 3, *SIZE, Widths(), False)
    block = lt.block_shapes(Widths(), 3, *SIZE, False)[1]
    proto = lt.export_module(lt.block_module(block, 8, 8), torch.rand(1, 8, block.height, block.width))
    x = np.random.default_rng(0).random((1, 8, block.height, block.width), dtype=np.float32)
    assert lt._timer(key, tmp_path)(proto, x)(3) > 0
    small = Widths((8, 16, 16, 16, 16, 16, 16, 16, 64), (8, 16, 32))
    assert lt.measure_widths(key, small, rounds=1) > 0


def test_latency_plan_is_checked_by_measurement(table_run, tiny_config):
    run, key, table = table_run
    cfg = from_dict({**tiny_config.to_dict(), "deploy": {"threads": 1}})
    target = 0.5 * table.baseline_ms
    planned = plan_target(SegDecNet(), get_method("naive_l1"), Budget("latency", target), cfg, [], table)
    checks = planned.info["plan_checks"]
    assert 1 <= len(checks) <= 3 and planned.info["measured_plan_ms"] == min(
        (c["measured_ms"] for c in checks), key=lambda ms: abs(ms / target - 1))
    assert planned.widths.volume != Widths().volume
    with pytest.raises(BudgetError, match="out of reach"):
        plan_target(SegDecNet(), get_method("naive_l1"), Budget("latency", table.baseline_ms / 1000), cfg, [], table)


def _tiny_toml(tiny_synth, tmp_path) -> str:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[data]\nroot = "{tiny_synth}"\ninput_height = 128\ninput_width = 64\nval_fraction = 0.3\n'
                   f'[train]\nepochs = 1\nbatch_size = 2\ndevice = "cpu"\n[run]\nname = "b"\ndir = "{tmp_path}"\n')
    return str(cfg)


def test_cli_bad_budget_input_is_one_clear_line(tiny_synth, tmp_path):
    cfg = _tiny_toml(tiny_synth, tmp_path)
    assert runner.invoke(app, ["train", "--config", cfg, "--quiet"]).exit_code == 0
    cases = [
        (["--method", "naive_l1", "--target-macs", "1.5"], "(0, 1)"),
        (["--method", "naive_l1", "--target-macs", "0"], "(0, 1)"),
        (["--method", "naive_l1", "--target-latency-ms", "5", "--runtime", "coreml"], "unknown runtime"),
        (["--method", "naive_l1", "--target-macs", "0.3", "--ratio", "0.2"], "one of --ratio"),
        (["--method", "naive_l1", "--target-macs", "0.001"], "out of reach"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["prune", "--config", cfg, *args])
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["latency-table", "--config", cfg, "--runtime", "nonsense"])
    assert r.exit_code == 2 and "unknown runtime" in r.output
