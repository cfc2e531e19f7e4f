"""Permute / SwiGLU / combine custom ops: kernels against plain-torch math, fake impls under compile and opcheck."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.moe import ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _inputs(device, tokens, k=4, hidden=136, rows=None):
    g = torch.Generator().manual_seed(fresh_seed())
    a = tokens * k
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    src = torch.randint(0, max(tokens, 1), (a,), generator=g)
    dest = torch.randperm(2 * a, generator=g)[:a]  # sparse destinations in a larger buffer
    rows = rows or 3 * a + 5
    y = torch.randn(rows, hidden, generator=g).bfloat16()
    row = torch.randint(0, rows, (a,), generator=g)
    row[torch.rand(a, generator=g) < 0.2] = -1  # assignments to no expert of this rank
    w = torch.rand(a, generator=g)
    to = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    return to(x, src, dest), to(y)[0], to(row, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 5, 333])
def test_permute_rows(device, tokens):
    (x, src, dest), _, _ = _inputs(device, tokens)
    out = ops.permute_rows(x, src, dest, 2 * src.numel())
    assert out.shape == (2 * src.numel(), x.shape[1])
    assert torch.equal(out[dest].cpu(), x[src].cpu())  # exact: a copy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 7, 257])
def test_combine_matches_float64(device, tokens):
    _, y, (row, w) = _inputs(device, tokens)
    k = 4
    out = ops.combine(y, row, w, k).cpu()
    y64 = y.cpu().double()
    want = torch.zeros(tokens, y.shape[1], dtype=torch.float64)
    for a in range(tokens * k):
        if int(row[a]) >= 0:
            want[a // k] += float(w[a]) * y64[int(row[a])]
    assert torch.isfinite(out).all()
    assert (out.double() - want).norm() / max(want.norm(), 1e-9) < 5e-3  # one bf16 rounding of an fp32 sum


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("up_first", [False, True])
def test_swiglu_matches_float64(device, up_first):
    g = torch.Generator().manual_seed(fresh_seed())
    h = (torch.randn(37, 2 * 136, generator=g) * 3).bfloat16()
    out = ops.swiglu(h.to(device), up_first).cpu()
    a, b = h.double().chunk(2, dim=-1)
    gate, up = (b, a) if up_first else (a, b)
    want = gate / (1 + torch.exp(-gate)) * up
    assert (out.double() - want).norm() / want.norm() < 5e-3


def test_combine_never_reads_garbage_rows():
    _, y, (row, w) = _inputs("cpu", 9)
    y[-5:] = float("nan")  # rows no assignment names
    row = torch.where(row >= 0, row % (y.shape[0] - 5), row)
    assert torch.isfinite(ops.combine(y, row, w, 4)).all()


def test_opcheck_and_compile_on_cpu():
    (x, src, dest), y, (row, w) = _inputs("cpu", 6)
    torch.library.opcheck(ops.permute_rows, (x, src, dest, 2 * src.numel()),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.combine, (y, row, w, 4), test_utils=("test_schema", "test_faketensor"))

    def f(x, src, dest, y, row, w):
        p = ops.permute_rows(x, src, dest, 2 * src.numel())
        return p[dest].float().sum() + ops.combine(y, row, w, 4).float().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x, src, dest, y, row, w), f(x, src, dest, y, row, w))


@pytest.mark.gpu
def test_ops_under_inductor_on_gpu():
    (x, src, dest), y, (row, w) = _inputs("cuda", 64)

    def f(x, src, dest, y, row, w):
        return ops.permute_rows(x, src, dest, 2 * src.numel())[dest], ops.combine(y, row, w, 4)

    compiled = torch.compile(f, fullgraph=True)
    for got, want in zip(compiled(x, src, dest, y, row, w), f(x, src, dest, y, row, w)):
        assert torch.equal(got, want)


@pytest.mark.gpu
def test_permute_and_swiglu_stop_at_a_device_count_and_read_strided_rows_in_place():
    """DEP's expert step on a GPU: the receive buffer's hidden columns are a strided view, and the number of real
    assignments lives on the device. Rows past the count stay as they were (sentinel-filled here)."""
    g = torch.Generator().manual_seed(fresh_seed())
    rows, hidden, pad = 97, 136, 24  # rows of 160 bf16: 136 hidden values, then ids and weights
    buf = torch.randn(rows, hidden + pad, generator=g).bfloat16().cuda()
    x = buf[:, :hidden]
    src = torch.randint(0, rows, (200,), generator=g).cuda()
    dest = torch.arange(200).cuda()
    n = int(torch.randint(1, 200, (1,), generator=g))
    limit = torch.tensor([n], device="cuda")
    out = ops.permute_rows(x, src, dest, 200, limit)
    assert torch.equal(out[:n], x[src[:n]])
    h = torch.randn(200, 2 * 64, generator=g).bfloat16().cuda()
    act = ops.swiglu(h, False, limit)
    assert torch.equal(act[:n], ops.swiglu(h[:n].clone(), False))
    sentinel = torch.full((200, hidden), 7.0, dtype=torch.bfloat16, device="cuda")
    from tensorrt_llm_dwdp import _C
    _C.permute_rows_bf16(x.data_ptr(), src.data_ptr(), dest.data_ptr(), 200, hidden, sentinel.data_ptr(),
                         torch.cuda.current_stream().cuda_stream, limit.data_ptr(), x.stride(0))
    assert torch.equal(sentinel[:n], x[src[:n]]) and bool((sentinel[n:] == 7.0).all())  # nothing past the count
