"""`trtllm-dwdp sim compare` and the multi-GPU calibration inputs: link-bench JSON, nvlink overlap rows,
`--layers`; the pull-slice order of `bench kernels`."""

import json
import os
import random

import pytest
import torch

from tensorrt_llm_dwdp.bench.kernels import main as kernels_main
from tensorrt_llm_dwdp.commands.main import main as cli
from tensorrt_llm_dwdp.sim.calibrate import apply_calibration, load_calibration
from tensorrt_llm_dwdp.sim.compare import compare, load_runs, scenario_for
from tensorrt_llm_dwdp.sim.engine import simulate
from tensorrt_llm_dwdp.sim.machines import Efficiency, get_machine
from tensorrt_llm_dwdp.sim.models import get_model, get_precision
from tensorrt_llm_dwdp.sim.scenario import DepPacking, Scenario
from tensorrt_llm_dwdp.workloads.requests import parse_isl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H200 = get_machine("h200")
MULTI = os.path.join(ROOT, "benchmarks", "results", "multi_gpu_2xh200_2026-11-24")


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


def _link_json(tmp_path, rng):
    rates = {"plain": rng.uniform(300, 400), "round-robin 2 MiB": rng.uniform(200, 300),
             "round-robin 32 MiB": rng.uniform(300, 400)}
    rows = [{"case": "one peer", "dst": 0, "src": 1, "slicing": "one copy", "gbps": 390.0}]
    rows += [{"case": "all pull", "dst": "all", "src": "all", "slicing": s, "gbps": 2 * r, "per_gpu_gbps": r}
             for s, r in rates.items()]
    return _write(tmp_path, "link.json", {"gpus": 2, "device": "NVIDIA H200", "rows": rows, "peak_gbps": 390.0}), rates


def test_get_model_layers_keeps_dense_first_and_one_moe_layer():
    m = get_model("deepseek-v3", 6)
    assert (m.layers, m.dense_layers, m.moe_layers) == (6, 3, 3)
    assert get_model("deepseek-v3", 2).moe_layers == 1  # as the runtime's preset(): at least one MoE layer
    assert get_model("qwen3-30b-a3b", 4).moe_layers == 4
    with pytest.raises(ValueError, match="--layers"):
        get_model("qwen3-30b-a3b", 49)


@pytest.mark.parametrize("slice_mib,row", [(2.0, "round-robin 2 MiB"), (32.0, "round-robin 32 MiB"), (None, "plain")])
def test_link_bench_row_of_the_slicing_calibrates_the_link(tmp_path, slice_mib, row):
    path, rates = _link_json(tmp_path, random.Random(os.urandom(4)))
    cal = apply_calibration(H200, get_model("deepseek-v3"), Efficiency(), load_calibration(path, slice_mib))
    assert cal.efficiency.link == pytest.approx(rates[row] / 450.0)
    assert cal.efficiency.mma == Efficiency().mma  # a link bench says nothing about compute
    assert any(row in n for n in cal.notes)


def test_link_bench_without_the_slicing_names_the_option(tmp_path):
    path, _ = _link_json(tmp_path, random.Random(1))
    with pytest.raises(ValueError, match="--calibration.*round-robin 8 MiB"):
        load_calibration(path, 8.0)


def test_kernels_and_link_files_merge_and_nvlink_rows_of_the_slice_win(tmp_path):
    rng = random.Random(os.urandom(4))
    slow = {2.0: rng.uniform(0.1, 0.5), 32.0: rng.uniform(0.0, 0.05)}
    overlap = [{"source": "pinned_host", "slice_mib": 2.0, "slowdown": 0.9}]
    overlap += [{"source": "nvlink", "slice_mib": s, "slowdown": v} for s, v in slow.items()]
    kern = _write(tmp_path, "k.json", {"device": "NVIDIA H200", "peaks": {"bf16_tflops": 780.0, "hbm_gbps": 4200.0},
                                       "gemm": [], "overlap": overlap})
    link, rates = _link_json(tmp_path, rng)
    for s in slow:
        cal = load_calibration(f"{kern},{link}", s)
        assert cal.pull_slowdown == pytest.approx(slow[s]) and cal.bf16_tflops == 780.0
        assert cal.link_gbps == pytest.approx(rates[f"round-robin {s:g} MiB"])
    # no nvlink row of that size: the mean of all nvlink rows, never the pinned-host one
    assert load_calibration(kern, 8.0).pull_slowdown == pytest.approx(sum(slow.values()) / 2)


def _run(rng, preset="qwen3-30b-a3b", layers=4, mnt=16384, isl="normal:8192:0.2", slice_mib=32.0):
    modes = {m: {"tokens_per_s_per_gpu": rng.uniform(1e4, 1e5), "wait_fraction": rng.uniform(0, 0.3),
                 "iterations": 10, "ranks": [{"iterations": [{}] * rng.randint(3, 9)} for _ in range(2)]}
             for m in ("dwdp", "dep")}
    return {"config": {"preset": preset, "checkpoint": None, "layers": layers, "isl": isl, "max_num_tokens": mnt,
                       "seed": 0, "ranks": 2, "slice_mib": slice_mib}, "modes": modes}


