"""`trtllm-dwdp sim` (tensorrt_llm_dwdp.sim.cli.main): output, JSON, --explain, bad input."""

import json
import os
import subprocess
import sys

import pytest

from tensorrt_llm_dwdp.sim.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--iterations", "2"]


def test_prints_tps_speedup_and_crossover(capsys):
    assert main(FAST) == 0
    out = capsys.readouterr().out
    for key in ("GB200 NVL72", "deepseek-r1 nvfp4", "TPS/GPU", "speedup DWDP/DEP:", "crossover: DWDP wins from ~"):
        assert key in out, out


def test_json_has_both_modes_and_the_crossover(tmp_path, capsys):
    path = tmp_path / "sim.json"
    assert main(FAST + ["--machine", "h200", "--model", "qwen3-235b-a22b", "--ranks", "8", "--json", str(path)]) == 0
    d = json.loads(path.read_text())
    assert d["scenario"]["precision"] == "fp8"  # Hopper's default: no FP4 tensor cores
    assert d["dwdp"]["tps_per_gpu"] > 0 and d["dep"]["tps_per_gpu"] > 0
    assert d["speedup"] == pytest.approx(d["dwdp"]["tps_per_gpu"] / d["dep"]["tps_per_gpu"])
    assert d["crossover"]["tokens"] > 0


def test_explain_prints_budget_and_writes_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    assert main(FAST + ["--explain", "--plot", str(png), "--isl", "lognormal:4096:0.3"]) == 0
    out = capsys.readouterr().out
    assert "per-MoE-layer budget" in out and "<- this workload" in out and "plot written" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_without_matplotlib_still_prints_the_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(FAST + ["--explain", "--plot", str(tmp_path / "b.png")]) == 0
    out = capsys.readouterr().out
    assert "per-MoE-layer budget" in out and "pip install matplotlib" in out


def test_calibration_is_applied_and_noted(tmp_path, capsys):
    cal = tmp_path / "k.json"
    cal.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3",
                               "peaks": {"bf16_tflops": 700.0, "hbm_gbps": 3000.0, "h2d_gbps": 50.0},
                               "gemm": [], "overlap": [{"slowdown": 0.06}]}))
    assert main(FAST + ["--machine", "h100", "--model", "qwen3-30b-a3b", "--calibration", str(cal)]) == 0
    out = capsys.readouterr().out
    assert "calibration: mma" in out and "pull_slowdown 0.050 -> 0.060" in out and "not applied" in out


@pytest.mark.parametrize("argv,option", [
    (["--machine", "h100", "--precision", "nvfp4"], "--precision"),
    (["--machine", "tpu"], "--machine"),
    (["--model", "llama"], "--model"),
    (["--isl", "normal:8k:0.2"], "--isl"),
    (["--ranks", "100"], "--ranks"),
    (["--max-num-tokens", "0"], "--max-num-tokens"),
    (["--calibration", "/nonexistent.json"], "--calibration"),
])
def test_bad_input_names_the_option_and_the_fix(argv, option, capsys):
    assert main(FAST + argv) == 2
    err = capsys.readouterr().err
    assert option in err and "Fix:" in err, err


def test_module_help_runs():
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp.sim.cli", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "--max-num-tokens" in proc.stdout and "--calibration" in proc.stdout
