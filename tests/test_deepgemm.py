"""DeepGEMM as an expert kernel: the contiguous grouped layout we build on the device (against a plain-Python
reference), the whole MLP through that layout with a float64 stand-in for the GEMMs (CPU: tests our layout and
combine, not DeepGEMM), the kernel choice's named reasons; on a Hopper GPU with the `deepgemm` extra, the FP8
and BF16 MLPs against the reference, dense composite views, warm-up and CUDA-graph capture."""

import os

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.layout import W13Order
from tensorrt_llm_dwdp.moe import ExpertKernel, ExpertWeights, expert_compute, moe_experts, ops, select
from tensorrt_llm_dwdp.moe import deepgemm
from tensorrt_llm_dwdp.moe.kernels import check
from tensorrt_llm_dwdp.moe.rows import QuantizedRows


def _routing(g, tokens, E, k, none_share=0.2, idle=True):
    """ids [T, k] (distinct per token; odd experts idle when `idle`; some "no expert" ids = E), weights [T, k]."""
    pool = E // 2 if idle else E
    ids = torch.stack([torch.randperm(pool, generator=g)[:k] * (2 if idle else 1) for _ in range(tokens)]) \
        if tokens else torch.zeros(0, k, dtype=torch.long)
    if tokens and none_share:
        ids[torch.rand(tokens, k, generator=g) < none_share] = E
    return ids, torch.rand(tokens, k, generator=g)


