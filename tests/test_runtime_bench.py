"""Workloads, and `trtllm-dwdp bench` end to end on CPU ranks (JSON keys, table, plots)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, fresh_seed
from tensorrt_llm_dwdp.bench import report
from tensorrt_llm_dwdp.workloads.requests import load_trace, make_requests, parse_isl


def test_requests_are_seeded_and_rate_gives_increasing_arrivals():
    isl = parse_isl("lognormal:256:0.4")
    seed = fresh_seed()
    a, b = make_requests(isl, 50, seed), make_requests(isl, 50, seed)
    assert a == b and all(r.arrival_s == 0 for r in a)
    timed = make_requests(isl, 50, seed, rate=100.0)
    arr = [r.arrival_s for r in timed]
    assert arr == sorted(arr) and 0.2 < arr[-1] < 1.5  # 50 requests at 100/s
    with pytest.raises(ValueError, match="request-rate"):
        make_requests(isl, 5, seed, rate=0)


def test_trace_loading_and_errors(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"isl": 100, "arrival_s": 0.5}\n\n{"isl": 7}\n')
    reqs = load_trace(str(p))
    assert [(r.isl, r.arrival_s) for r in reqs] == [(100, 0.5), (7, 0.0)]
    p.write_text('{"len": 3}\n')
    with pytest.raises(ValueError, match=":1:"):
        load_trace(str(p))


def test_summary_against_hand_counts():
    ranks = [{"iterations": [{"tokens": 100, "start_s": 0.0, "end_s": 1.0, "wait_s": 0.25},
                             {"tokens": 50, "start_s": 1.0, "end_s": 2.0, "wait_s": 0.0}],
              "requests": [{"arrival_s": 0.0, "done_s": 1.0}, {"arrival_s": 0.0, "done_s": 2.0}]},
             {"iterations": [{"tokens": 30, "start_s": 0.5, "end_s": 1.5, "wait_s": 0.5}],
              "requests": [{"arrival_s": 0.5, "done_s": 1.5}]}]
    s = report.summarize(ranks)
    assert s["busy_tokens_per_s_per_gpu"] == pytest.approx(180 / 3.0)
    assert s["tokens_per_s_per_gpu"] == pytest.approx(180 / (2 * 2.0))  # two ranks, a 2 s window
    assert s["wait_fraction"] == pytest.approx(0.75 / 3.0)
    assert s["ttft_p50_s"] == pytest.approx(1.0)


@pytest.mark.mpi
def test_bench_cli_end_to_end(tmp_path):
    out, plots = tmp_path / "b.json", tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "bench", "--ranks", "4", "--preset", "tiny",
                           "--requests", "8", "--cv-sweep", "0,0.4", "--seed", str(fresh_seed() % 1000),
                           "--json", str(out), "--plot-dir", str(plots)],
                          capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TPS/GPU" in proc.stdout and "[dwdp] rank 0" in proc.stdout
    runs = json.loads(out.read_text())
    assert [r["cv"] for r in runs] == [0.0, 0.4]
    for r in runs:
        assert set(r["modes"]) == {"dwdp", "dep", "local"} and r["speedup_dwdp_over_dep"] > 0
        assert r["seeds"]["requests"] and r["config"]["preset"] == "tiny"
        for name, m in r["modes"].items():
            s = m
            # only DWDP pulls; tiny's 3 MoE layers are one more than the default depth, so every timed step pulls
            assert s["bytes_pulled"] == 0 or name == "dwdp"
            if name == "dwdp":
                steps = [it for rank in m["ranks"] for it in rank["iterations"] if it["tokens"]]
                assert steps and all(it["bytes_pulled"] > 0 for it in steps), [it["bytes_pulled"] for it in steps]
                assert s["bytes_pulled_per_step"] > 0 and "MiB/step" in proc.stdout
            # every mode computes each token's top-k experts in every MoE layer once, wherever it computes them
            tokens = sum(it["tokens"] for rank in m["ranks"] for it in rank["iterations"])
            assert s["expert_rows"] == tokens * 4 * 3 and s["expert_load_imbalance"] >= 1.0  # tiny: top-4, 3 MoE layers
            if name == "dep":  # CPU ranks: gloo with split sizes moves the occupied rows (and their counts)
                assert m["ranks"][0]["exchange"] == "gloo_splits" and s["bytes_min"] > 0
                assert s["bytes_min"] < s["bytes_moved"] <= 1.05 * s["bytes_min"]
                # BF16 experts: rows as they are, and the run says so beside its bytes
                assert m["dep_dispatch"]["rows"] == "bf16" and "bfloat16" in m["dep_dispatch"]["reason"]
            assert s["tokens_per_s_per_gpu"] > 0 and s["ttft_p90_s"] >= s["ttft_p50_s"] > 0
            assert 0 <= s["wait_fraction"] <= 1 and len(m["ranks"]) == 4
            assert sum(len(rank["requests"]) for rank in m["ranks"]) == 32
            # the untimed warm-up step (default 1) leaves no iteration behind: timed tokens = requested tokens
            assert sum(it["tokens"] for rank in m["ranks"] for it in rank["iterations"]) == \
                sum(q["isl"] for rank in m["ranks"] for q in rank["requests"])
    assert os.path.getsize(plots / "timeline.png") > 0 and os.path.getsize(plots / "speedup_vs_cv.png") > 0


def test_warm_up_runs_untimed_forwards_of_the_first_packed_batch():
    import torch
    from types import SimpleNamespace

    from tensorrt_llm_dwdp.runtime.executor import ContextExecutor
    from tensorrt_llm_dwdp.workloads.requests import Request

    calls = []

    class Model:
        c = SimpleNamespace(vocab=50)

        def __call__(self, ids, lens):
            calls.append((ids.numel(), list(lens)))

    reqs = [Request(i, isl, 0.0) for i, isl in enumerate([30, 50, 20, 90])]
    ex = ContextExecutor(Model(), "local", 100, torch.device("cpu"), seed=1)
    ex.warm_up(reqs, 2)
    assert calls == [(100, [30, 50, 20])] * 2  # the queue's packing up to max_num_tokens, twice
    calls.clear()
    ex.warm_up([], 1)  # a rank without requests still steps (DEP's collectives must pair up)
    assert calls == [(0, [])]
