"""The DWDP vs DEP performance model: physics against hand counts, and validation against
docs/DESIGN.md §2's public figures (each with its tolerance and, where there is one, the gap)."""

import dataclasses
import itertools
import json
import math
import os

import numpy as np
import pytest

from conftest import fresh_seed

from tensorrt_llm_dwdp.sim.analysis import crossover, layer_budget, model_times, roofline_batch1
from tensorrt_llm_dwdp.sim.decide import decide
from tensorrt_llm_dwdp.sim.calibrate import apply_calibration, load_calibration
from tensorrt_llm_dwdp.sim.costs import Chunk, experts_touched, moe_layer_cost
from tensorrt_llm_dwdp.sim.dep import a2a_s, remote_copies
from tensorrt_llm_dwdp.sim.engine import simulate, simulate_dep, workload
from tensorrt_llm_dwdp.sim.flows import fair_rates
from tensorrt_llm_dwdp.sim.machines import Efficiency, Rates, get_machine
from tensorrt_llm_dwdp.sim.models import get_model, get_precision
from tensorrt_llm_dwdp.sim.scenario import DepModel, Scenario
from tensorrt_llm_dwdp.sim.batches import pack
from tensorrt_llm_dwdp.workloads.requests import IslDist, parse_isl

GB200, H100, H200 = get_machine("gb200"), get_machine("h100"), get_machine("h200")
R1 = get_model("deepseek-r1")
NVFP4, FP8, BF16 = get_precision("nvfp4"), get_precision("fp8"), get_precision("bf16")
R1_EXPERT = 3 * 7168 * 2048  # weights of one DeepSeek-R1 routed expert
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ranks alike: no routing skew, no jitter, one slowdown for every pull length (the closed forms' assumptions)
ALIKE = Efficiency(routing_skew=0.0, jitter=0.0, short_pull_slowdown=Efficiency().pull_slowdown)


def scn(machine=GB200, model=R1, prec=NVFP4, ranks=4, isl="normal:8192:0.2", mnt=16384, **kw):
    return Scenario(machine, model, prec, ranks, parse_isl(isl), mnt, **kw)


# ---- physical parameters, counted by hand -------------------------------------------------

def test_machine_figures_are_the_datasheets_dense_per_gpu():
    assert GB200.tflops == {"bf16": 2500.0, "fp8": 5000.0, "nvfp4": 10000.0}  # 360/720/1440 PF sparse / 72 / 2
    assert GB200.nvlink_gbps == 900 and GB200.hbm_gbps == 8000 and GB200.domain == 72
    assert H100.nvlink_gbps == H200.nvlink_gbps == 450 and H100.tflops["fp8"] == 1979.0
    assert not H100.supports("nvfp4") and H200.hbm_gbps == 4800
    assert all(m.sources for m in (GB200, H100, H200))


def test_expert_bytes_match_design():
    # docs/DESIGN.md §2: DeepSeek-R1 in FP8 is 11.3 GB of experts per layer (FP32 128x128 block scales).
    assert FP8.expert_bytes(R1) * 256 == pytest.approx(256 * R1_EXPERT * (1 + 4 / 128 ** 2))
    assert FP8.expert_bytes(R1) * 256 / 1e9 == pytest.approx(11.3, abs=0.05)
    assert NVFP4.expert_bytes(R1) == pytest.approx(R1_EXPERT * (0.5 + 1 / 16))  # E2M1 + an E4M3 per 16
    assert NVFP4.expert_bytes(R1, count_scales=False) == R1_EXPERT * 0.5


def test_hopper_pull_matches_design():
    # docs/DESIGN.md §2: DWDP8 on Hopper pulls ~9.9 GB per layer, ~26 ms at ~380 GB/s measured.
    s = scn(H200, prec=FP8, ranks=8)
    pull = 224 * R1_EXPERT * (1 + 4 / 128 ** 2)
    assert s.fetch_bytes(3) == pytest.approx(pull)
    assert pull / 1e9 == pytest.approx(9.9, abs=0.05)
    assert layer_budget(s, 16384).fetch_s == pytest.approx(pull / 380e9, rel=1e-9)
    assert pull / 380e9 == pytest.approx(0.026, abs=0.0005)


def test_moe_compute_is_flops_over_rate_when_compute_bound():
    s = scn(GB200, isl="32768")
    c = moe_layer_cost(R1, NVFP4, s.rates, s.efficiency, [Chunk(32768)])
    flops = 32768 * 8 * 6 * 7168 * 2048
    rows = 32768 * 8 / experts_touched(256, 8, 32768)  # ~1024 rows per expert
    grouped = s.efficiency.grouped_at(rows, "nvfp4")
    assert 0.3 < grouped < 0.6  # about 35% of NVFP4 peak, as published (0.44 of the dense rate)
    assert c.experts.grouped == pytest.approx(flops / (10000e12 * 783 / 989.5) / grouped, rel=1e-9)


def test_a2a_copies_by_enumeration():
    model = get_model("deepseek-v2-lite")  # 64 experts, top-6
    assert remote_copies(model, 4, "per-expert") == pytest.approx(6 * 3 / 4)
    # per-rank: count, over every top-k set of a small layer, the other ranks it touches.
    small = type(model)(**{**model.__dict__, "experts": 8, "top_k": 3})
    n = 4
    sets = list(itertools.combinations(range(8), 3))
    mean = np.mean([len({e // 2 for e in c} - {0}) for c in sets])  # rank 0 sends, holds experts 0, 1
    assert remote_copies(small, n, "per-rank") == pytest.approx(mean)


def test_a2a_time_is_bytes_over_link():
    eff = Efficiency.roofline()
    rates = Rates.of(GB200, eff)
    t = a2a_s(R1, NVFP4, rates, eff, [1000, 1000, 1000, 1000], "per-expert")
    assert t == pytest.approx(1000 * 8 * 0.75 * 7168 * (0.5625 + 2) / 900e9)
    skew = a2a_s(R1, NVFP4, rates, eff, [4000, 0, 0, 0], "per-expert")  # the busiest sender sets the time
    assert skew == pytest.approx(4 * t)


def test_fair_share_when_ranks_pull_from_one_source():
    b = 100.0
    three = fair_rates([(0, {3: 1.0}), (1, {3: 1.0}), (2, {3: 1.0})], b, b)
    assert three == pytest.approx([b / 3] * 3)
    apart = fair_rates([(0, {1: 1.0}), (1, {2: 1.0})], b, b)
    assert apart == pytest.approx([b, b])
    # one flow spread over sources 1, 2; two flows on source 1: source 1 saturates first
    mixed = fair_rates([(0, {1: 0.5, 2: 0.5}), (2, {1: 1.0}), (3, {1: 1.0})], b, b)
    assert sum(r * w for r, w in zip(mixed, [0.5, 1, 1])) == pytest.approx(b)
    assert mixed[1] == mixed[2] == pytest.approx(mixed[0])


# ---- validation against docs/DESIGN.md §2 ------------------------------------------------------

PUBLISHED = {1024: (0.19, 0.10), 8192: (0.62, 0.73), 16384: (1.52, 1.27), 32768: (4.77, 1.17)}


@pytest.mark.parametrize("isl", sorted(PUBLISHED))
def test_batch1_roofline_reproduces_upstream(isl):
    """DeepSeek-R1 NVFP4, DWDP4 vs DEP4, GB200, datasheet peaks, all-to-all per expert.

    Counting NVFP4 weights as 4 bits (no block scales), as upstream's roofline evidently did,
    T_DEP/T_DWDP lands within 6% at every ISL and T_compute/T_prefetch within 6%.
    With the physical 4.5 bits (an E4M3 scale per 16 weights) the pull is 12.5% longer: where
    DWDP is pull-bound (1K, 8K) the ratio drops by up to that much, so there the tolerance is 16%
    and the gap is the scale bytes, not a fitted constant. 16K and 32K stay within 3%.
    """
    compute_over_prefetch, dep_over_dwdp = PUBLISHED[isl]
    # upstream's roofline also evidently ran every non-expert GEMM in FP8; with the checkpoint's own recipe
    # (BF16 q/kv projections, NVFP4 MLPs and output projection) the memory-bound 1K ratio reads 0.094 (-6.4%)
    fp8_rest = dataclasses.replace(NVFP4, dense_compute="fp8", dense_bytes=1.0, qkv_compute="", qkv_bytes=0.0)
    upstream = roofline_batch1(GB200, R1, fp8_rest, 4, isl, count_scales=False)
    assert upstream.dep_over_dwdp == pytest.approx(dep_over_dwdp, rel=0.06)
    assert upstream.compute_over_prefetch == pytest.approx(compute_over_prefetch, rel=0.06)
    physical = roofline_batch1(GB200, R1, NVFP4, 4, isl)
    if isl <= 8192:
        assert physical.dwdp_s == physical.prefetch_s  # pull-bound: the scale bytes show 1:1
        # at most the 12.5% of the pull (less where DEP, memory-bound at 1K, reads scales too)
        no_scales = roofline_batch1(GB200, R1, NVFP4, 4, isl, count_scales=False)
        assert no_scales.dep_over_dwdp / 1.125 <= physical.dep_over_dwdp < no_scales.dep_over_dwdp
        assert physical.dep_over_dwdp == pytest.approx(dep_over_dwdp, rel=0.16)
    else:
        assert physical.dep_over_dwdp == pytest.approx(dep_over_dwdp, rel=0.03)


def test_batch1_roofline_prefetch_is_bytes_over_nvlink5():
    r = roofline_batch1(GB200, R1, NVFP4, 4, 8192)
    assert r.prefetch_s == pytest.approx(192 * R1_EXPERT * 0.5625 / 900e9)


def test_dep_sync_loss_at_20pct_cv():
    """docs/DESIGN.md §2: DEP loses ~10-12% to synchronisation at a 20% CV of ISL (8K).

    Upstream does not state its packing; the loss depends on it (this model: ~18% with one
    request per iteration, ~14% at max_num_tokens = 2x the mean ISL, ~9% at 3x, ~4% with
    chunked prefill filling every iteration). At 2x, DEP4, we accept 10-12% +- 3 points.
    """
    legacy = dict(dep_model=DepModel.LEGACY, efficiency=ALIKE)
    losses = [simulate_dep(s, workload(s)).wait_frac
              for s in (scn(iterations=64, seed=seed, **legacy) for seed in range(3))]
    assert 0.07 <= float(np.mean(losses)) <= 0.15, losses
    flat = scn(isl="8192", iterations=16, **legacy)
    assert simulate_dep(flat, workload(flat)).wait_frac < 1e-9
    by_cv = [simulate_dep(s, workload(s)).wait_frac for s in
             (scn(isl=f"normal:8192:{cv}", iterations=32, chunked=True, **legacy) for cv in (0.1, 0.2, 0.4))]
    assert by_cv[0] < by_cv[1] < by_cv[2]


def test_hopper_needs_twice_the_window_and_small_models_fit_better():
    """docs/DESIGN.md §2: on Hopper the window must be about twice as long (in time) as on GB200 for
    the same model; smaller MoE models fit the window far better (cross over earlier)."""
    h200, gb200 = scn(H200, prec=FP8, ranks=8, isl="16384"), scn(GB200, prec=FP8, ranks=8, isl="16384")
    x_h200, x_gb200 = crossover(h200).tokens, crossover(gb200).tokens
    assert layer_budget(h200, 8192).fetch_s == pytest.approx(2 * layer_budget(gb200, 8192).fetch_s)
    window = layer_budget(h200, x_h200).compute_s / layer_budget(gb200, x_gb200).compute_s
    assert window == pytest.approx(2.0, rel=0.1)
    # NOTE: in tokens GB200 needs slightly more (its compute grew 2.5x, its NVLink 2x).
    for small in ("qwen3-30b-a3b", "deepseek-v2-lite", "qwen3-235b-a22b"):
        assert crossover(scn(H200, get_model(small), FP8, ranks=8, isl="16384")).tokens < x_h200


# ---- the discrete-event model -------------------------------------------------------------

@pytest.mark.parametrize("machine,model,prec,isl,mnt", [
    (GB200, R1, NVFP4, 8192, 8192),      # pull-bound
    (GB200, R1, NVFP4, 8192, 32768),     # compute-bound
    (H100, get_model("qwen3-30b-a3b"), BF16, 4096, 16384),
])
def test_des_matches_closed_form_when_ranks_are_alike(machine, model, prec, isl, mnt):
    s = scn(machine, model, prec, isl=str(isl), mnt=mnt, iterations=8, chunked=True, efficiency=ALIKE,
            dep_model=DepModel.LEGACY)
    run = simulate(s)
    dwdp, dep = model_times(s, mnt)
    assert run.dep.time_s[0] / 8 == pytest.approx(dep, rel=1e-9)
    assert run.dep.wait_frac == pytest.approx(0, abs=1e-9)
    # NOTE: the closed form lets dense layers hide fully behind the copy stream; with two slots
    # the DES finds the pull waiting ~1% on the dense layers at the start of each iteration.
    assert run.dwdp.time_s[0] / 8 == pytest.approx(dwdp, rel=0.02)


def test_simulation_is_deterministic():
    a, b = simulate(scn(iterations=4)), simulate(scn(iterations=4))
    assert a == b
    assert simulate(scn(iterations=4, seed=1)) != a


def test_unsliced_pulls_contend_and_slicing_wins():
    sliced = simulate(scn(isl="8192", mnt=8192, iterations=4))
    unsliced = simulate(scn(isl="8192", mnt=8192, iterations=4, sliced=False))
    assert unsliced.dwdp.tps_per_gpu < sliced.dwdp.tps_per_gpu
    assert unsliced.dep == sliced.dep


def test_more_slots_never_hurt():
    two = simulate(scn(iterations=4)).dwdp.tps_per_gpu
    three = simulate(scn(iterations=4, slots=3)).dwdp.tps_per_gpu
    assert three >= two * (1 - 1e-9)


def test_large_uneven_group_runs_with_derated_pulls():
    run = simulate(scn(GB200, ranks=72, iterations=2))  # 256 experts over 72 ranks: uneven
    assert run.dwdp.tps_per_gpu > 0 and run.dep.tps_per_gpu > 0


def test_redundant_placement_pulls_less():
    q = get_model("qwen3-30b-a3b")
    even, redundant = scn(model=q, prec=FP8), scn(model=q, prec=FP8, experts_per_rank=64)
    assert even.fetch_bytes(0) == 96 * FP8.expert_bytes(q)
    assert redundant.fetch_bytes(0) == 64 * FP8.expert_bytes(q)
    assert simulate(scn(model=q, prec=FP8, experts_per_rank=128, iterations=2)).dwdp.wait_frac == 0


def test_unsliced_72_ranks_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="--no-slicing.*Fix"):
        simulate(scn(ranks=72, sliced=False, iterations=1))


# ---- workload -----------------------------------------------------------------------------

def test_pack_respects_budget_and_chunks_long_requests():
    b = pack([3000, 3000, 5000, 20000], 8192)
    assert [x.tokens for x in b] == [6000, 5000, 8192, 8192, 3616]
    assert [(c.tokens, c.prior) for c in b[3].chunks] == [(8192, 8192)]
    filled = pack([3000, 3000, 5000], 8192, chunked=True)
    assert [x.tokens for x in filled] == [8192, 2808]
    assert [x.tokens for x in pack([100] * 5, 8192, max_batch_size=2)] == [200, 200, 100]


def test_isl_distributions_keep_mean_and_cv():
    rng = np.random.default_rng(0)
    for kind in ("normal", "lognormal", "uniform"):
        x = IslDist(kind, 8192, 0.2).sample(rng, 200_000)
        assert x.mean() == pytest.approx(8192, rel=0.01) and x.std() / x.mean() == pytest.approx(0.2, rel=0.03)


@pytest.mark.parametrize("spec", ["foo:1", "normal:8192", "normal:x:0.2", "0", "normal:8192:-1"])
def test_bad_isl_names_the_option(spec):
    with pytest.raises(ValueError, match="--isl"):
        parse_isl(spec)


# ---- validation of a deployment -----------------------------------------------------------

@pytest.mark.parametrize("kw,option", [
    (dict(machine=H100), "--precision"),
    (dict(ranks=1), "--ranks"),
    (dict(machine=H200, prec=FP8, ranks=16), "--ranks"),
    (dict(experts_per_rank=10), "--experts-per-rank"),
    (dict(slots=1), "--slots"),
    (dict(mnt=0), "--max-num-tokens"),
    (dict(a2a="ring"), "--a2a"),
])
def test_bad_deployment_names_the_option_and_fix(kw, option):
    with pytest.raises(ValueError, match=option) as e:
        scn(**kw)
    assert "Fix:" in str(e.value)


def test_memory_fit():
    assert not scn(H100, prec=FP8, ranks=8).memory().dep_fits  # 654 GB of FP8 experts / 8 > 80 GB
    assert scn(H200, prec=FP8, ranks=8).memory().dwdp_fits


# ---- calibration --------------------------------------------------------------------------

def _bench_json(tmp_path, device="NVIDIA H100 80GB HBM3"):
    d = {"device": device, "peaks": {"bf16_tflops": 750.0, "hbm_gbps": 3000.0, "h2d_gbps": 54.0},
         "gemm": [{"shape": "deepseek-v3", "tokens": 16384, "split_ms": 40.0},
                  {"shape": "deepseek-v3", "tokens": 4096, "split_ms": 20.0}],
         "overlap": [{"slowdown": 0.02}, {"slowdown": 0.06}]}
    p = tmp_path / "k.json"
    p.write_text(json.dumps(d))
    return str(p)


def test_calibration_replaces_measured_fractions(tmp_path):
    cal = apply_calibration(H100, R1, Efficiency(), load_calibration(_bench_json(tmp_path)))
    e = cal.efficiency
    assert e.mma == pytest.approx(750 / 989.5) and e.hbm == pytest.approx(3000 / 3350)
    assert e.pull_slowdown == pytest.approx(0.04) and e.link == Efficiency().link
    assert e.elementwise == e.hbm  # elementwise kernels take the measured copy's fraction
    # 16384 tokens x top-8 over 256 experts = 512 tokens per expert; roofline by hand:
    a = 16384 * 8
    roof = max(6 * a * 7168 * 2048 / 750e9, (3 * 256 * 7168 * 2048 * 2 + 2 * a * 7168 * 2) / 3000e6)
    assert dict(e.grouped)[512.0] == pytest.approx(roof / 40.0)
    assert e.grouped_at(512) == pytest.approx(roof / 40.0)
    assert not any("NOTE" in n for n in cal.notes)
    other = apply_calibration(GB200, R1, Efficiency(), load_calibration(_bench_json(tmp_path)))
    assert any("NOTE" in n for n in other.notes)


def test_calibration_carries_the_measured_fraction_not_a_ratio_to_another_datasheet(tmp_path):
    """750 TFLOP/s measured on an H100 is 0.758 of H100's datasheet; applied to GB200 it stays
    0.758 of GB200's datasheet (1895 TFLOP/s), not 750 / 2500 = 0.30, and the note says so."""
    cal = load_calibration(_bench_json(tmp_path))
    gb = apply_calibration(GB200, R1, Efficiency(), cal)
    assert gb.efficiency.mma == pytest.approx(750 / 989.5)
    assert gb.efficiency.hbm == pytest.approx(3000 / 3350)
    note = [n for n in gb.notes if "ASSUMES" in n]
    assert note and "h100" in note[0] and "gb200" in note[0]
    # on its own machine the absolute rate comes back exactly
    h = apply_calibration(H100, R1, Efficiency(), cal)
    assert Rates.of(H100, h.efficiency).flops["bf16"] == pytest.approx(750e12)
    unknown = apply_calibration(H200, R1, Efficiency(), load_calibration(_bench_json(tmp_path, "Some GPU")))
    assert unknown.efficiency.mma == pytest.approx(750 / 989.5)
    assert any("matches no machine profile" in n for n in unknown.notes)


def test_calibration_from_the_h100_run_matches_bench_own_roofline():
    """benchmarks/results holds a real `bench kernels` JSON (H100): our roofline / split_ms per
    row must equal the bench's own split_of_roofline (computed there independently)."""
    path = os.path.join(ROOT, "benchmarks", "results", "bench_kernels_h100_2026-11-24.json")
    if not os.path.exists(path):
        pytest.skip("no H100 bench kernels JSON in benchmarks/results")
    with open(path) as f:
        raw = json.load(f)
    cal = load_calibration(path)
    for row in raw["gemm"]:
        m = get_model(row["shape"])
        assert dict(cal.grouped[row["shape"]])[row["tokens"] * m.top_k / m.experts] == pytest.approx(
            min(1.0, row["split_of_roofline"]), rel=1e-9)
    q = apply_calibration(H100, get_model("qwen3-30b-a3b"), Efficiency(), cal).efficiency
    assert q.grouped == cal.grouped["qwen3-30b-a3b"] and q.mma == pytest.approx(raw["peaks"]["bf16_tflops"] / 989.5)
    assert apply_calibration(H100, R1, Efficiency(), cal).efficiency.grouped == cal.grouped["deepseek-v3"]


def test_bad_calibration_names_the_option(tmp_path):
    with pytest.raises(ValueError, match="--calibration"):
        load_calibration(str(tmp_path / "missing.json"))
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"gemm": []}))
    with pytest.raises(ValueError, match="--calibration.*peaks"):
        load_calibration(str(p))


# ---- auto ---------------------------------------------------------------------------------

def test_auto_picks_dwdp_where_the_window_covers_the_pull():
    d = decide(scn(isl="normal:8192:0.2", mnt=32768, iterations=4))
    assert d.mode == "dwdp" and d.speedup > 1 and d.warning is None
    assert d.crossover_tokens and d.crossover_tokens < d.mean_tokens
    assert decide(scn(isl="normal:8192:0.2", mnt=32768, iterations=4)) == d  # pure


def test_auto_falls_back_and_warns_with_the_crossover():
    d = decide(scn(isl="2048", mnt=4096, iterations=4), requested="dwdp")
    assert d.mode == "dep" and d.speedup < 1
    assert d.warning and str(d.crossover_tokens) in d.warning and "max_num_tokens" in d.warning
    assert decide(scn(iterations=2), phase="generation").mode == "dep"
    assert decide(scn(H100, prec=FP8, ranks=8, iterations=2)).mode == "dep"  # does not fit
    with pytest.raises(ValueError, match="phase"):
        decide(scn(iterations=2), phase="decode")


def test_roofline_efficiency_is_datasheet():
    e = Efficiency.roofline()
    assert (e.mma, e.hbm, e.link, e.pull_slowdown, e.a2a_latency_us) == (1, 1, 1, 0, 0)
    assert math.isclose(Efficiency().link, 380 / 450)


# ---- DEP as the runtime runs it: occupied rows, FP8 rows, the runtime's routing and placements ----------

def test_dep_rows_are_one_per_token_and_destination_rank_counted_by_enumeration():
    """Uniform routing: a rank's rows equal, over every top-k set, the other ranks the set touches."""
    from tensorrt_llm_dwdp.sim.dep import a2a_rows
    model = get_model("deepseek-v2-lite")
    small = type(model)(**{**model.__dict__, "experts": 8, "top_k": 3})
    sets = list(itertools.combinations(range(8), 3))
    touches = [np.mean([(r in {e // 2 for e in c}) for c in sets]) for r in range(4)]  # rank r holds 2r, 2r+1
    tokens = [100, 0, 50, 7]
    sent, received = a2a_rows(small, tokens)
    assert sent == pytest.approx([t * sum(touches[r] for r in range(4) if r != j) for j, t in enumerate(tokens)])
    assert received == pytest.approx([touches[r] * (sum(tokens) - tokens[r]) for r in range(4)])


def test_dep_rows_under_skew_against_sampled_top_k():
    """Zipf popularity: sampled top-k sets (drawn without replacement in proportion to popularity)
    hit each rank about as often as the model's closed form says (within 3%)."""
    from tensorrt_llm_dwdp.sim.dep import layer_load
    model = get_model("deepseek-r1")
    load = layer_load(model, 4, 0.6, np.random.default_rng(3))
    from tensorrt_llm_dwdp.workloads.popularity import expert_shares
    share = np.array(expert_shares(np.random.default_rng(3).permutation(256).tolist(), 0.6))
    rng = np.random.default_rng(0)
    keys = rng.random((20000, 256)) ** (1.0 / share)  # Efraimidis-Spirakis weighted sampling without replacement
    picks = np.argsort(-keys, axis=1)[:, :8]
    hits = [np.mean(np.any(picks // 64 == r, axis=1)) for r in range(4)]
    assert load.hits == pytest.approx(hits, rel=0.03)
    assert sum(load.shares) == pytest.approx(1.0)


def test_fp8_dispatch_bytes_are_quantized_rows_plus_1x128_scales():
    """FP8 experts: a dispatched row is H FP8 values and H/128 FP32 scales; the combine row is BF16."""
    eff = Efficiency.roofline()
    rates = Rates.of(H200, eff)
    n, t, e, k, h = 8, 4096, 256, 8, 7168
    rows = t * (n - 1) * (1 - math.comb(e - e // n, k) / math.comb(e, k))
    want = rows * (h * 1 + h // 128 * 4 + h * 2) / 450e9
    assert a2a_s(R1, FP8, rates, eff, [t] * n) == pytest.approx(want, rel=1e-9)
    assert a2a_s(R1, BF16, rates, eff, [t] * n) == pytest.approx(rows * h * 4 / 450e9, rel=1e-9)


def test_dep_loads_use_the_runtimes_placements():
    """Plain DEP: eplb.contiguous_slots; --eplb N: eplb.eplb_placement with ceil(E/W) + N slots per rank,
    both from the runtime's popularity model (the same random order the simulator draws)."""
    from tensorrt_llm_dwdp.eplb import contiguous_slots, eplb_placement
    from tensorrt_llm_dwdp.workloads.popularity import expert_shares
    from tensorrt_llm_dwdp.sim.dep import layer_load
    share = expert_shares(np.random.default_rng(5).permutation(256).tolist(), 0.6)
    plain = layer_load(R1, 4, 0.6, np.random.default_rng(5))
    assert plain.shares == pytest.approx(contiguous_slots(256, 4).rank_loads(share))
    eplb = layer_load(R1, 4, 0.6, np.random.default_rng(5), eplb_redundant=2)
    assert eplb.shares == pytest.approx(eplb_placement(share, 4, 66).rank_loads(share))
    assert eplb.imbalance <= plain.imbalance
    assert all(64 <= h <= 66 for h in eplb.held)


def test_the_simulator_routes_with_the_runtimes_default_skew():
    """None: each model's default_skew, what the runtime's routers use for its preset; it changes DEP's sync."""
    from tensorrt_llm_dwdp.workloads.popularity import default_skew
    assert Efficiency().routing_skew is None
    default = simulate(scn())
    explicit = simulate(scn(efficiency=Efficiency(routing_skew=default_skew(R1.experts))))
    assert default.dep.breakdown.sync == explicit.dep.breakdown.sync
    assert simulate(scn(efficiency=Efficiency(routing_skew=0.0))).dep.breakdown.sync < default.dep.breakdown.sync


def test_eplb_option_counts_its_replicas_and_is_checked():
    plain, eplb = scn(), scn(eplb=2)
    assert eplb.memory().dep_gb - plain.memory().dep_gb == pytest.approx(2 * 58 * plain.expert_bytes / 1e9)
    assert scn(eplb=True).eplb == 1
    with pytest.raises(ValueError, match="--eplb"):
        scn(eplb=-1)
    with pytest.raises(ValueError, match="--eplb"):
        scn(eplb=193)
    run = simulate(scn(iterations=2, efficiency=Efficiency(routing_skew=0.6)))
    balanced = simulate(scn(iterations=2, efficiency=Efficiency(routing_skew=0.6), eplb=1))
    assert balanced.dep.expert_imbalance < run.dep.expert_imbalance
    assert run.dwdp.expert_imbalance == 1.0


def test_tuned_dep_hides_only_the_dispatch_behind_the_shared_expert():
    """The shared expert runs beside the dispatch; the combine waits for the experts and is exposed."""
    from tensorrt_llm_dwdp.sim.costs import ffn_s
    from tensorrt_llm_dwdp.sim.dep import a2a_parts
    for prec in (NVFP4, FP8):
        s = scn(prec=prec, isl="4096", mnt=8192, chunked=True, iterations=2, machine=GB200 if prec is NVFP4 else H200,
                efficiency=ALIKE)
        dep = simulate_dep(s, workload(s))
        parts = a2a_parts(R1, prec, s.rates, s.efficiency, [8192] * 4)
        shared = ffn_s(R1, prec, s.rates, 8192, R1.shared * R1.moe_inter)
        want = R1.moe_layers * (max(0.0, parts.dispatch - shared) + parts.combine)
        assert dep.breakdown.comm == pytest.approx(want, rel=1e-9)
        assert parts.combine > 0 and parts.dispatch < parts.combine  # quantised rows out, BF16 rows back


def test_dep_all_to_all_runs_at_the_published_kernel_rate():
    """TensorRT-LLM tech blog 18 (GB200, ep 8): ~80% of 900 GB/s; DWDP's pulls keep their own fraction."""
    r = Rates.of(GB200, Efficiency())
    assert r.a2a_rate == pytest.approx(0.80 * 900e9) and r.link == pytest.approx(900e9 * 380 / 450)


def test_nvfp4_is_the_published_checkpoints_recipe():
    """DeepSeek-R1-0528-NVFP4-v2: q/kv projections BF16, output projection and MLPs NVFP4; counted by hand
    at datasheet peaks for a compute-bound batch."""
    from tensorrt_llm_dwdp.sim.costs import attention_parts, ffn_s
    eff = Efficiency.roofline()
    rates = Rates.of(GB200, eff)
    qkv = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256
    o = 128 * 128 * 7168
    t = 16384
    got = attention_parts(R1, NVFP4, rates, [Chunk(t)]).dense
    assert got == pytest.approx(2 * t * qkv / 2500e12 + 2 * t * o / 10000e12, rel=1e-9)
    shared = 3 * 7168 * 2048
    assert ffn_s(R1, NVFP4, rates, t, 2048) == pytest.approx(2 * t * shared / 10000e12, rel=1e-9)
    fp8 = attention_parts(R1, FP8, rates, [Chunk(t)]).dense  # FP8 keeps every projection in FP8
    assert fp8 == pytest.approx(2 * t * (qkv + o) / 5000e12, rel=1e-9)


def test_default_skew_imbalance_as_its_note_states():
    """workloads/popularity.py's note: at each model's default skew DEP's busiest rank carries the target 1.15x the
    mean expert load at 4 ranks (fitted points and interpolated expert counts alike), 1.31-1.34x at 8, on fresh
    draws of the hot experts."""
    from tensorrt_llm_dwdp.workloads.popularity import TARGET_IMBALANCE, TARGET_RANKS, default_skew
    from tensorrt_llm_dwdp.sim.dep import layer_load
    lite = get_model("deepseek-v2-lite")
    seed = fresh_seed()
    for experts in (16, 60, 64, 128, 160, 256):
        model = dataclasses.replace(lite, experts=experts, top_k=4)
        for ranks, want, tol in ((TARGET_RANKS, TARGET_IMBALANCE, 0.012), (8, 1.325, 0.025)):
            rng = np.random.default_rng(seed)
            got = np.mean([layer_load(model, ranks, default_skew(experts), rng).imbalance for _ in range(600)])
            assert got == pytest.approx(want, abs=tol), (experts, ranks, got)
    assert default_skew(2) == default_skew(8) and default_skew(4096) == default_skew(384)  # clamped


def test_dep_packing_same_runs_dwdps_iterations():
    """--dep-packing same: DEP gets exactly DWDP's iterations; chunked (the default) fills each to the budget."""
    from tensorrt_llm_dwdp.sim.scenario import DepPacking
    same = simulate(scn(isl="uniform:7372:0.06", mnt=32768, iterations=2, dep_packing=DepPacking.SAME))
    chunked = simulate(scn(isl="uniform:7372:0.06", mnt=32768, iterations=2))
    assert same.dep.tokens == same.dwdp.tokens < chunked.dep.tokens == 4 * 2 * 32768
    with pytest.raises(ValueError, match="--dep-packing"):
        scn(dep_packing="halves")