def _layout_reference(ids, E, align):
    """Plain Python: (dest per assignment or -1, m_indices, rows used)."""
    flat = ids.reshape(-1).tolist()
    dest, m_idx, start = [-1] * len(flat), [], 0
    for e in range(E):
        mine = [a for a, v in enumerate(flat) if v == e]
        for j, a in enumerate(mine):
            dest[a] = start + j
        padded = -(-len(mine) // align) * align
        m_idx += [e] * len(mine) + [-1] * (padded - len(mine))
        start += padded
    return dest, m_idx, start


@pytest.mark.parametrize("tokens,E,k,align", [(0, 6, 2, 4), (1, 6, 3, 4), (37, 10, 4, 8), (200, 16, 6, 128),
                                              (64, 4, 2, 1)])
def test_layout_matches_python_reference(tokens, E, k, align):
    g = torch.Generator().manual_seed(fresh_seed())
    ids, _ = _routing(g, tokens, E, k, idle=E > 4)
    lay = deepgemm.build_layout(ids, E, align)
    dest, m_idx, used = _layout_reference(ids, E, align)
    assert lay.rows == deepgemm.layout_rows(tokens * k, E, align) and lay.rows % align == 0 and lay.rows >= used
    assert lay.row_of.tolist() == dest
    assert lay.m_indices.dtype == torch.int32 and lay.m_indices.is_contiguous()
    assert lay.m_indices.tolist() == m_idx + [-1] * (lay.rows - used)
    assert int(lay.used) == used and int(lay.real) == sum(d >= 0 for d in dest)
    # every real assignment's token row lands at its destination; "no expert" goes to the dump row `rows`
    want = sorted((a // k, d) for a, d in enumerate(dest) if d >= 0)
    got = sorted((s, d) for s, d in zip(lay.src.tolist(), lay.dest.tolist()) if d < lay.rows)
    assert got == want and all(d == lay.rows for d in lay.dest.tolist() if d >= lay.rows)
    # exact rows: cut at the last expert's padded end, every placement the same
    ex = deepgemm.build_layout(ids, E, align, exact=True)
    assert ex.rows == used == int(ex.used) and ex.m_indices.tolist() == m_idx and ex.row_of.tolist() == dest
    got = sorted((s, d) for s, d in zip(ex.src.tolist(), ex.dest.tolist()) if d < ex.rows)
    assert got == want and all(d == ex.rows for d in ex.dest.tolist() if d >= ex.rows)


def test_layout_rows_bound_holds_for_any_routing():
    g = torch.Generator().manual_seed(fresh_seed())
    for _ in range(20):
        E, k, align = int(torch.randint(1, 9, (1,), generator=g)), 2, int(torch.randint(1, 17, (1,), generator=g))
        ids = torch.randint(0, E + 1, (int(torch.randint(0, 40, (1,), generator=g)), k), generator=g)
        lay = deepgemm.build_layout(ids, E, align)
        assert int(lay.used) <= lay.rows and lay.rows % align == 0


def test_layout_sized_to_the_real_assignments_when_known():
    """DEP's exact rows know the real (row, expert) count on the host: the layout holds those rows (and their
    padding) instead of a bound for T*k, with the same placement of every real assignment, and the MLP the same
    result."""
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k, tokens, align = 8, 128, 64, 4, 50, 16
    ids = torch.randint(0, E, (tokens, k), generator=g)
    ids[torch.rand(tokens, k, generator=g) < 0.5] = E  # half the slots are "no expert" (not on this rank)
    real = int((ids < E).sum())
    full, hinted = deepgemm.build_layout(ids, E, align), deepgemm.build_layout(ids, E, align, real)
    assert hinted.rows == deepgemm.layout_rows(real, E, align) < full.rows
    assert torch.equal(hinted.row_of, full.row_of) and int(hinted.real) == int(full.real) == real
    assert torch.equal(hinted.m_indices, full.m_indices[:hinted.rows]) and bool((full.m_indices[hinted.rows:] == -1).all())
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).bfloat16()
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).bfloat16()
    x, wts = torch.randn(tokens, H, generator=g).bfloat16(), torch.rand(tokens, k, generator=g)
    seen = []

    def gemm(a, a_s, w, w_s, m_idx):
        seen.append(a.shape[0])
        return _standin(a, a_s, w, w_s, m_idx)

    run = lambda n, exact: deepgemm.moe_mlp(x, ids, wts, ExpertWeights(w13, w2), False, gemm1=gemm,  # noqa: E731
                                            gemm2=gemm, assignments=n, exact=exact)
    # the MLP lays out with the library's alignment (its default where the stand-in replaces DeepGEMM)
    bound, hint = (deepgemm.build_layout(ids, E, deepgemm.DEFAULT_ALIGN, n) for n in (None, real))
    want = run(None, False)
    assert seen == [bound.rows] * 2 and float(want.float().abs().max()) > 0.01
    assert torch.equal(run(real, False), want) and seen[-1] == hint.rows
    assert torch.equal(run(None, True), want) and seen[-2:] == [int(bound.used)] * 2
    assert torch.equal(run(None, None), want) and seen[-1] == int(bound.used)  # CPU: exact by default


def test_exact_rows_with_nothing_routed_here_give_zeros():
    """DEP's received rows may all be for other ranks' experts: exact rows then launch no GEMM."""
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k = 4, 128, 64, 2
    w = ExpertWeights((torch.randn(E, 2 * I, H, generator=g)).bfloat16(), torch.randn(E, H, I, generator=g).bfloat16())
    ids = torch.full((5, k), E)
    x = torch.randn(5, H, generator=g).bfloat16()

    def never(*_):
        raise AssertionError("a GEMM ran on no rows")
    out = deepgemm.moe_mlp(x, ids, torch.rand(5, k, generator=g), w, False, gemm1=never, gemm2=never, exact=True)
    assert out.shape == (5, H) and not out.any()


def _standin(a, a_s, w, w_s, m_idx):
    """The grouped GEMM in float64 per layout row (rows marked -1 stay NaN: nothing may read them)."""
    out = torch.full((a.shape[0], w.shape[1]), float("nan"), dtype=torch.float64)
    a64 = a.double() if a_s is None else a.double() * a_s.double().repeat_interleave(128, -1)
    for e in m_idx.unique().tolist():
        if e >= 0:
            rows = (m_idx == e).nonzero().squeeze(1)
            we = w[e].double() if w_s is None else ops.dequantize_blocks(w[e], w_s[e]).double()
            out[rows] = a64[rows] @ we.T
    return out.bfloat16()


def _fp8_weights(g, E, H, I, order=W13Order.GATE_UP, pad=0):
    q13, s13 = ops.quantize_weight_blocks(torch.randn(E, 2 * I, H, generator=g) / H ** 0.5)
    q2, s2 = ops.quantize_weight_blocks(torch.randn(E, H, I, generator=g) / I ** 0.5)
    return ExpertWeights(_stack(q13, pad), _stack(q2, pad), s13, s2, order)


def _stack(w, pad):
    """w's experts `pad` elements apart beyond their size (a padded composite view), dense when pad is 0."""
    if not pad:
        return w
    e, n, k = w.shape
    buf = torch.zeros(e * (n * k + pad), dtype=w.dtype, device=w.device)
    view = buf.as_strided(w.shape, (n * k + pad, k, 1))
    view.copy_(w)
    return view


def _fp8_reference(x, ids, wts, weights):
    """Float64 per token, with the path's two activation quantizations (ops' CPU bodies) and bf16 h."""
    E, out = weights.num_experts, torch.zeros(x.shape, dtype=torch.float64)
    xq, xs = ops.quantize_fp8(x)
    xd = xq.double() * xs.double().repeat_interleave(128, -1)
    for t in range(x.shape[0]):
        for e, w in zip(ids[t].tolist(), wts[t].double().tolist()):
            if e < E:
                h = (xd[t:t + 1] @ weights.dense(e, "w13").double().T).bfloat16()
                aq, as_ = ops.swiglu_quantize_fp8(h, weights.w13_order is W13Order.UP_GATE)
                act = aq.double() * as_.double().repeat_interleave(128, -1)
                out[t] += w * (act @ weights.dense(e, "w2").double().T)[0]
    return out


@pytest.mark.parametrize("tokens", [1, 29, 150])
@pytest.mark.parametrize("order", list(W13Order))
def test_fp8_mlp_through_layout_matches_reference(tokens, order):
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k = 10, 256, 128, 4
    weights = _fp8_weights(g, E, H, I, order)
    x = torch.randn(tokens, H, generator=g).bfloat16()
    ids, wts = _routing(g, tokens, E, k)
    out = deepgemm.moe_mlp(x, ids, wts, weights, True, gemm1=_standin, gemm2=_standin)
    assert out.shape == x.shape and torch.isfinite(out).all()
    want = _fp8_reference(x, ids, wts, weights)
    assert (out.double() - want).norm() / want.norm() < 5e-3  # bf16 rounding of h and of the output
    # and the plain reference (unquantized activations) to FP8 precision: 4.3% typical, to 6.2% over 300 seeds
    # with one token (fewer elements to average the rounding over), under 4.8% with 29
    plain = (moe_experts(x.double(), ids, wts, weights) - want).norm() / want.norm()
    assert plain < (8e-2 if tokens == 1 else 6e-2)


def test_fp8_mlp_takes_rows_quantized_by_their_dep_sender():
    """DEP's FP8 dispatch hands the receiver QuantizedRows: the path uses them as they are, the same result as
    quantizing the rows itself, for the rows it computes."""
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k, tokens = 6, 256, 128, 3, 37
    weights = _fp8_weights(g, E, H, I, W13Order.GATE_UP)
    x = torch.randn(tokens, H, generator=g).bfloat16()
    ids, wts = _routing(g, tokens, E, k)
    rows = torch.randperm(tokens, generator=g)[:20]
    got = deepgemm.moe_mlp(QuantizedRows.of(x), ids[rows], wts[rows], weights, True, rows=rows,
                           gemm1=_standin, gemm2=_standin)
    want = deepgemm.moe_mlp(x, ids[rows], wts[rows], weights, True, rows=rows, gemm1=_standin, gemm2=_standin)
    assert got.dtype == x.dtype and torch.equal(got, want)


def test_fp8_rows_read_in_place_from_a_dep_receive_buffer():
    """DEP's FP8 dispatch hands the expert step strided views of its receive buffer (RowLayout.x) and the rows it
    computes: both FP8 paths that take quantized rows as they are (our CUTLASS path's body on CPU, DeepGEMM's
    layout with a stand-in GEMM) give exactly what they give on the same rows made contiguous."""
    from tensorrt_llm_dwdp.moe.kernels import grouped
    from tensorrt_llm_dwdp.moe.rows import RowLayout
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k, tokens, recv = 6, 256, 128, 3, 23, 40
    weights = _fp8_weights(g, E, H, I, W13Order.UP_GATE)
    x = torch.randn(tokens, H, generator=g).bfloat16()
    layout = RowLayout(H, torch.bfloat16, k, fp8=True)
    buf = torch.zeros(recv, layout.nbytes, dtype=torch.uint8)
    layout.fill(buf, x, torch.randint(0, tokens, (recv,), generator=g))  # rows as peers sent them
    view = layout.x(buf)
    assert view.q.stride(0) == layout.nbytes and not view.q.is_contiguous()  # really strided
    rows = torch.randperm(recv, generator=g)[:17]  # the received rows this rank computes
    ids, wts = _routing(g, rows.numel(), E, k)
    packed = view.select(rows)  # the same rows, contiguous
    assert packed.q.is_contiguous()
    for run in (lambda v, r: grouped(v, ids, wts, weights, ExpertKernel.CUTLASS_FP8, 0, r),
                lambda v, r: deepgemm.moe_mlp(v, ids, wts, weights, True, rows=r, gemm1=_standin, gemm2=_standin)):
        got, want = run(view, rows), run(packed, None)
        assert got.shape == (rows.numel(), H) and torch.equal(got, want)
        assert float(want.float().abs().max()) > 0.01


@pytest.mark.parametrize("tokens", [1, 40])
def test_bf16_mlp_through_layout_matches_moe_experts(tokens):
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k = 8, 128, 64, 3
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).bfloat16()
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).bfloat16()
    weights = ExpertWeights(w13, w2)
    x = torch.randn(tokens, H, generator=g).bfloat16()
    ids, wts = _routing(g, tokens, E, k)
    rows = torch.randperm(tokens, generator=g)[:max(1, tokens // 2)]  # DEP computes some received rows only
    out = deepgemm.moe_mlp(x, ids[rows], wts[rows], weights, False, rows=rows, gemm1=_standin, gemm2=_standin)
    want = moe_experts(x.double(), ids, wts, weights)[rows]
    assert out.shape == (rows.numel(), H) and torch.isfinite(out).all()
    assert (out.double() - want).norm() / want.norm() < 2e-2  # bf16 operands and intermediates


def test_select_names_why_deepgemm_does_not_run():
    g = torch.Generator().manual_seed(fresh_seed())
    x = torch.randn(3, 256, generator=g).bfloat16()
    padded = _fp8_weights(g, 4, 256, 128, pad=256)
    assert "w13 experts are padded" in check(ExpertKernel.DEEPGEMM_FP8, x, padded)
    dense = _fp8_weights(g, 4, 256, 128)
    assert "activations on cpu" in check(ExpertKernel.DEEPGEMM_FP8, x, dense)
    bf16 = ExpertWeights(torch.randn(4, 256, 256).bfloat16(), torch.randn(4, 256, 128).bfloat16())
    assert "not FP8" in check(ExpertKernel.DEEPGEMM_FP8, x, bf16)
    small = ExpertWeights(torch.randn(4, 192, 256).bfloat16(), torch.randn(4, 256, 96).bfloat16())
    assert "multiples of 128" in check(ExpertKernel.DEEPGEMM_BF16, x, small)
    unscaled = ExpertWeights(dense.w13, dense.w2)
    assert "block scales" in check(ExpertKernel.DEEPGEMM_FP8, x, unscaled)
    choice = select(x, padded)
    assert choice.kernel is ExpertKernel.REFERENCE and "deepgemm_fp8: w13 experts are padded" in choice.reason
    assert "deepgemm_bf16" not in select(x, bf16).reason  # taken only when forced
    with pytest.raises(ValueError, match="deepgemm_fp8 cannot run here"):
        expert_compute(x, torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2), dense,
                       kernel=ExpertKernel.DEEPGEMM_FP8)


@pytest.fixture
def reload_after(monkeypatch):
    """The real load outcome again after a test that made it fail (load caches its outcome for the process)."""
    yield monkeypatch
    monkeypatch.undo()
    deepgemm.load(retry=True)


def test_load_names_the_reason_and_sets_the_cache(reload_after, tmp_path):
    monkeypatch = reload_after
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    for env in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(deepgemm.shutil, "which", lambda name: None)
    monkeypatch.setattr(deepgemm.os.path, "exists", lambda p: False)
    assert deepgemm.load(retry=True) is None and "no nvcc" in deepgemm.import_problem()
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv(deepgemm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("DG_JIT_CACHE_DIR", "elsewhere")
    monkeypatch.setitem(__import__("sys").modules, "deep_gemm", None)  # import fails as when not installed
    assert deepgemm.load(retry=True) is None
    assert "not installed" in deepgemm.import_problem() and "deepgemm" in deepgemm.import_problem()
    assert os.environ["DG_JIT_CACHE_DIR"] == str(tmp_path / "cache")


# ---- on a Hopper GPU with the deepgemm extra ----

def _gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    reason = deepgemm.unavailable()
    if reason is not None:
        pytest.skip(f"DeepGEMM: {reason}")


def _dense_view(w):
    """A dense [E, ...] view at an offset inside a larger allocation, as a composite view of whole 2 MiB pages is."""
    flat = torch.empty(w.numel() + 4096, dtype=w.dtype, device=w.device)
    view = flat[4096:].view(w.shape)
    view.copy_(w)
    return view


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 300, 2048])
@pytest.mark.parametrize("composite", [False, True])
def test_gpu_fp8_mlp_matches_reference(tokens, composite):
    _gpu()
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k = 16, 512, 256, 4
    cpu = _fp8_weights(g, E, H, I)
    dev = [t.cuda() for t in (cpu.w13, cpu.w2, cpu.w13_scale, cpu.w2_scale)]
    if composite:
        dev[0], dev[1] = _dense_view(dev[0]), _dense_view(dev[1])
    weights = ExpertWeights(*dev)
    x = torch.randn(tokens, H, generator=g).bfloat16()
    ids, wts = _routing(g, tokens, E, k, idle=False)
    assert select(x.cuda(), weights).kernel is ExpertKernel.DEEPGEMM_FP8
    # forced: steps this small select our CUTLASS kernel (kernels.DEEPGEMM_MIN_ASSIGNMENTS)
    out = expert_compute(x.cuda(), ids.cuda(), wts.cuda(), weights, kernel=ExpertKernel.DEEPGEMM_FP8).cpu()
    assert torch.isfinite(out).all()
    sub = torch.arange(min(tokens, 64))  # the float64 reference per token is slow: a sample of the tokens
    want = _fp8_reference(x[sub], ids[sub], wts[sub], cpu)
    assert (out[sub].double() - want).norm() / want.norm() < (6e-2 if tokens == 1 else 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 777])
