"""FP8 with DeepSeek-V3 block scales: 1x128 activation quantizers, the block-scaled grouped GEMM on an [E, N, K]
expert stack (padded like a composite view) and the FP8 expert MLP, against float64 math written here (its own
quantizer), on CPU and on Hopper."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.layout import swiglu_expert_specs
from tensorrt_llm_dwdp.layout import W13Order
from tensorrt_llm_dwdp.moe import ExpertKernel, ExpertWeights, expert_compute, moe_experts, ops
from tensorrt_llm_dwdp.moe.kernels import check, grouped

FP8 = torch.float8_e4m3fn


def _hopper_fp8():
    if not torch.cuda.is_available():
        return False
    return ops.fp8_available(torch.zeros(1, device="cuda"))


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    "not _hopper_fp8()", reason="FP8 kernels not built or not a Hopper GPU")])]


def quant64(v: torch.Tensor):
    """Reference 1x128 quantizer in float64: (dequantized values, scales)."""
    m, k = v.shape
    b = v.double().reshape(m, k // 128, 128)
    scale = b.abs().amax(-1).clamp_min(1e-4) / 448.0
    q = (b / scale[..., None]).clamp(-448, 448).to(FP8).double()
    return (q * scale[..., None]).reshape(m, k), scale


def _weights(g, e, n, k):
    """e experts [n, k] in e4m3 with [n/128, k/128] scales, and their float64 dequantized values."""
    raw = torch.randn(e, n, k, generator=g) * torch.rand(e, n // 128, k // 128, generator=g).add(0.5) \
        .repeat_interleave(128, 1).repeat_interleave(128, 2) / k ** 0.5
    blocks = raw.reshape(e, n // 128, 128, k // 128, 128)
    scale = blocks.abs().amax((2, 4)) / 448.0
    q = (raw / scale.repeat_interleave(128, 1).repeat_interleave(128, 2)).to(FP8)
    deq = q.double() * scale.double().repeat_interleave(128, 1).repeat_interleave(128, 2)
    return q, scale.float(), deq


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k", [(1, 128), (37, 512), (300, 7168)])
def test_quantize_matches_float64(device, m, k):
    g = torch.Generator().manual_seed(fresh_seed())
    x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 10).bfloat16()
    x[0, :128] = 0  # an all-zero block: finite scale, zero values
    q, s = ops.quantize_fp8(x.to(device))
    assert q.dtype == FP8 and s.shape == (m, k // 128) and torch.isfinite(s).all()
    want_deq, want_s = quant64(x)
    assert torch.allclose(s.cpu().double(), want_s, rtol=1e-6, atol=0)
    deq = q.cpu().double() * s.cpu().double().repeat_interleave(128, 1)
    # fp32 vs float64 products can round a value to the neighbouring e4m3 code: 1/8 relative, or one
    # subnormal step (2^-9 of the scale) near zero
    close = torch.isclose(deq, want_deq, rtol=1e-6, atol=1e-12)
    assert close.float().mean() > 0.99
    step = want_s.repeat_interleave(128, 1) * 2 ** -9
    assert ((deq - want_deq).abs() <= want_deq.abs() / 8 + step * 1.001).all()


@pytest.mark.parametrize("device", DEVICES)
def test_swiglu_quantize_matches_float64(device):
    g = torch.Generator().manual_seed(fresh_seed())
    m, inter = 45, 384
    h = (torch.randn(m, 2 * inter, generator=g) * 3).bfloat16()
    q, s = ops.swiglu_quantize_fp8(h.to(device))
    gate, up = h.double().chunk(2, dim=-1)
    act = gate / (1 + torch.exp(-gate)) * up
    want_deq, _ = quant64(act)
    deq = q.cpu().double() * s.cpu().double().repeat_interleave(128, 1)
    assert (deq - want_deq).norm() / want_deq.norm() < 2e-3
    assert ((deq - act).abs() <= act.abs() / 16 + s.cpu().double().repeat_interleave(128, 1) * 2 ** -9).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_swiglu_quantize_stops_at_the_device_row_limit():
    """With a device-side row count (the grouped GEMMs' real rows) the kernel writes those rows exactly as
    without it and leaves the rest as they were. Captured in a CUDA graph, the outputs are the same memory at
    every replay: poisoned before a replay, their rows past the limit must stay poisoned."""
    g = torch.Generator().manual_seed(fresh_seed())
    m, inter = 300, 256
    h = (torch.randn(m, 2 * inter, generator=g) * 3).bfloat16().cuda()
    full_q, full_s = ops.swiglu_quantize_fp8(h)
    n = torch.tensor([m], device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.swiglu_quantize_fp8(h, False, n)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        q, s = ops.swiglu_quantize_fp8(h, False, n)
    for limit in (173, 1, 0, m, m + 5):  # m + 5: past the end, every row
        n.fill_(limit)
        s.fill_(float("nan"))
        q.view(torch.uint8).fill_(0x7F)  # e4m3fn NaN
        graph.replay()
        torch.cuda.synchronize()
        k = min(limit, m)
        assert torch.equal(q[:k].view(torch.uint8), full_q[:k].view(torch.uint8))
        assert torch.equal(s[:k], full_s[:k]) and bool(torch.isfinite(s[:k]).all())
        assert bool(torch.isnan(s[k:]).all()) and bool((q[k:].view(torch.uint8) == 0x7F).all()), limit


def test_quantize_rejects_partial_blocks():
    with pytest.raises(ValueError, match="multiple of the 128"):
        ops.quantize_fp8(torch.randn(4, 200).bfloat16())


def _stack(q: torch.Tensor, pad: int) -> torch.Tensor:
    """q [E, n, k] in a buffer whose experts lie `pad` bytes apart beyond their size (a composite view's stride)."""
    e, n, k = q.shape
    buf = torch.zeros(e * (n * k + pad), dtype=torch.uint8, device=q.device)
    view = buf.view(FP8).as_strided(q.shape, (n * k + pad, k, 1))
    view.copy_(q)
    return view


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,pad", [([5, 0, 130], 0), ([1, 0, 77, 200, 3], 256), ([0, 0, 0, 0], 0)])
def test_grouped_gemm_matches_float64(device, rows, pad):
    g = torch.Generator().manual_seed(fresh_seed())
    n, k = 256, 384
    q, s, d = _weights(g, len(rows), n, k)
    m = sum(rows)
    a_deq, a_s = quant64(torch.randn(m + 2, k, generator=g) * 2)
    a_q = (a_deq / a_s.repeat_interleave(128, 1)).to(FP8)
    ends = torch.tensor(rows, dtype=torch.int64).cumsum(0)
    out = ops.grouped_gemm_fp8(a_q.to(device), a_s.float().to(device), ends.to(device), _stack(q.to(device), pad),
                               s.to(device)).cpu()
    assert out.dtype == torch.bfloat16 and out.shape == (m + 2, n)
    want, r0 = [], 0
    for w, r in zip(d, rows):
        want.append(a_deq[r0:r0 + r] @ w.T)
        r0 += r
    want = torch.cat(want)
    if m:
        assert (out[:m].double() - want).norm() / want.norm() < 5e-3  # bf16 rounding of fp32 sums


def _fp8_layer(device, g, E=10, H=256, I=128, order=W13Order.GATE_UP):
    w13, s13, d13 = _weights(g, E, 2 * I, H)
    w2, s2, d2 = _weights(g, E, H, I)
    if order is W13Order.UP_GATE:  # store up rows first, scales likewise; the reference keeps gate first
        w13, s13 = torch.cat(w13.chunk(2, 1)[::-1], 1), torch.cat(s13.chunk(2, 1)[::-1], 1)
    weights = ExpertWeights(_stack(w13.to(device), 256), _stack(w2.to(device), 0), s13.to(device), s2.to(device), order)
    return weights, d13, d2


def _reference(x, ids, wts, d13, d2):
    """Float64 expert MLP with both activation quantizations simulated (h rounded to bf16 first, as stored)."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    xq, _ = quant64(x.double())
    for t in range(x.shape[0]):
        for e, w in zip(ids[t].tolist(), wts[t].double().tolist()):
            h = (xq[t:t + 1] @ d13[e].T).bfloat16().double()
            gate, up = h.chunk(2, dim=-1)
            act, _ = quant64(gate / (1 + torch.exp(-gate)) * up)
            out[t] += w * (act @ d2[e].T)[0]
    return out


def _fp8_mlp(x, ids, wts, weights):
    """The FP8 kernel's data path: CUTLASS on Hopper; on CPU the same steps on the ops' plain-torch bodies."""
    if x.is_cuda:
        return expert_compute(x, ids, wts, weights, kernel=ExpertKernel.CUTLASS_FP8)
    return grouped(x, ids, wts, weights, ExpertKernel.CUTLASS_FP8, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tokens", [1, 29, 130])
@pytest.mark.parametrize("order", list(W13Order))
def test_fp8_experts_match_float64(device, num_tokens, order):
    g = torch.Generator().manual_seed(fresh_seed())
    weights, d13, d2 = _fp8_layer(device, g, order=order)
    x = torch.randn(num_tokens, 256, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(5, generator=g)[:4] * 2 for _ in range(num_tokens)])  # odd experts idle
    wts = torch.rand(num_tokens, 4, generator=g)
    out = _fp8_mlp(x.to(device), ids.to(device), wts.to(device), weights).cpu()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    want = _reference(x, ids, wts, d13, d2)
    # an h element that rounds to the other bf16 neighbour moves its act value by one e4m3 step (1/8): in one
    # token's 128-wide row that can reach a few percent of the norm, across many tokens it averages out
    assert (out.double() - want).norm() / want.norm() < (6e-2 if num_tokens == 1 else 2e-2)
    # the plain reference path (dequantized weights, unquantized activations) agrees to FP8 precision: `want`
    # rounds one token's x and act rows to e4m3 (each element within 2^-4), which for a single token reached
    # 0.069 of the norm in 800 seeded draws; across tokens it averages out
    cpu = ExpertWeights(*(t.cpu() if t is not None else None for t in (weights.w13, weights.w2, weights.w13_scale,
                                                                       weights.w2_scale)), order)
    assert (moe_experts(x.double(), ids, wts, cpu) - want).norm() / want.norm() < (1e-1 if num_tokens == 1 else 6e-2)


def test_fp8_kernel_names_missing_scales():
    g = torch.Generator().manual_seed(fresh_seed())
    weights, _, _ = _fp8_layer("cpu", g)
    bare = ExpertWeights(weights.w13, weights.w2)
    assert "w13_scale" in check(ExpertKernel.CUTLASS_FP8, torch.zeros(1, 256, dtype=torch.bfloat16), bare)


def test_layout_carries_block_scales():
    specs = {s.name: s for s in swiglu_expert_specs(7168, 2048, "float8_e4m3fn").all}
    assert specs["w13"].shape == (4096, 7168) and specs["w13_scale"].shape == (32, 56)
    assert specs["w2_scale"].shape == (56, 16) and specs["w2_scale"].dtype == "float32"
    with pytest.raises(ValueError, match="multiples of 128"):
        swiglu_expert_specs(2048, 96, "float8_e4m3fn")


@pytest.mark.gpu
@pytest.mark.skipif("not _hopper_fp8()", reason="FP8 kernels not built or not a Hopper GPU")
def test_fp8_kernel_leaves_poisoned_rows_and_replays_in_graph():
    """Raw kernel: rows past the last group keep their NaN poison; a captured launch follows new row ends."""
    from tensorrt_llm_dwdp import _C
    g = torch.Generator().manual_seed(fresh_seed())
    n, k = 256, 512
    q, s, deq = _weights(g, 5, n, k)
    w = _stack(q.cuda(), 512)
    s = s.cuda()
    a_deq, a_s = quant64(torch.randn(400, k, generator=g))
    a_q, a_s = (a_deq / a_s.repeat_interleave(128, 1)).to(FP8).cuda(), a_s.float().cuda()
    d = torch.full((400, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    ends = torch.tensor([7, 0, 93, 1, 289], device="cuda").cumsum(0)  # 390 of 400 rows
    ws_bytes = _C.grouped_gemm_workspace_size(5, True)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())

    def launch(tile, cols=n):
        _C.grouped_gemm_fp8(a_q.data_ptr(), a_s.data_ptr(), ends.data_ptr(), 5, w.data_ptr(), w.stride(0),
                            s.data_ptr(), s.stride(0), d.data_ptr(), 400, cols, k, tile, ws.data_ptr(), ws_bytes,
                            stream.cuda_stream)

    def expect(rows):
        want, r0 = [], 0
        for e, r in zip(deq, rows):
            want.append(a_deq[r0:r0 + r] @ e.T)
            r0 += r
        want = torch.cat(want)
        got = d[:r0].double().cpu()
        assert torch.isfinite(got).all() and torch.isnan(d[r0:]).all()
        assert (got - want).norm() / want.norm() < 5e-3

    for tile in (1, 2):
        d.fill_(float("nan"))
        with torch.cuda.stream(stream):
            launch(tile)
        stream.synchronize()
        expect([7, 0, 93, 1, 289])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        launch(0)
    ends.copy_(torch.tensor([0, 200, 1, 33, 150], device="cuda").cumsum(0))
    d.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    expect([0, 200, 1, 33, 150])
    with pytest.raises(RuntimeError):  # n not a multiple of the 128-column scale block
        launch(0, cols=192)


@pytest.mark.gpu
@pytest.mark.skipif("not _hopper_fp8()", reason="FP8 kernels not built or not a Hopper GPU")
def test_fp8_experts_in_cuda_graph_and_compile_match_eager():
    g = torch.Generator().manual_seed(fresh_seed())
    weights, _, _ = _fp8_layer("cuda", g)
    x = torch.randn(64, 256, generator=g).bfloat16().cuda()
    ids = torch.stack([torch.randperm(10, generator=g)[:4] for _ in range(64)]).cuda()
    wts = torch.rand(64, 4, generator=g).cuda()
    run = lambda a, b, c: expert_compute(a, b, c, weights, kernel=ExpertKernel.CUTLASS_FP8)  # noqa: E731
    eager = run(x, ids, wts)
    assert torch.equal(torch.compile(run, fullgraph=True)(x, ids, wts), eager)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(x, ids, wts)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = run(x, ids, wts)
    ids.copy_(torch.stack([torch.randperm(10, generator=g)[:4] for _ in range(64)]).cuda())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, run(x, ids, wts))


def test_opcheck_expert_ops_on_cpu():
    g = torch.Generator().manual_seed(fresh_seed())
    x = torch.randn(6, 256, generator=g).bfloat16()
    checks = ("test_faketensor",)  # test_schema's checker multiplies outputs, which e4m3 on CPU cannot
    torch.library.opcheck(ops.quantize_fp8, (x,), test_utils=checks)
    torch.library.opcheck(ops.swiglu_quantize_fp8, (x, True), test_utils=checks)
    torch.library.opcheck(ops.swiglu_quantize_fp8, (x, False, torch.tensor([3])), test_utils=checks)
    q, s, _ = _weights(g, 2, 128, 256)
    xq, xs = ops.quantize_fp8(x)
    ends = torch.tensor([2, 6])
    torch.library.opcheck(ops.grouped_gemm_fp8, (xq, xs, ends, q, s), test_utils=checks)
    w = torch.randn(2, 64, 256, generator=g).bfloat16()
    full = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.grouped_gemm, (x, ends, w), test_utils=full)
    torch.library.opcheck(ops.swiglu, (x, False), test_utils=full)
    row = torch.tensor([3, -1, 0, 5, 2, 1, -1, 4, 5, 0, 1, 2])
    torch.library.opcheck(ops.combine, (x, row, torch.rand(12, generator=g), 2), test_utils=full)