def test_compare_simulates_each_run_on_its_own_settings(tmp_path):
    rng = random.Random(os.urandom(4))
    runs = [_run(rng), _run(rng, "deepseek-v3-layers", 6, 32768, "8192")]
    rows, notes = compare(load_runs([_write(tmp_path, "b.json", runs)]), "h200")
    assert notes == []
    for run, row in zip(runs, rows):
        c = run["config"]
        iters = max(len(r["iterations"]) for m in run["modes"].values() for r in m["ranks"])
        model = get_model({"qwen3-30b-a3b": "qwen3-30b-a3b", "deepseek-v3-layers": "deepseek-v3"}[c["preset"]],
                          c["layers"])
        # the bench packs every mode alike: the simulated DEP gets DWDP's iterations
        want = simulate(Scenario(H200, model, get_precision("bf16"), 2, parse_isl(c["isl"]), c["max_num_tokens"],
                                 iterations=iters, dep_packing=DepPacking.SAME))
        assert row["dwdp_default"] == pytest.approx(want.dwdp.tps_per_gpu)
        assert row["dep_default"] == pytest.approx(want.dep.tps_per_gpu)
        assert row["speedup_measured"] == pytest.approx(run["modes"]["dwdp"]["tokens_per_s_per_gpu"]
                                                        / run["modes"]["dep"]["tokens_per_s_per_gpu"])
        assert row["dwdp_default_over_measured"] == pytest.approx(want.dwdp.tps_per_gpu
                                                                  / run["modes"]["dwdp"]["tokens_per_s_per_gpu"])


def test_compare_takes_each_runs_routing_skew_and_packing():
    run = _run(random.Random(3))
    run["config"].update(routing_skew=0.7, chunked_prefill=True)
    scn = scenario_for(run, "h200", Efficiency())
    assert (scn.efficiency.routing_skew, scn.chunked, scn.dep_packing) == (0.7, True, DepPacking.SAME)
    run["config"].update(routing_skew=None)  # recorded by no run before --routing-skew: the default
    assert scenario_for(run, "h200", Efficiency()).efficiency.routing_skew == Efficiency().routing_skew


def test_compare_predicts_with_each_runs_expert_precision():
    """An FP8 run (FP8 dispatch rows, the default where the experts are FP8) is predicted at FP8; BF16 dispatch
    rows for FP8 experts are not what the simulator models: refused in one line."""
    run = _run(random.Random(5))
    assert scenario_for(run, "h200", Efficiency()).precision == get_precision("bf16")  # runs before --weight-dtype
    run["config"]["weight_dtype"] = "float8_e4m3fn"
    run["modes"]["dep"]["dep_dispatch"] = {"rows": "fp8", "reason": "r"}
    assert scenario_for(run, "h200", Efficiency()).precision == get_precision("fp8")
    run["modes"]["dep"]["dep_dispatch"]["rows"] = "bf16"
    with pytest.raises(ValueError, match="--dep-dispatch bf16"):
        scenario_for(run, "h200", Efficiency())


def test_compare_calibrates_the_link_from_each_runs_slice(tmp_path):
    rng = random.Random(os.urandom(4))
    link, rates = _link_json(tmp_path, rng)
    runs = [_run(rng, slice_mib=2.0), _run(rng, slice_mib=32.0)]
    rows, notes = compare(runs, "h200", link)
    assert any("round-robin 2 MiB" in n for n in notes) and any("round-robin 32 MiB" in n for n in notes)
    for run, row in zip(runs, rows):
        eff = Efficiency(link=rates[f"round-robin {run['config']['slice_mib']:g} MiB"] / 450.0)
        want = simulate(scenario_for(run, "h200", eff))
        assert row["dwdp_calibrated"] == pytest.approx(want.dwdp.tps_per_gpu)
        assert row["dep_calibrated"] == pytest.approx(want.dep.tps_per_gpu)


def test_compare_refuses_what_it_cannot_simulate(tmp_path):
    rng = random.Random(2)
    with pytest.raises(ValueError, match="preset 'tiny'"):
        scenario_for(_run(rng, preset="tiny"), "h200", Efficiency())
    with pytest.raises(ValueError, match="bench --json"):
        load_runs([_write(tmp_path, "x.json", {"rows": []})])


@pytest.mark.skipif(not os.path.isdir(MULTI), reason="no multi-GPU results stored")
def test_cli_compare_on_the_stored_two_gpu_runs(tmp_path, capsys):
    runs = sorted(os.path.join(MULTI, f) for f in os.listdir(MULTI) if f.startswith("bench_"))
    cal = ",".join(os.path.join(MULTI, f) for f in ("kernels_nvlink.json", "link_bench.json"))
    out = tmp_path / "c.json"
    assert cli(["sim", "compare", *runs, "--calibration", cal, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrated DWDP" in text and "link 0.844 ->" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == sum(len(load_runs([r])) for r in runs)
    assert all(r["dwdp_measured"] > 0 and r["speedup_calibrated"] > 0 for r in rows)


@pytest.mark.parametrize("argv,msg", [(["--sections", "gemm,z"], "--sections"), (["--dtypes", "fp4"], "--dtypes"),
                                      (["--ranks", "1"], "--ranks"), (["--shapes", "llama"], "--shapes")])
def test_bench_kernels_rejects_bad_options(argv, msg, capsys):
    assert kernels_main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