def test_gpu_bf16_mlp_matches_reference(tokens):
    _gpu()
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k = 8, 256, 128, 4
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).bfloat16()
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).bfloat16()
    x = torch.randn(tokens, H, generator=g).bfloat16()
    ids, wts = _routing(g, tokens, E, k, idle=False)
    weights = ExpertWeights(w13.cuda(), w2.cuda(), w13_order=W13Order.UP_GATE)
    out = expert_compute(x.cuda(), ids.cuda(), wts.cuda(), weights, kernel=ExpertKernel.DEEPGEMM_BF16).cpu()
    up_gate = ExpertWeights(w13, w2, w13_order=W13Order.UP_GATE)
    want = moe_experts(x.double(), ids, wts, up_gate)
    assert (out.double() - want).norm() / want.norm() < 2e-2


@pytest.mark.gpu
def test_gpu_warm_up_then_graph_capture_of_one_layer():
    """After warm_up no step compiles (the JIT cache gains no kernel); a captured layer replays new routings."""
    _gpu()
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, k, T = 16, 512, 256, 4, 96
    cpu = _fp8_weights(g, E, H, I)
    weights = ExpertWeights(*(t.cuda() for t in (cpu.w13, cpu.w2, cpu.w13_scale, cpu.w2_scale)))
    assert deepgemm.warm_up(weights, T, k) > 0
    dg = ExpertKernel.DEEPGEMM_FP8  # forced: a step this small selects our CUTLASS kernel
    cache = os.environ.get("DG_JIT_CACHE_DIR")
    before = sorted(os.listdir(os.path.join(cache, "cache"))) if cache and os.path.isdir(
        os.path.join(cache, "cache")) else None
    x = torch.randn(T, H, generator=g).bfloat16().cuda()
    ids, wts = _routing(g, T, E, k, idle=False)
    ids, wts = ids.cuda(), wts.cuda()
    for t in (1, 17, T):
        expert_compute(x[:t], ids[:t], wts[:t], weights, kernel=dg)
    torch.cuda.synchronize()
    if before is not None:
        assert sorted(os.listdir(os.path.join(cache, "cache"))) == before, "a step compiled a kernel after warm_up"
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        expert_compute(x, ids, wts, weights, kernel=dg)  # allocator warm-up on the capture stream
        with torch.cuda.graph(graph, stream=stream):
            out = expert_compute(x, ids, wts, weights, kernel=dg)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):
        new_ids, new_wts = _routing(g, T, E, k, idle=False)
        ids.copy_(new_ids.cuda())
        wts.copy_(new_wts.cuda())
        graph.replay()
        torch.cuda.synchronize()
        direct = expert_compute(x, ids, wts, weights, kernel=dg, exact=False)  # what capture runs: the static bound
        assert torch.equal(out, direct)
        # eager steps cut M at the last expert's end: the same rows through the same kernels
        eager = expert_compute(x, ids, wts, weights, kernel=dg)
        assert (eager.float() - out.float()).abs().max() <= 1e-2 * out.float().abs().max()


