"""Permute / combine custom ops: kernels against plain-torch math, fake impls under compile and opcheck."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.moe import ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _inputs(device, tokens, k=4, hidden=136, segments=3, rows=None):
    g = torch.Generator().manual_seed(fresh_seed())
    a = tokens * k
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    src = torch.randint(0, max(tokens, 1), (a,), generator=g)
    dest = torch.randperm(2 * a, generator=g)[:a]  # sparse destinations in a larger buffer
    rows = rows or 3 * a + 5
    ys = [torch.randn(rows, hidden, generator=g).bfloat16() for _ in range(segments)]
    seg = torch.randint(0, segments, (a,), generator=g)
    row = torch.randint(0, rows, (a,), generator=g)
    w = torch.rand(a, generator=g)
    to = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    return to(x, src, dest), to(*ys), to(seg, row, w)


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
    _, ys, (seg, row, w) = _inputs(device, tokens)
    k = 4
    out = ops.combine(ys, seg, row, w, k).cpu()
    ys64 = [y.cpu().double() for y in ys]
    want = torch.zeros(tokens, ys[0].shape[1], dtype=torch.float64)
    for a in range(tokens * k):
        want[a // k] += float(w[a]) * ys64[int(seg[a])][int(row[a])]
    assert torch.isfinite(out).all()
    assert (out.double() - want).norm() / want.norm() < 5e-3  # one bf16 rounding of an fp32 sum


def test_combine_never_reads_garbage_rows():
    _, ys, (seg, row, w) = _inputs("cpu", 9)
    for y in ys:
        y[-5:] = float("nan")  # rows no assignment names
    row = row % (ys[0].shape[0] - 5)
    assert torch.isfinite(ops.combine(ys, seg, row, w, 4)).all()


def test_opcheck_and_compile_on_cpu():
    (x, src, dest), ys, (seg, row, w) = _inputs("cpu", 6)
    torch.library.opcheck(ops.permute_rows, (x, src, dest, 2 * src.numel()),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.combine, (ys, seg, row, w, 4), test_utils=("test_schema", "test_faketensor"))

    def f(x, src, dest, ys, seg, row, w):
        p = ops.permute_rows(x, src, dest, 2 * src.numel())
        return p[dest].float().sum() + ops.combine(ys, seg, row, w, 4).float().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x, src, dest, ys, seg, row, w), f(x, src, dest, ys, seg, row, w))


@pytest.mark.gpu
def test_ops_under_inductor_on_gpu():
    (x, src, dest), ys, (seg, row, w) = _inputs("cuda", 64)

    def f(x, src, dest, ys, seg, row, w):
        return ops.permute_rows(x, src, dest, 2 * src.numel())[dest], ops.combine(ys, seg, row, w, 4)

    compiled = torch.compile(f, fullgraph=True)
    for got, want in zip(compiled(x, src, dest, ys, seg, row, w), f(x, src, dest, ys, seg, row, w)):
        assert torch.equal(got, want)
