"""Split-weight CUTLASS grouped GEMMs (sm_90a, one launch over every segment) against float64 torch math:
BF16 in every tile shape, and FP8 with DeepSeek-V3 block scales.

Weights sit in separately allocated stacks (a local shard and a larger prefetch slot, only partly used);
outputs start poisoned with NaN; row counts include zeros and odd numbers. Ends with a printed timing
ratio against `torch._grouped_mm` (one contiguous call, and one call per segment).
"""

import pytest
import torch
from conftest import fresh_seed

pytestmark = pytest.mark.gpu
TOL = 5e-3  # one bf16 rounding of an fp32 sum, against float64


def _lib():
    try:
        from tensorrt_llm_dwdp import _C
    except ImportError as e:
        pytest.skip(f"no _C extension: {e}")
    if not hasattr(_C, "grouped_gemm_fp8"):
        pytest.skip("_C was built without CUTLASS headers")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm_90a kernel needs a Hopper GPU")
    return _C


def _case(rows, counts, slot_sizes, n, k, seed=None):
    """a [M+3, K]; ends int64 [G]; segments: per segment an [E_s, N, K] stack (E_s >= counts[s]); d NaN."""
    g = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    assert len(rows) == sum(counts) and all(c <= e for c, e in zip(counts, slot_sizes))
    segments = [(torch.randn(e, n, k, generator=g) / k ** 0.5).bfloat16().cuda() for e in slot_sizes]
    m = sum(rows)
    a = torch.randn(m + 3, k, generator=g).bfloat16().cuda()  # 3 rows past the last group: never read
    ends = torch.tensor(rows, dtype=torch.int64).cumsum(0).cuda()
    d = torch.full((m + 3, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    return a, ends, segments, d


TILES = [1, 2, 3]  # large, small, legacy (GroupedGemmTile)


def _call(lib, a, ends, segments, counts, d, stream=None, tile=0):
    n, k = segments[0].shape[1:]
    ws_bytes = lib.grouped_gemm_workspace_size(sum(counts), False)
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream() if stream is None else stream
    lib.grouped_gemm_bf16(a.data_ptr(), ends.data_ptr(), [s.data_ptr() for s in segments], counts, d.data_ptr(),
                          a.shape[0], n, k, tile, ws.data_ptr(), ws_bytes, stream.cuda_stream)
    return ws  # the caller keeps it alive until the stream is done


def _reference(a, rows, segments, counts):
    experts = [seg[e] for seg, c in zip(segments, counts) for e in range(c)]
    outs, r0 = [], 0
    for w, m in zip(experts, rows):
        outs.append(a[r0:r0 + m].double() @ w.double().T)
        r0 += m
    return torch.cat(outs)


def _check(d, want):
    m = want.shape[0]
    got = d[:m].double()
    assert torch.isfinite(got).all(), "a row of a group was not written"
    assert torch.isnan(d[m:]).all(), "rows past the last group were written"
    if m:
        err = (got - want).norm() / want.norm()
        assert err < TOL, err


def _rows(num_groups, mean, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 2 * mean + 1, (num_groups,), generator=g)
    rows[torch.randperm(num_groups, generator=g)[: max(1, num_groups // 4)]] = 0  # empty experts
    rows[0] = 1
    return [int(r) | 1 if i % 3 == 1 and r else int(r) for i, r in enumerate(rows)]  # odd counts too


@pytest.mark.parametrize("n,k", [(1536, 2048), (2048, 768), (136, 72)])  # Qwen3 w13, w2; small odd tiles
@pytest.mark.parametrize("counts,slots", [([5], [5]), ([3, 9], [3, 12]), ([2, 0, 6], [4, 1, 8])])
@pytest.mark.parametrize("tile", TILES)
def test_matches_float64(n, k, counts, slots, tile):
    lib = _lib()
    rows = _rows(sum(counts), 70, fresh_seed())
    a, ends, segments, d = _case(rows, counts, slots, n, k)
    ws = _call(lib, a, ends, segments, counts, d, tile=tile)
    torch.cuda.synchronize()
    del ws
    _check(d, _reference(a, rows, segments, counts))


@pytest.mark.parametrize("rows", [[0, 0, 0, 333, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
@pytest.mark.parametrize("tile", TILES)
def test_sparse_groups(rows, tile):
    lib = _lib()
    counts, slots = [2, 3], [2, 4]
    a, ends, segments, d = _case(rows, counts, slots, 256, 512)
    ws = _call(lib, a, ends, segments, counts, d, tile=tile)
    torch.cuda.synchronize()
    del ws
    _check(d, _reference(a, rows, segments, counts) if sum(rows) else d[:0].double())


def test_in_cuda_graph_follows_device_row_ends():
    """Row ends are read on the device at replay: new counts with the same total need no re-capture."""
    lib = _lib()
    counts, slots = [4, 4], [4, 6]
    rows = [7, 0, 33, 1, 64, 0, 19, 4]
    a, ends, segments, d = _case(rows, counts, slots, 512, 256)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    ws_bytes = lib.grouped_gemm_workspace_size(sum(counts), False)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
    with torch.cuda.stream(stream):  # warm-up outside capture (module load, smem attribute)
        _call(lib, a, ends, segments, counts, d, stream)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        lib.grouped_gemm_bf16(a.data_ptr(), ends.data_ptr(), [s.data_ptr() for s in segments], counts,
                              d.data_ptr(), a.shape[0], 512, 256, 0, ws.data_ptr(), ws_bytes, stream.cuda_stream)
    rows2 = [0, 50, 1, 1, 3, 31, 0, 42]  # same total, different split
    ends.copy_(torch.tensor(rows2).cumsum(0))
    a.copy_(torch.randn_like(a, dtype=torch.float32).bfloat16())
    d.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    _check(d, _reference(a, rows2, segments, counts))


def test_rejects_bad_arguments():
    lib = _lib()
    rows, counts = [3, 4], [1, 1]
    a, ends, segments, d = _case(rows, counts, [1, 1], 256, 128)
    with pytest.raises(ValueError):  # one segment count short
        lib.grouped_gemm_bf16(a.data_ptr(), ends.data_ptr(), [s.data_ptr() for s in segments], [2], d.data_ptr(),
                              a.shape[0], 256, 128, 0, 0, 0, 0)
    ws_bytes = lib.grouped_gemm_workspace_size(2, False)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
    # n % 8, misaligned A, small workspace, unknown tile
    bad = [{"n": 252}, {"a": a.data_ptr() + 2}, {"ws_bytes": ws_bytes - 1}, {"tile": 9}]
    for b in bad:
        with pytest.raises(RuntimeError):
            lib.grouped_gemm_bf16(b.get("a", a.data_ptr()), ends.data_ptr(), [s.data_ptr() for s in segments],
                                  counts, d.data_ptr(), a.shape[0], b.get("n", 256), 128, b.get("tile", 0),
                                  ws.data_ptr(), b.get("ws_bytes", ws_bytes), 0)


def _time_ms(fn, iters=20):
    for _ in range(3):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


@pytest.mark.parametrize("n,k", [(1536, 2048), (2048, 768)])
def test_benchmark_against_torch_grouped_mm(n, k):
    """Qwen3-30B-A3B experts, 4K tokens x top-8 over 128 experts: 32 local + 96 in a prefetch slot."""
    lib = _lib()
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    counts = [32, 96]
    rows = _rows(128, 256, fresh_seed())
    a, ends, segments, d = _case(rows, counts, counts, n, k)
    whole = torch.cat(segments)  # contiguous copy of the same experts
    offs = ends.to(torch.int32)
    cut = int(ends[counts[0] - 1])
    ws_bytes = lib.grouped_gemm_workspace_size(128, False)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
    ptrs, stream = [s.data_ptr() for s in segments], torch.cuda.current_stream().cuda_stream

    def ours():
        lib.grouped_gemm_bf16(a.data_ptr(), ends.data_ptr(), ptrs, counts, d.data_ptr(), a.shape[0], n, k, 0,
                              ws.data_ptr(), ws_bytes, stream)

    m = int(ends[-1])
    contiguous = lambda: torch._grouped_mm(a[:m], whole.transpose(-2, -1), offs=offs)

    def per_segment():
        torch._grouped_mm(a[:cut], segments[0].transpose(-2, -1), offs=offs[:32])
        torch._grouped_mm(a[cut:m], segments[1].transpose(-2, -1), offs=offs[32:] - cut)

    ours()
    torch.cuda.synchronize()
    want = contiguous().double()
    assert (d[:m].double() - want).norm() / want.norm() < 2 * TOL  # two bf16 roundings of fp32 sums
    t_ours, t_cont, t_seg = _time_ms(ours), _time_ms(contiguous), _time_ms(per_segment)
    tflops = 2 * m * n * k / t_ours / 1e9
    print(f"\nsplit-weight grouped GEMM M={m} N={n} K={k}: ours {t_ours:.3f} ms ({tflops:.0f} TFLOP/s), "
          f"contiguous _grouped_mm {t_cont:.3f} ms ({t_cont / t_ours:.2f}x of ours), "
          f"per-segment _grouped_mm {t_seg:.3f} ms ({t_seg / t_ours:.2f}x of ours)")