def test_doctor_and_runtime_warm_up_on_a_machine_without_deepgemm(monkeypatch):
    from tensorrt_llm_dwdp.commands.doctor import report
    from tensorrt_llm_dwdp.moe.layer import LocalWeights, RoutedExperts
    monkeypatch.setattr(deepgemm, "unavailable", lambda device=None: "no CUDA GPU")
    assert "DeepGEMM expert kernels: unavailable (no CUDA GPU)" in report()

    class Source(LocalWeights):
        def acquire(self, layer_idx):
            raise AssertionError("weights acquired although DeepGEMM cannot run")

        def peek(self):
            raise AssertionError("weights read although DeepGEMM cannot run")
    g = torch.Generator().manual_seed(fresh_seed())
    routed = RoutedExperts(Source({3: _fp8_weights(g, 4, 256, 128)}))
    assert routed.warm_up_kernels(1024, 4, torch.bfloat16) is None


def test_runtime_warm_up_picks_the_kernel_for_the_runs_activation_dtype(monkeypatch):
    """An FP32 or FP16 run must not compile DeepGEMM's BF16-activation kernels: the kernel is chosen for the run's
    dtype (the probe was always bfloat16 before)."""
    from tensorrt_llm_dwdp.moe import layer
    monkeypatch.setattr(deepgemm, "unavailable", lambda device=None: None)
    seen, real = [], layer.select
    monkeypatch.setattr(layer, "select", lambda x, w, *n: (seen.append(x.dtype), real(x, w, *n))[1])
    g = torch.Generator().manual_seed(fresh_seed())
    routed = layer.RoutedExperts(layer.LocalWeights({3: _fp8_weights(g, 4, 256, 128)}))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert routed.warm_up_kernels(1024, 4, dtype) is None  # on CPU no DeepGEMM kernel is chosen
    assert seen == [torch.float32, torch.float16, torch.bfloat16]


