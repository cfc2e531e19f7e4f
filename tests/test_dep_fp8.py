"""DEP's FP8 dispatch (1x128-quantized rows with their scales) and the shared expert beside the routed path.

Ranks are threads of one process (exchange_ranks.ThreadRanks: torch.distributed's all-to-all replaced by an
in-memory one), on fresh random inputs. References are float64 math written here: the quantized rows
dequantized by hand, the FP8 weights dequantized by hand, SwiGLU by hand.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import fresh_seed
from exchange_ranks import ThreadRanks, placement, routing
from tensorrt_llm_dwdp.config import DepDispatch
from tensorrt_llm_dwdp.moe import ExpertWeights, expert_compute
from tensorrt_llm_dwdp.moe.exchange import AllToAllExchange, CommClock, ExchangeBackend
from tensorrt_llm_dwdp.moe.ops import quantize_fp8, quantize_weight_blocks
from tensorrt_llm_dwdp.moe.rows import QuantizedRows, RowLayout

WORLD, TOKENS = 4, [5, 0, 17, 9]
E, K, H, I, CAP = 10, 3, 256, 128, 20
CPU = torch.device("cpu")


def _problem(seed):
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(E, 2 * I, H, generator=g) / H ** 0.5
    w2 = torch.randn(E, H, I, generator=g) / I ** 0.5
    (q13, s13), (q2, s2) = quantize_weight_blocks(w13), quantize_weight_blocks(w2)
    owner, local_index, num_local = placement(E, WORLD, g)
    # rows of very different sizes: some blocks quantize with large scales, some with tiny ones
    xs = [torch.randn(t, H, generator=g) * torch.exp(2 * torch.randn(t, 1, generator=g)) for t in TOKENS]
    routes = [routing(t, E, K, g) for t in TOKENS]
    return (q13, s13, q2, s2), (owner, local_index, num_local), xs, routes


def _exchanges(monkeypatch, place, backend, dispatch, traffic=None):
    ranks = ThreadRanks(WORLD)
    ranks.install(monkeypatch)
    owner, local_index, num_local = place

    def make(r):
        ex = AllToAllExchange(owner, local_index, num_local, CAP, backend, CPU, CommClock(CPU), dispatch=dispatch)
        if traffic is not None:
            traffic[r] = ex.traffic
        return ex
    return ranks, make


def _fp8_row_bytes(h, k):
    """Counted here: e4m3 values (1 byte each), one fp32 scale per 128 of them, k int32 ids, k fp32 weights,
    the whole row padded to 16 bytes."""
    raw = h * 1 + 4 * (h // 128) + 4 * k + 4 * k
    return (raw + 15) // 16 * 16


@pytest.mark.parametrize("backend", [ExchangeBackend.GLOO_SPLITS, ExchangeBackend.GLOO])
def test_fp8_rows_arrive_bit_for_bit_and_bytes_are_the_fp8_minimum(monkeypatch, backend):
    seed = fresh_seed()
    _, place, xs, routes = _problem(seed)
    owner = place[0]
    traffic, got = [None] * WORLD, [None] * WORLD
    ranks, make = _exchanges(monkeypatch, place, backend, DepDispatch.FP8, traffic)

    def rank_main(r):
        got[r] = make(r).dispatch(xs[r], *routes[r])
    ranks.run(rank_main)

    sent = [quantize_fp8(x) for x in xs]  # what each sender's rows quantize to
    for r in range(WORLD):
        # receive order: by sender, then the sender's token order
        want = [(s, t) for s in range(WORLD) for t in range(TOKENS[s]) if (owner[routes[s][0][t]] == r).any()]
        rows = got[r].rows
        assert isinstance(rows, QuantizedRows) and got[r].row_index.numel() == len(want)
        q = rows.q.view(torch.uint8).index_select(0, got[r].row_index)
        sc = rows.scales.index_select(0, got[r].row_index)
        for i, (s, t) in enumerate(want):
            assert torch.equal(q[i], sent[s][0][t].view(torch.uint8)), (seed, r, i)
            assert torch.equal(sc[i].view(torch.int32), sent[s][1][t].view(torch.int32)), (seed, r, i)

    row = _fp8_row_bytes(H, K)
    assert RowLayout(H, torch.float32, K, fp8=True).nbytes == row
    back = H * 4  # the combine row: the activations' dtype (fp32 on CPU ranks)
    for r in range(WORLD):
        to_peers = sum(int((owner[routes[r][0]] == q).any(1).sum()) for q in range(WORLD) if q != r) if TOKENS[r] else 0
        moved, least = traffic[r].take()
        assert least == to_peers * (row + back)
        if backend is ExchangeBackend.GLOO_SPLITS:  # occupied rows only, plus the W int64 row counts
            assert moved == least + 8 * (WORLD - 1)
        else:
            assert moved == (WORLD - 1) * CAP * (row + back)
        print(f"rank {r} {backend.value}: fp8 rows of {row} bytes (bf16 rows would be "
              f"{RowLayout(H, torch.bfloat16, K).nbytes}); moved {moved}, minimum {least}")


def _dequantize64(q, s):
    return q.double() * s.double().repeat_interleave(128, -1)


def _blocks64(w, s):
    return w.double() * s.double().repeat_interleave(128, -2).repeat_interleave(128, -1)


def _experts64(x, ids, wts, w13, w2):
    """sum_j wts[t, j] * SwiGLU_{ids[t, j]}(x[t]) in float64."""
    out = torch.zeros(x.shape[0], H, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate, up = (w13[e] @ x[t]).chunk(2)
            out[t] += float(wts[t, j]) * (w2[e] @ (F.silu(gate) * up))
    return out


def _run_dep(monkeypatch, weights, place, xs, routes, dispatch):
    q13, s13, q2, s2 = weights
    owner = place[0]
    outs = [None] * WORLD
    ranks, make = _exchanges(monkeypatch, place, ExchangeBackend.GLOO_SPLITS, dispatch)

    def rank_main(r):
        mine = (owner == r).nonzero().flatten()
        local = ExpertWeights(q13[mine], q2[mine], s13[mine], s2[mine])

        def compute(x, ids, wts, rows=None, assignments=None, exact=None):
            return expert_compute(x, ids, wts, local, rows=rows, assignments=assignments, exact=exact)
        outs[r] = make(r).run(xs[r], *routes[r], compute)
    ranks.run(rank_main)
    return outs


def test_fp8_dispatch_end_to_end_against_float64_and_bf16_dispatch(monkeypatch):
    seed = fresh_seed()
    weights, place, xs, routes = _problem(seed)
    w13, w2 = _blocks64(weights[0], weights[1]), _blocks64(weights[2], weights[3])
    fp8 = _run_dep(monkeypatch, weights, place, xs, routes, DepDispatch.FP8)
    plain = _run_dep(monkeypatch, weights, place, xs, routes, DepDispatch.BF16)  # rows as they are (fp32 here)
    worst, differ = 0.0, False
    for r in range(WORLD):
        if not TOKENS[r]:
            assert fp8[r].shape == plain[r].shape == (0, H)
            continue
        ids, wts = routes[r]
        x = xs[r].double()
        # 1) local's experts on activations quantized and dequantized as an FP8 kernel does, in float64
        q, s = quantize_fp8(xs[r])
        xq = _dequantize64(q, s)
        want = _experts64(xq, ids, wts, w13, w2)
        scale = float(want.abs().max())
        assert torch.allclose(fp8[r].double(), want, rtol=1e-5, atol=1e-5 * scale), (seed, r)

        # 2) FP8 vs unquantized rows: the e4m3 rounding bound carried through the experts.
        # Per element, with v = x / s in [-448, 448] and s = max(amax, 1e-4) / 448 per 1x128 block, e4m3 rounds to
        # nearest with 3 mantissa bits: |v - q| <= 2^-4 |v| where v is normal (|v| >= 2^-6) and <= 2^-10 (half the
        # subnormal spacing 2^-9) below; the fp32 product x * (448 / amax) adds at most 2^-23 relative. So
        # |x - deq| <= e := (2^-4 + 2^-22) |x| + 2^-10 s.
        blk_s = s.double().repeat_interleave(128, -1)
        e = (2.0 ** -4 + 2.0 ** -22) * x.abs() + 2.0 ** -10 * blk_s
        assert ((x - xq).abs() <= e).all(), (seed, r)  # the premise holds for the quantizer
        # Through one expert: g = G x, u = U x move by at most dg = |G| e, du = |U| e; a = silu(g) u moves by at
        # most max|silu'| dg (|u| + du) + |silu(g)| du (mean value theorem; max|silu'| = 1.0998 < 1.1); the
        # output by |W2| |da|, weighted by the routing weights (positive here).
        bound = torch.zeros(x.shape[0], H, dtype=torch.float64)
        for t in range(x.shape[0]):
            for j in range(K):
                ex = int(ids[t, j])
                gate, up = (w13[ex] @ x[t]).chunk(2)
                dg, du = (w13[ex].abs() @ e[t]).chunk(2)
                da = 1.1 * dg * (up.abs() + du) + F.silu(gate).abs() * du
                bound[t] += float(wts[t, j]) * (w2[ex].abs() @ da)
        bound += 1e-5 * scale  # float32 round-off of both runs (see 1)
        diff = (fp8[r].double() - plain[r].double()).abs()
        assert (diff <= bound).all(), (seed, r, float((diff / bound).max()))
        worst = max(worst, float((diff / bound).max()))
        differ = differ or bool((diff > 1e-5 * scale).any())
    assert differ  # the FP8 rows were quantized: the runs must not agree to round-off
    print(f"max |fp8 - bf16 dispatch| over its bound: {worst:.3f}")


def test_fp8_rows_need_hidden_in_128_blocks():
    with pytest.raises(ValueError, match="multiple of the 128"):
        RowLayout(192, torch.bfloat16, 4, fp8=True)
    assert RowLayout(192, torch.bfloat16, 4).nbytes == 192 * 2 + 32


def test_quantized_rows_reference_dequantizes_what_it_gathers():
    """The reference kernel on QuantizedRows == on their dequantized values, computed rows only."""
    g = torch.Generator().manual_seed(fresh_seed())
    (q13, s13), (q2, s2) = (quantize_weight_blocks(torch.randn(4, 2 * I, H, generator=g) / H ** 0.5),
                            quantize_weight_blocks(torch.randn(4, H, I, generator=g) / I ** 0.5))
    w = ExpertWeights(q13, q2, s13, s2)
    x = torch.randn(9, H, generator=g)
    rows = torch.tensor([7, 0, 3, 3, 5])
    ids, wts = torch.randint(0, 5, (5, 2), generator=g), torch.rand(5, 2, generator=g)  # 4 == "no expert"
    qr = QuantizedRows.of(x)
    got = expert_compute(qr, ids, wts, w, rows=rows)
    want = _experts64(_dequantize64(qr.q, qr.scales)[rows], torch.where(ids < 4, ids, 0),
                      torch.where(ids < 4, wts, 0.0), _blocks64(q13, s13), _blocks64(q2, s2))
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def _fp8_config():
    from tensorrt_llm_dwdp.runtime import preset
    return dataclasses.replace(preset("tiny"), hidden=128, moe_inter=128, shared_inter=128, layers=3)


def test_apply_dep_fp8_dispatch_matches_local_on_quantized_rows(monkeypatch):
    """The whole model, DEP over 4 thread ranks: FP8 dispatch equals local whose routed experts get the activations
    quantized and dequantized (an FP8 kernel's input), and auto (BF16 rows on CPU, whose reference kernel does not
    quantize) equals plain local; the two differ by more than round-off, so the rows really were FP8."""
    from tensorrt_llm_dwdp.runtime import Decoder
    from tensorrt_llm_dwdp.runtime.dep import apply_dep, dispatch_choice
    seed = fresh_seed()
    cfg, fp8 = _fp8_config(), "float8_e4m3fn"
    g = torch.Generator().manual_seed(seed)
    lens = [[3, 5], [], [7], [2, 2, 4]]
    ids = [torch.randint(0, cfg.vocab, (sum(n),), generator=g) for n in lens]
    with torch.no_grad():
        local = Decoder.build(cfg, seed, weight_dtype=fp8)
        plain = [local(i, n) for i, n in zip(ids, lens)]
        for b in local.moe_blocks():
            routed = b.experts.routed
            b.experts.routed = lambda x, *a, routed=routed: routed(QuantizedRows.of(x).dequantize(), *a)
        quantized = [local(i, n) for i, n in zip(ids, lens)]
    ranks = ThreadRanks(WORLD)
    ranks.install(monkeypatch)
    outs = {DepDispatch.FP8: [None] * WORLD, DepDispatch.AUTO: [None] * WORLD}
    choice = dispatch_choice(Decoder.build(cfg, seed, lazy_experts=True, weight_dtype=fp8), DepDispatch.AUTO, CPU)
    assert choice.dispatch is DepDispatch.BF16 and "reference" in choice.reason, choice

    def rank_main(r):
        for dispatch, out in outs.items():
            m = Decoder.build(cfg, seed, lazy_experts=True, weight_dtype=fp8)
            apply_dep(m, CommClock(CPU), max_num_tokens=32, dispatch=dispatch)
            want = DepDispatch.FP8 if dispatch is DepDispatch.FP8 else DepDispatch.BF16
            assert all(b.experts.exchange.dispatch_dtype is want for b in m.moe_blocks())
            with torch.no_grad():
                out[r] = m(ids[r], lens[r])
    ranks.run(rank_main, timeout=300)
    gap = 0.0
    for r in range(WORLD):
        assert torch.allclose(outs[DepDispatch.FP8][r], quantized[r], atol=1e-4, rtol=1e-4), (seed, r)
        assert torch.allclose(outs[DepDispatch.AUTO][r], plain[r], atol=1e-4, rtol=1e-4), (seed, r)
        if lens[r]:
            gap = max(gap, float((quantized[r] - plain[r]).abs().max()))
    assert gap > 1e-3, gap


def test_fp8_dispatch_for_bf16_experts_is_refused():
    from tensorrt_llm_dwdp.runtime import Decoder
    from tensorrt_llm_dwdp.runtime.dep import dispatch_choice
    m = Decoder.build(_fp8_config(), fresh_seed(), lazy_experts=True)
    with pytest.raises(ValueError, match="--dep-dispatch fp8: the experts are bfloat16"):
        dispatch_choice(m, DepDispatch.FP8, CPU)
    assert dispatch_choice(m, DepDispatch.AUTO, CPU).dispatch is DepDispatch.BF16


@pytest.mark.parametrize("args", [["--dep-dispatch", "fp8"], ["--dep-dispatch", "int4"]])
def test_bench_dep_dispatch_bad_input(args):
    from test_cli_errors import one_line_error
    one_line_error("bench", *args, names="--dep-dispatch")


def test_dep_rows_auto_keeps_the_bound_where_its_temporaries_fit():
    """--dep-rows auto: the static bound (no host sync) while its temporaries take at most a quarter of the free GPU
    memory, else exact rows; DeepSeek-V3 with FP8 experts on 8 ranks at 16K tokens needs 31.3 GiB on the bound
    (1M assignments x 32032 bytes, counted by hand below). CPU ranks are exact whatever is asked."""
    from types import SimpleNamespace
    from tensorrt_llm_dwdp.config import DepRows
    from tensorrt_llm_dwdp.runtime.dep import bound_bytes, rows_choice
    from tensorrt_llm_dwdp.runtime.model_config import preset
    c = preset("deepseek-v3-layers")  # DeepSeek-V3 shapes, fewer layers
    assert (c.hidden, c.moe_inter, c.top_k) == (7168, 2048, 8)
    block = SimpleNamespace(weight_dtype="float8_e4m3fn")
    model = SimpleNamespace(c=c, moe_blocks=lambda: [block], embed=SimpleNamespace(weight=torch.empty(0).bfloat16()))
    per_row = 7168 * (1 + 4 / 128) + 2 * 2048 * 2 + 2048 * (1 + 4 / 128) + 7168 * 2
    assert bound_bytes(model, 8, 16384) == int(8 * 16384 * 8 * per_row)
    cuda = torch.device("cuda", 0)
    tight = rows_choice(model, DepRows.AUTO, 8, 16384, cuda, free_bytes=120 << 30)
    roomy = rows_choice(model, DepRows.AUTO, 8, 16384, cuda, free_bytes=140 << 30)
    assert tight.rows is DepRows.EXACT and "31.3 GiB" in tight.reason and "120.0 GiB free" in tight.reason
    assert roomy.rows is DepRows.BOUND and "no host sync" in roomy.reason
    assert rows_choice(model, DepRows.BOUND, 8, 16384, cuda, free_bytes=1).rows is DepRows.BOUND  # asked: kept
    assert rows_choice(model, DepRows.BOUND, 8, 16384, torch.device("cpu")).rows is DepRows.EXACT
    block.weight_dtype = "bfloat16"  # BF16 experts: rows of the activations' dtype
    assert bound_bytes(model, 8, 16384) == 8 * 16384 * 8 * (7168 * 2 + 2 * 2048 * 2 + 2048 * 2 + 7168 * 2)
