"""Mode auto: the runtime hands the performance model the right shapes and acts on its decision."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from tensorrt_llm_dwdp.runtime import preset
from tensorrt_llm_dwdp.bench.auto import choose
from tensorrt_llm_dwdp.sim.models import get_model


def test_short_prefills_pick_dep_and_a_requested_dwdp_is_warned():
    d = choose(preset("deepseek-v3-layers"), 8, "1024", 1024, requested="dwdp", machine="h100")
    assert d.mode == "dep" and d.warning and ("pays from" in d.warning or "does not pay" in d.warning)
    long = choose(preset("qwen3-30b-a3b"), 8, "normal:16384:0.2", 32768, machine="h200")
    assert long.mode in ("dwdp", "dep") and long.reason and long.speedup is not None


@pytest.mark.mpi
@pytest.mark.parametrize("modes", ["auto,dep", "auto,dwdp,dep"])
def test_bench_auto_mode_runs_the_chosen_mode_once(tmp_path, modes):
    out = tmp_path / "a.json"
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "bench", "--ranks", "2", "--preset", "tiny",
                           "--modes", modes, "--requests", "4", "--isl", "64", "--max-num-tokens", "256",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    chosen = res["decisions"]["auto"]["mode"]
    assert f"mode auto -> {chosen}" in proc.stdout and chosen in res["modes"] and "dep" in res["modes"]
    assert proc.stdout.count(f"mode {chosen}:") == 1  # a listed mode that auto already ran is not run twice


def test_mode_auto_predicts_with_the_runs_weight_dtype():
    """DeepSeek-V3's BF16 experts do not fit 8 H200s with DWDP's slots, its FP8 ones do: a bench run with
    --weight-dtype float8_e4m3fn is judged as the simulator judges FP8 experts, not BF16 ones."""
    from tensorrt_llm_dwdp.bench.options import model_config, parse_args, predict_mode
    from tensorrt_llm_dwdp.sim.decide import decide
    from tensorrt_llm_dwdp.sim.machines import get_machine
    from tensorrt_llm_dwdp.sim.models import get_precision
    from tensorrt_llm_dwdp.sim.scenario import Scenario
    from tensorrt_llm_dwdp.workloads.requests import parse_isl
    isl, tokens = "normal:16384:0.2", 32768
    for dtype, precision in (("bfloat16", "bf16"), ("float8_e4m3fn", "fp8")):
        args = parse_args(["--preset", "deepseek-v3-layers", "--weight-dtype", dtype, "--modes", "auto",
                           "--isl", isl, "--max-num-tokens", str(tokens), "--sim-machine", "h200"])
        got = predict_mode(args, model_config(args), 8, "auto")
        want = decide(Scenario(get_machine("h200"), get_model("deepseek-v3"), get_precision(precision), 8,
                               parse_isl(isl), tokens))
        assert (got.mode, got.reason, got.speedup) == (want.mode, want.reason, want.speedup), dtype
        assert ("need" in got.reason) == (dtype == "bfloat16"), got.reason  # BF16: does not fit; FP8: simulated