def test_bench_side_by_side_ratios_and_preset_shapes():
    from tensorrt_llm_dwdp.bench.kernels.gemm import kernel_ratios
    from tensorrt_llm_dwdp.bench.kernels.setup import SHAPES
    from tensorrt_llm_dwdp.workloads.presets import MODEL_PRESETS
    p = MODEL_PRESETS["deepseek-v3"]
    assert SHAPES["deepseek-v3"] == (p["hidden"], p["moe_inter"], p["num_experts"], p["top_k"])
    assert "tiny" not in SHAPES  # its dims are not whole FP8 blocks
    g = torch.Generator().manual_seed(fresh_seed())
    t = [float(v) for v in torch.rand(5, generator=g) + 0.1]
    base = {"shape": "deepseek-v3", "dtype": "float8_e4m3fn", "routing": "exact", "tokens": 8192}
    rows = [dict(base, kernel="deepgemm_fp8", composite_ms=t[0], ordinary_ms=t[1], mlp_ms=t[2], mlp_on="composite"),
            dict(base, kernel="cutlass_fp8", composite_ms=None, ordinary_ms=t[3], mlp_ms=t[4], mlp_on="ordinary"),
            dict(base, kernel="deepgemm_bf16", composite_ms=None, ordinary_ms=None, mlp_ms=None, mlp_on=None)]
    # one thing changes, the kernel: GEMMs compared where both ran (ordinary tensors), no MLP ratio across tensors
    (r,) = kernel_ratios(rows)
    assert r["vs"] == "cutlass_fp8" and r["on"] == "ordinary" and r["gemm_speedup"] == t[3] / t[1]
    assert r["mlp_speedup"] is None
    rows[1].update(composite_ms=t[3], mlp_on="composite")
    (r,) = kernel_ratios(rows)
    assert r["on"] == "composite" and r["gemm_speedup"] == t[3] / t[0] and r["mlp_speedup"] == t[4] / t[2]


