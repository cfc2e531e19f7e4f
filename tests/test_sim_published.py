"""The simulator against the public DWDP figures (DeepSeek-R1, NVFP4, GB200, DWDP4 vs DEP4).

Sources: TensorRT-LLM tech blog 19 (DWDP) and arXiv 2604.01621, as summarised in docs/DESIGN.md §2.
Targets: a published per-category share within 20% (relative), a published speedup within 10%.
The blog states max_num_tokens for two runs: 32768 for the context-only breakdown (its Table 3, checked
category by category below) and 16384 for the slicing gain; the other checks assume 16384 (2x the 8K ISL).
"""

import pytest

from tensorrt_llm_dwdp.sim.engine import simulate
from tensorrt_llm_dwdp.sim.machines import Efficiency, get_machine
from tensorrt_llm_dwdp.sim.models import get_model, get_precision
from tensorrt_llm_dwdp.sim.scenario import DepModel, DepPacking, PullStreams, Scenario
from tensorrt_llm_dwdp.workloads.requests import parse_isl

GB200, R1, NVFP4 = get_machine("gb200"), get_model("deepseek-r1"), get_precision("nvfp4")

# Context-only iteration, DEP 1319.85 -> DWDP 1131.58 (-14.3%): a 1.166x speedup.
PUBLISHED_ITERATION_SPEEDUP = 1319.85 / 1131.58
# Round-robin slicing of pulls (contention_opt, 2 MiB): +8.6% TPS/GPU on short windows.
PUBLISHED_SLICING_SPEEDUP = 1.086
# Elementwise ("others") share of a DEP context iteration: 18%, as quoted from the blog's per-category
# breakdown (a secondary quotation: not re-checked against the blog page itself).
PUBLISHED_DEP_OTHER_SHARE = 0.18


def run(mnt=16384, **kw):
    return simulate(Scenario(GB200, R1, NVFP4, 4, parse_isl("normal:8192:0.2"), mnt, iterations=8, **kw))


def test_dep_elementwise_share_within_20pct():
    r = run()
    share = r.dep.breakdown.other / r.dep.iteration_s
    assert share == pytest.approx(PUBLISHED_DEP_OTHER_SHARE, rel=0.20), share


def test_context_iteration_speedup_within_10pct_against_the_published_dep():
    """The published DEP is TensorRT-LLM's, run without chunked prefill and with its all-to-all
    exposed: the LEGACY DEP model is that engine's shape. NOTE: against the TUNED DEP (chunked
    prefill, dispatch hidden) the model predicts ~1.02x: a tuned DEP takes most of DWDP's gain."""
    legacy = run(dep_model=DepModel.LEGACY).speedup
    assert legacy == pytest.approx(PUBLISHED_ITERATION_SPEEDUP, rel=0.10), legacy
    assert run().speedup < legacy  # a stronger baseline never makes DWDP look better


def test_slicing_gain_within_10pct():
    """Unsliced pulls owner after owner on one stream (upstream's path before contention_opt)
    against round-robin slices: the model gave +56% before copy engines were FIFO per source."""
    sliced, plain = run(), run(sliced=False, streams=PullStreams.ONE)
    gain = sliced.dwdp.tps_per_gpu / plain.dwdp.tps_per_gpu
    assert gain == pytest.approx(PUBLISHED_SLICING_SPEEDUP, rel=0.10), gain
    assert gain > 1.0


def test_compute_slowdown_grows_as_the_overlap_shortens():
    """About 5% under long overlaps, over 20% under short ones (clocks drop)."""
    e = Efficiency()
    assert e.slowdown_of_pull(50e-3) == pytest.approx(0.05, rel=0.20)
    assert e.slowdown_of_pull(0.05e-3) >= 0.18
    lengths = [1e-4, 1e-3, 1e-2, 1e-1]
    assert all(e.slowdown_of_pull(a) > e.slowdown_of_pull(b) for a, b in zip(lengths, lengths[1:]))


