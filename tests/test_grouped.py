"""Split-weight grouped-GEMM experts against the float64 per-token reference (CPU and GPU)."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.moe import SharedExpert, SplitExpertWeights, WeightSegment
from tensorrt_llm_dwdp.moe.grouped import can_run, grouped_moe_experts
from tensorrt_llm_dwdp.verify import reference as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
TOL = 2e-2  # bf16 operands and bf16 intermediates against float64


def _case(device, num_tokens, parts, E=12, H=64, I=48, K=4, seed=None):
    g = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).bfloat16()
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).bfloat16()
    x = torch.randn(num_tokens, H, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(E // 2, generator=g)[:K] * 2 for _ in range(num_tokens)]) if num_tokens \
        else torch.zeros(0, K, dtype=torch.long)  # odd experts get no tokens
    wts = torch.rand(num_tokens, K, generator=g)
    perm = torch.randperm(E, generator=g).tolist()
    cuts = [0] + parts + [E]
    segs = []
    for lo, hi in zip(cuts, cuts[1:]):
        idx = perm[lo:hi]
        segs.append(WeightSegment(tuple(idx), {"w13": w13[idx].to(device), "w2": w2[idx].to(device)}))
    return x, ids, wts, w13, w2, SplitExpertWeights(E, tuple(segs))


def _single_launch_runs():
    from tensorrt_llm_dwdp.moe import ops
    return torch.cuda.is_available() and ops.single_launch_available(torch.zeros(1, 8, device="cuda",
                                                                                  dtype=torch.bfloat16))


@pytest.mark.parametrize("device,single", [
    ("cpu", False), pytest.param("cuda", False, marks=pytest.mark.gpu),
    pytest.param("cuda", True, marks=[pytest.mark.gpu, pytest.mark.skipif(
        "not _single_launch_runs()", reason="CUTLASS kernel not built or not a Hopper GPU")])])
@pytest.mark.parametrize("num_tokens", [0, 1, 7, 130])
@pytest.mark.parametrize("parts", [[], [3], [0, 5], [4, 9]])
def test_grouped_matches_reference(device, single, num_tokens, parts):
    x, ids, wts, w13, w2, weights = _case(device, num_tokens, parts)
    assert can_run(x.to(device), weights) == (True, "")
    out = grouped_moe_experts(x.to(device), ids.to(device), wts.to(device), weights, single_launch=single).cpu()
    assert out.shape == x.shape and torch.isfinite(out).all()
    if num_tokens == 0:
        return
    want = torch.stack([ref.moe_token_f64(x[t].double(), list(zip(ids[t].tolist(), wts[t].double().tolist())),
                                          w13, w2, None) for t in range(num_tokens)])
    err = (out.double() - want).norm() / want.norm()
    assert err < TOL, err


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_with_shared_expert(device):
    x, ids, wts, w13, w2, weights = _case(device, 9, [5])
    g = torch.Generator().manual_seed(fresh_seed())
    sh = ((torch.randn(96, 64, generator=g) / 8).bfloat16(), (torch.randn(64, 48, generator=g) / 7).bfloat16())
    out = grouped_moe_experts(x.to(device), ids.to(device), wts.to(device), weights,
                              SharedExpert(sh[0].to(device), sh[1].to(device))).cpu()
    want = torch.stack([ref.moe_token_f64(x[t].double(), list(zip(ids[t].tolist(), wts[t].double().tolist())),
                                          w13, w2, sh) for t in range(9)])
    assert (out.double() - want).norm() / want.norm() < TOL


def test_backend_declines_with_a_reason():
    x, ids, wts, w13, w2, weights = _case("cpu", 4, [3])
    ok, why = can_run(x.float(), weights)
    assert not ok and "bfloat16" in why


@pytest.mark.gpu
def test_grouped_in_cuda_graph_matches_eager():
    x, ids, wts, _, _, weights = _case("cuda", 64, [4])
    sx, sids, swts = x.cuda(), ids.cuda(), wts.cuda()
    eager = grouped_moe_experts(sx, sids, swts, weights)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        grouped_moe_experts(sx, sids, swts, weights)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        static_out = grouped_moe_experts(sx, sids, swts, weights)
    x2, ids2, wts2, _, _, _ = _case("cpu", 64, [4])
    sx.copy_(x2.cuda())
    sids.copy_(ids2.cuda())
    swts.copy_(wts2.cuda())
    static_out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    want = grouped_moe_experts(sx, sids, swts, weights)
    assert torch.isfinite(static_out).all() and torch.equal(static_out, want)
    assert not torch.equal(static_out, eager)