def test_bench_kernel_rows_and_rows_per_expert_points():
    """`kernels` rows from one interleaved measurement: each GEMM's share of the peak from its own FLOPs (GEMM1 is
    2/3 of the MLP's, GEMM2 1/3), a kernel that ran only on ordinary tensors says why not on the composite ones,
    one that ran on neither says why; the `rows` section's expert counts keep a token's k experts distinct."""
    from tensorrt_llm_dwdp.bench.kernels.gemm import experts_used, kernel_rows, variants
    g = torch.Generator().manual_seed(fresh_seed())
    v = [float(x) for x in torch.rand(9, generator=g) + 0.1]
    flops, peak = 3e12 * v[8], 1000.0
    t = {"deepgemm_fp8/composite": v[0], "deepgemm_fp8/ordinary": v[1], "deepgemm_fp8/gemm1": v[2],
         "deepgemm_fp8/gemm2": v[3], "deepgemm_fp8/mlp": v[4],
         "cutlass_fp8/ordinary": v[5], "cutlass_fp8/gemm1": v[6], "cutlass_fp8/gemm2": v[7], "cutlass_fp8/mlp": v[4]}
    ran = {"deepgemm_fp8": (["composite", "ordinary"], {"composite": None, "ordinary": None}),
           "cutlass_fp8": (["ordinary"], {"composite": "padded", "ordinary": None}),
           "deepgemm_bf16": ([], {"composite": "not bf16", "ordinary": "not bf16"})}
    dg, cut, bf = kernel_rows(t, ran, flops, peak, {"tokens": 8})
    assert dg["composite_ms"] == v[0] and dg["mlp_on"] == "composite" and dg["note"] == ""
    assert dg["gemm_of_peak"] == pytest.approx(flops / v[0] / 1e9 / peak)
    assert dg["gemm1_of_peak"] == pytest.approx(2 * flops / 3 / v[2] / 1e9 / peak)
    assert dg["gemm2_of_peak"] == pytest.approx(flops / 3 / v[3] / 1e9 / peak)
    assert cut["composite_ms"] is None and cut["mlp_on"] == "ordinary" and cut["note"] == "composite: padded"
    assert cut["gemm_tflops"] == pytest.approx(flops / v[5] / 1e9)
    assert bf["note"] == "not bf16" and bf["mlp_ms"] is None and "gemm_tflops" not in bf
    # the rows 128-row M tiles compute per real row, against a plain count
    from tensorrt_llm_dwdp.bench.kernels.gemm import tile_rows_over_real
    ids = torch.randint(0, 6, (int(torch.randint(1, 400, (1,), generator=g)), 2), generator=g)
    n = [int((ids == e).sum()) for e in range(6)]
    assert tile_rows_over_real(ids, 6) == sum(-(-c // 128) * 128 for c in n) / sum(n)
    assert tile_rows_over_real(torch.arange(512).view(256, 2) % 2, 2) == 1.0  # 256 rows each: whole tiles
    # DeepGEMM is measured both ways a step runs it; the others one way
    assert variants(ExpertKernel.DEEPGEMM_FP8) == [("deepgemm_fp8", True), ("deepgemm_fp8_bound", False)]
    assert variants(ExpertKernel.CUTLASS_FP8) == [("cutlass_fp8", None)]
    assert experts_used(256, 8) == [256, 64, 16] and experts_used(128, 8) == [128, 32, 8]
    assert experts_used(64, 8) == [64, 16] and experts_used(8, 8) == [8]


def test_small_steps_take_cutlass_fp8_before_deepgemm(monkeypatch):
    """Below DEEPGEMM_MIN_ASSIGNMENTS (row, expert) pairs our CUTLASS FP8 kernel comes first (its MLP measured
    faster there); at and above it, or with the step size unknown, DeepGEMM; where CUTLASS cannot run, DeepGEMM at
    any size. expert_compute passes its step's assignments."""
    from tensorrt_llm_dwdp.moe import kernels
    runs = {ExpertKernel.DEEPGEMM_FP8, ExpertKernel.CUTLASS_FP8}
    monkeypatch.setattr(kernels, "check", lambda kernel, x, w: None if kernel in runs else "not here")
    g = torch.Generator().manual_seed(fresh_seed())
    x = torch.randn(2, 256, generator=g).bfloat16()
    n = kernels.DEEPGEMM_MIN_ASSIGNMENTS
    w = _fp8_weights(g, 4, 256, 128)
    assert select(x, w).kernel is ExpertKernel.DEEPGEMM_FP8
    assert select(x, w, n).kernel is ExpertKernel.DEEPGEMM_FP8
    small = select(x, w, n - 1)
    assert small.kernel is ExpertKernel.CUTLASS_FP8 and f"under {n} assignments" in small.reason
    ran = []
    monkeypatch.setattr(deepgemm, "moe_mlp", lambda x, *a, **kw: (ran.append("deepgemm"), x)[1])
    monkeypatch.setattr(kernels, "grouped", lambda x, *a, **kw: (ran.append("cutlass"), x)[1])
    ids = torch.randint(0, 4, (2, 2), generator=g)
    kernels.expert_compute(x, ids, torch.rand(2, 2, generator=g), w)
    kernels.expert_compute(x, ids, torch.rand(2, 2, generator=g), w, assignments=n)  # DEP's host count
    # DEP's received rows: sized by the rank's own step, as DWDP's would be
    kernels.expert_compute(x, ids, torch.rand(2, 2, generator=g), w, assignments=n, step=4)
    assert ran == ["cutlass", "deepgemm", "cutlass"]
    runs.discard(ExpertKernel.CUTLASS_FP8)
    assert select(x, _fp8_weights(g, 4, 256, 128), 1).kernel is ExpertKernel.DEEPGEMM_FP8


def test_routed_experts_size_the_kernel_choice_by_the_ranks_own_step(monkeypatch):
    """DEP hands the experts the rows a rank received (another count on every rank, and the static bound's slots
    at bound rows); the choice is sized by the rank's own tokens x top-k, as DWDP's, so both pick alike."""
    from tensorrt_llm_dwdp.moe import layer
    seen = []
    monkeypatch.setattr(layer, "expert_compute", lambda *a, **kw: (seen.append(kw["step"]), a[0])[1])
    g = torch.Generator().manual_seed(fresh_seed())
    tokens, k = int(torch.randint(1, 50, (1,), generator=g)), 3

    class Received:  # an exchange that hands the experts 5x the rows, as a DEP rank's receive buffer can
        def run(self, x, ids, wts, compute):
            return compute(x.repeat(5, 1), ids.repeat(5, 1), wts.repeat(5, 1))[:x.shape[0]]
    ids = torch.randint(0, 4, (tokens, k), generator=g)
    x, wts = torch.randn(tokens, 256, generator=g), torch.rand(tokens, k, generator=g)
    for exchange in (None, Received()):
        layer.RoutedExperts(layer.LocalWeights({0: _fp8_weights(g, 4, 256, 128)}), exchange).routed(x, ids, wts, 0)
    assert seen == [tokens * k, tokens * k]


def test_warm_up_chooses_the_kernel_by_the_ranks_own_step(monkeypatch):
    """DEP warms up for every rank's rows (world x max tokens) but runs the kernel its own step selects: warm-up
    chooses by that step, so a DEP run whose steps select CUTLASS compiles no DeepGEMM, as DWDP's would not."""
    from tensorrt_llm_dwdp.moe import kernels, layer
    monkeypatch.setattr(deepgemm, "unavailable", lambda device=None: None)
    monkeypatch.setattr(kernels, "check", lambda kernel, x, w: None if kernel in (
        ExpertKernel.DEEPGEMM_FP8, ExpertKernel.CUTLASS_FP8) else "not here")
    warmed = []
    monkeypatch.setattr(deepgemm, "warm_up", lambda w, rows, k, fp8: (warmed.append(rows), 1)[1])
    g = torch.Generator().manual_seed(fresh_seed())
    n = kernels.DEEPGEMM_MIN_ASSIGNMENTS
    routed = layer.RoutedExperts(layer.LocalWeights({0: _fp8_weights(g, 4, 256, 128)}))
    assert routed.warm_up_kernels(n, 1, torch.bfloat16, max_step=n - 1) is None and warmed == []
    assert "deepgemm_fp8" in routed.warm_up_kernels(4 * n, 1, torch.bfloat16, max_step=n) and warmed == [4 * n]
    assert "deepgemm_fp8" in routed.warm_up_kernels(n, 1, torch.bfloat16) and warmed[-1] == n  # default: max_rows