def test_routing_skew_and_jitter_feed_deps_barriers_and_eplb_removes_the_skew():
    base = run(efficiency=Efficiency(routing_skew=0.0, jitter=0.0))
    skewed = run(efficiency=Efficiency(routing_skew=0.6, jitter=0.0))
    jittered = run(efficiency=Efficiency(routing_skew=0.0, jitter=0.08))
    eplb = run(efficiency=Efficiency(routing_skew=0.6, jitter=0.0), eplb=True)
    assert skewed.dep.breakdown.sync > base.dep.breakdown.sync
    assert jittered.dep.breakdown.sync > base.dep.breakdown.sync
    # EPLB is the runtime's placement (one redundant slot per rank), not a perfect balance: it brings the
    # skewed layers to within 0.1% of uniform routing (it was exactly uniform when EPLB meant "no skew")
    assert eplb.dep.tps_per_gpu == pytest.approx(base.dep.tps_per_gpu, rel=1e-3)
    assert eplb.dep.breakdown.sync < skewed.dep.breakdown.sync
    # DWDP computes every expert its own tokens touch: skew does not reach it
    assert skewed.dwdp.tps_per_gpu == pytest.approx(base.dwdp.tps_per_gpu, rel=1e-9)


def test_categories_add_up_to_the_iteration():
    r = run()
    for mode in (r.dwdp, r.dep):
        assert mode.breakdown.wall == pytest.approx(mode.iteration_s, rel=0.02), mode.mode
        assert min(getattr(mode.breakdown, k) for k in ("attention", "grouped", "dense", "other")) > 0


# Table 3 of the blog: DEP4 context-only iteration, DeepSeek-R1 NVFP4 on GB200x4, ISL 8K, input ratio 0.8,
# max_num_tokens 32768 (ms; the categories add up to the 1319.85 ms iteration).
PUBLISHED_DEP4_MS = {"attention": 269.67, "grouped": 342.40, "dense": 177.50, "other": 241.69, "comm": 126.74,
                     "sync": 161.85}
# Within 20% per category, 30% for synchronisation (it depends on imbalance the blog does not state).
TABLE3_TOLERANCE = {**{k: 0.20 for k in PUBLISHED_DEP4_MS}, "sync": 0.30}
# None missed: sync came to -56% while one skew served every model (DeepSeek's 256 experts got a busiest rank
# of 1.05x the mean at 4 ranks); at the per-model default (1.15x, workloads/popularity.py) it is within 30%.
KNOWN_GAPS = set()


def table3_run():
    """The published engine's settings (TensorRT-LLM examples/dwdp, context-only DEP: max_num_tokens 33000
    there, 32768 in the blog, the same 4 whole requests per iteration either way; no chunked prefill; no
    EPLB): DEP packs as DWDP does. Input ratio 0.8 read as ISLs uniform on [0.8, 1] x 8192 (the benchmark's
    random range ratio)."""
    mean, cv = 0.9 * 8192, 0.2 * 8192 / (0.9 * 8192 * 12 ** 0.5)
    return simulate(Scenario(GB200, R1, NVFP4, 4, parse_isl(f"uniform:{mean:g}:{cv:.6f}"), 32768, iterations=8,
                             dep_packing=DepPacking.SAME))


@pytest.mark.parametrize("category", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason="a known gap (KNOWN_GAPS)")) if c in KNOWN_GAPS
    else c for c in PUBLISHED_DEP4_MS])
def test_dep4_breakdown_per_category_against_table3(category):
    dep = table3_run().dep
    got = getattr(dep.breakdown, category) * 1e3
    assert got == pytest.approx(PUBLISHED_DEP4_MS[category], rel=TABLE3_TOLERANCE[category]), got


def test_dep4_iteration_against_table3():
    dep = table3_run().dep
    assert dep.iteration_s * 1e3 == pytest.approx(sum(PUBLISHED_DEP4_MS.values()), rel=0.10)
