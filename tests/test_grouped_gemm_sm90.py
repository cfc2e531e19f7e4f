"""The CUTLASS BF16 grouped GEMM (sm_90a, one launch over an [E, N, K] expert stack, experts possibly padded
apart as in a composite view) against float64 torch math, in every tile shape. Outputs start poisoned with
NaN; row counts include zeros and odd numbers."""

import pytest
import torch
from conftest import fresh_seed

pytestmark = pytest.mark.gpu
TOL = 5e-3  # one bf16 rounding of an fp32 sum, against float64
TILES = [1, 2, 3]  # large, small, legacy (GroupedGemmTile)


def _lib():
    try:
        from tensorrt_llm_dwdp import _C
    except ImportError as e:
        pytest.skip(f"no _C extension: {e}")
    if not hasattr(_C, "grouped_gemm_bf16"):
        pytest.skip("_C was built without CUTLASS headers")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm_90a kernel needs a Hopper GPU")
    return _C


def _case(rows, n, k, pad=0):
    """a [M+3, K]; ends int64 [G]; w [G, N, K] with experts n*k+pad elements apart; d NaN."""
    g = torch.Generator().manual_seed(fresh_seed())
    e = len(rows)
    buf = torch.full((e * (n * k + pad),), float("nan"), dtype=torch.bfloat16, device="cuda")
    w = buf.as_strided((e, n, k), (n * k + pad, k, 1))
    w.copy_((torch.randn(e, n, k, generator=g) / k ** 0.5).bfloat16())
    m = sum(rows)
    a = torch.randn(m + 3, k, generator=g).bfloat16().cuda()  # 3 rows past the last group: never read
    ends = torch.tensor(rows, dtype=torch.int64).cumsum(0).cuda()
    d = torch.full((m + 3, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    return a, ends, w, d


def _call(lib, a, ends, w, d, stream=None, tile=0):
    n, k = w.shape[1:]
    ws_bytes = lib.grouped_gemm_workspace_size(w.shape[0], False)
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream() if stream is None else stream
    lib.grouped_gemm_bf16(a.data_ptr(), ends.data_ptr(), w.shape[0], w.data_ptr(), w.stride(0), d.data_ptr(),
                          a.shape[0], n, k, tile, ws.data_ptr(), ws_bytes, stream.cuda_stream)
    return ws  # the caller keeps it alive until the stream is done


def _reference(a, rows, w):
    outs, r0 = [], 0
    for e, m in enumerate(rows):
        outs.append(a[r0:r0 + m].double() @ w[e].double().T)
        r0 += m
    return torch.cat(outs)


def _check(d, want):
    m = want.shape[0]
    got = d[:m].double()
    assert torch.isfinite(got).all(), "a row of a group was not written"
    assert torch.isnan(d[m:]).all(), "rows past the last group were written"
    if m:
        assert (got - want).norm() / want.norm() < TOL


def _rows(num_groups, mean, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 2 * mean + 1, (num_groups,), generator=g)
    rows[torch.randperm(num_groups, generator=g)[: max(1, num_groups // 4)]] = 0  # empty experts
    rows[0] = 1
    return [int(r) | 1 if i % 3 == 1 and r else int(r) for i, r in enumerate(rows)]  # odd counts too


@pytest.mark.parametrize("n,k", [(1536, 2048), (2048, 768), (136, 72)])  # Qwen3 w13, w2; small odd tiles
@pytest.mark.parametrize("groups,pad", [(5, 0), (12, 64), (9, 4096)])
@pytest.mark.parametrize("tile", TILES)
def test_matches_float64(n, k, groups, pad, tile):
    lib = _lib()
    rows = _rows(groups, 70, fresh_seed())
    a, ends, w, d = _case(rows, n, k, pad)
    ws = _call(lib, a, ends, w, d, tile=tile)
    torch.cuda.synchronize()
    del ws
    _check(d, _reference(a, rows, w))


@pytest.mark.parametrize("rows", [[0, 0, 0, 333, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
@pytest.mark.parametrize("tile", TILES)
def test_sparse_groups(rows, tile):
    lib = _lib()
    a, ends, w, d = _case(rows, 256, 512)
    ws = _call(lib, a, ends, w, d, tile=tile)
    torch.cuda.synchronize()
    del ws
    _check(d, _reference(a, rows, w) if sum(rows) else d[:0].double())


def test_in_cuda_graph_follows_device_row_ends():
    """Row ends are read on the device at replay: new counts with the same total need no re-capture."""
    lib = _lib()
    rows = [7, 0, 33, 1, 64, 0, 19, 4]
    a, ends, w, d = _case(rows, 512, 256, pad=128)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture (module load, smem attribute)
        ws = _call(lib, a, ends, w, d, stream)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        ws = _call(lib, a, ends, w, d, stream)
    rows2 = [0, 50, 1, 1, 3, 31, 0, 42]  # same total, different split
    ends.copy_(torch.tensor(rows2).cumsum(0))
    a.copy_(torch.randn_like(a, dtype=torch.float32).bfloat16())
    d.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    del ws
    _check(d, _reference(a, rows2, w))


def test_rejects_bad_arguments():
    lib = _lib()
    rows = [3, 4]
    a, ends, w, d = _case(rows, 256, 128)
    ws_bytes = lib.grouped_gemm_workspace_size(2, False)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
    # n % 8, misaligned A, small workspace, unknown tile, experts overlapping (stride < n*k), misaligned stride
    bad = [{"n": 252}, {"a": a.data_ptr() + 2}, {"ws_bytes": ws_bytes - 1}, {"tile": 9}, {"stride": 256 * 128 - 8},
           {"stride": 256 * 128 + 4}]
    for b in bad:
        with pytest.raises(RuntimeError):
            lib.grouped_gemm_bf16(b.get("a", a.data_ptr()), ends.data_ptr(), 2, w.data_ptr(),
                                  b.get("stride", w.stride(0)), d.data_ptr(), a.shape[0], b.get("n", 256), 128,
                                  b.get("tile", 0), ws.data_ptr(), b.get("ws_bytes", ws_bytes), 0)
