"""Expert kernels on [E, ...] expert tensors (ordinary, padded like a composite view, both w13 orders, "no
expert" ids) against the float64 per-token reference; CPU and GPU."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.layout import W13Order
from tensorrt_llm_dwdp.moe import ExpertKernel, ExpertWeights, SharedExpert, expert_compute, select
from tensorrt_llm_dwdp.moe.kernels import check
from tensorrt_llm_dwdp.verify import reference as ref

TOL = 2e-2  # bf16 operands and bf16 intermediates against float64
GPU_KERNELS = [pytest.param(k, marks=pytest.mark.gpu) for k in (ExpertKernel.GROUPED_MM, ExpertKernel.CUTLASS_BF16)]


def _padded(w: torch.Tensor, pad: int) -> torch.Tensor:
    """The same values in an [E, N, K] view whose experts lie `pad` elements apart beyond their size."""
    e, n, k = w.shape
    buf = torch.full((e * (n * k + pad),), float("nan"), dtype=w.dtype, device=w.device)
    view = buf.as_strided(w.shape, (n * k + pad, k, 1))
    view.copy_(w)
    return view


def _case(device, num_tokens, order=W13Order.GATE_UP, pad=0, E=12, H=64, I=48, K=4, none_share=0.0):
    g = torch.Generator().manual_seed(fresh_seed())
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).bfloat16()
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).bfloat16()
    x = torch.randn(num_tokens, H, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(E // 2, generator=g)[:K] * 2 for _ in range(num_tokens)]) if num_tokens \
        else torch.zeros(0, K, dtype=torch.long)  # odd experts get no tokens
    if num_tokens and none_share:
        ids[torch.rand(num_tokens, K, generator=g) < none_share] = E
    wts = torch.rand(num_tokens, K, generator=g)
    stored = w13 if order is W13Order.GATE_UP else torch.cat(w13.chunk(2, dim=1)[::-1], dim=1)
    weights = ExpertWeights(_padded(stored.to(device), pad), _padded(w2.to(device), pad), w13_order=order)
    return x, ids, wts, w13, w2, weights


def _want(x, ids, wts, w13, w2, shared=None):
    E = w13.shape[0]
    return torch.stack([ref.moe_token_f64(x[t].double(), [(e, w) for e, w in zip(ids[t].tolist(),
                                                                              wts[t].double().tolist()) if e < E],
                                          w13, w2, shared) for t in range(x.shape[0])])


@pytest.mark.parametrize("device,kernel", [("cpu", ExpertKernel.REFERENCE),
                                           *[pytest.param("cuda", k.values[0], marks=k.marks) for k in GPU_KERNELS]])
@pytest.mark.parametrize("num_tokens", [0, 1, 7, 130])
@pytest.mark.parametrize("order", list(W13Order))
def test_kernel_matches_reference(device, kernel, num_tokens, order):
    pad = 0 if kernel is ExpertKernel.GROUPED_MM else 64  # a padded composite stride where the kernel takes one
    x, ids, wts, w13, w2, weights = _case(device, num_tokens, order, pad, none_share=0.2)
    if check(kernel, x.to(device), weights) is not None:
        pytest.skip(check(kernel, x.to(device), weights))
    out = expert_compute(x.to(device), ids.to(device), wts.to(device), weights, kernel=kernel).cpu()
    assert out.shape == x.shape and torch.isfinite(out).all()
    if num_tokens:
        want = _want(x, ids, wts, w13, w2)
        assert (out.double() - want).norm() / want.norm() < TOL


def test_shared_expert_and_selection_on_cpu():
    x, ids, wts, w13, w2, weights = _case("cpu", 9)
    g = torch.Generator().manual_seed(fresh_seed())
    sh = ((torch.randn(96, 64, generator=g) / 8).bfloat16(), (torch.randn(64, 48, generator=g) / 7).bfloat16())
    out = expert_compute(x, ids, wts, weights, SharedExpert(*sh))
    want = _want(x, ids, wts, w13, w2, sh)
    assert (out.double() - want).norm() / want.norm() < TOL
    choice = select(x, weights)
    assert choice.kernel is ExpertKernel.REFERENCE and "one GPU" in choice.reason
    assert select(x, weights) is choice  # chosen once per weights object
    with pytest.raises(ValueError, match="cannot run here"):
        expert_compute(x, ids, wts, weights, kernel=ExpertKernel.GROUPED_MM)


@pytest.mark.gpu
def test_padded_experts_skip_grouped_mm_with_a_reason():
    x, ids, wts, _, _, weights = _case("cuda", 4, pad=64)
    assert "padded" in check(ExpertKernel.GROUPED_MM, x.cuda(), weights)


def test_padded_names_composite_padding_and_takes_a_rank_without_experts():
    """What library grouped GEMMs (torch._grouped_mm, DeepGEMM) need: one dense [E, N, K] stack. A DEP rank may
    hold no experts at all: dense, not an error."""
    g = torch.Generator().manual_seed(fresh_seed())
    w13, w2 = torch.randn(3, 16, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    assert ExpertWeights(w13, w2).padded("w13") is None and ExpertWeights(w13, w2).padded("w2") is None
    padded = ExpertWeights(_padded(w13, 32), w2)
    assert "w13 experts are padded (composite stride 160 > expert size 128)" == padded.padded("w13")
    strided = ExpertWeights(w13.transpose(1, 2).contiguous().transpose(1, 2), w2)  # dense stride, column-major
    assert strided.padded("w13").startswith("w13 experts are strided within")
    assert ExpertWeights(w13[:0], w2[:0]).padded("w13") is None


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", [ExpertKernel.GROUPED_MM, ExpertKernel.CUTLASS_BF16])
def test_kernel_in_cuda_graph_matches_eager(kernel):
    x, ids, wts, _, _, weights = _case("cuda", 64)
    if check(kernel, x.cuda(), weights) is not None:
        pytest.skip(check(kernel, x.cuda(), weights))
    sx, sids, swts = x.cuda(), ids.cuda(), wts.cuda()
    run = lambda: expert_compute(sx, sids, swts, weights, kernel=kernel)  # noqa: E731
    eager = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run()
    x2, ids2, wts2, _, _, _ = _case("cpu", 64)
    sx.copy_(x2.cuda())
    sids.copy_(ids2.cuda())
    swts.copy_(wts2.cuda())
    static_out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(static_out).all() and torch.equal(static_out, run())
    assert not torch.equal(static_out, eager)


def test_grouped_path_on_received_rows_only(monkeypatch):
    """The grouped path as DEP runs it: x a strided view of a receive buffer, `rows` the received rows, some
    slots "no expert". The GEMMs see exactly the real (row, expert) assignments (torch fallbacks of the same ops
    on CPU), the strided view is never copied whole, and the result is the float64 reference on x[rows]."""
    from tensorrt_llm_dwdp.moe import kernels, ops
    g = torch.Generator().manual_seed(fresh_seed())
    x, ids, wts, w13, w2, weights = _case("cpu", 40, none_share=0.3)
    x, weights = x.float(), ExpertWeights(weights.w13.float(), weights.w2.float())
    buf = torch.randn(40, 80, generator=g)  # rows of 80 values, hidden in the first 64: a strided view
    buf[:, :64] = x
    view = buf[:, :64]
    rows = torch.randperm(40, generator=g)[:23]
    gemm_rows, copied = [], []
    real_gemm, real_contig = ops.grouped_gemm, torch.Tensor.contiguous

    def counting_gemm(a, ends, w, tile=0):
        gemm_rows.append(a.shape[0])
        return real_gemm(a, ends, w, tile)

    def watch_contiguous(t, *a, **kw):
        if t.data_ptr() == view.data_ptr() and not t.is_contiguous():
            copied.append(t.shape)
        return real_contig(t, *a, **kw)

    monkeypatch.setattr(ops, "grouped_gemm", counting_gemm)
    monkeypatch.setattr(torch.Tensor, "contiguous", watch_contiguous)
    out = kernels.grouped(view, ids[rows], wts[rows], weights, ExpertKernel.CUTLASS_BF16, 0, rows)
    monkeypatch.undo()
    real = int((ids[rows] < weights.num_experts).sum())
    assert gemm_rows == [real, real] and real < rows.numel() * ids.shape[1] and not copied
    want = _want(x[rows], ids[rows], wts[rows], w13.float(), w2.float())
    assert out.shape == (23, 64) and (out.double() - want).norm() / want.norm() < 1e-5
