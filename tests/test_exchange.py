"""DEP's token exchange (moe/exchange.py): fixed capacity, and split sizes (occupied rows only).

The index plan is checked as a property (hypothesis): it never overflows its capacity and every
(token, rank) pair with an expert on that rank gets exactly one row, carrying the right local ids and
weights. The whole exchange then runs on W in-process ranks (threads, with torch.distributed's
all-to-all replaced by an in-memory one) and must match float64 all-local expert math.
"""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import fresh_seed
from tensorrt_llm_dwdp.moe import experts as experts_module
from tensorrt_llm_dwdp.moe import moe_experts
from tensorrt_llm_dwdp.moe.exchange import AllToAllExchange, CommClock, ExchangeBackend, plan_dispatch
from exchange_ranks import ThreadRanks, placement, routing
from tensorrt_llm_dwdp.moe import ExpertWeights


@settings(max_examples=150, deadline=None)
@given(world=st.integers(1, 6), num_experts=st.integers(1, 12), k=st.integers(1, 4), capacity=st.integers(1, 9),
       fill=st.floats(0, 1), packed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_plan_never_overflows_and_sends_each_token_rank_row_once(world, num_experts, k, capacity, fill, packed,
                                                                  seed):
    k = min(k, num_experts)
    g = torch.Generator().manual_seed(seed)
    tokens = round(fill * capacity)
    owner, local_index, num_local = placement(num_experts, world, g)
    ids, weights = routing(tokens, num_experts, k, g)
    sentinel = torch.tensor(num_local)
    plan = plan_dispatch(ids, weights, owner, local_index, sentinel, capacity, packed=packed)

    rows = world * capacity
    assert plan.local_ids.shape == (rows, k) and plan.weights.shape == (rows, k) and plan.send_token.shape == (rows,)
    seen = {}
    for t in range(tokens):
        for r in range(world):
            mine = [j for j in range(k) if owner[ids[t, j]] == r]
            s = int(plan.slot[t, r])
            if not mine:
                assert s == -1
                continue
            assert 0 <= s < rows and s not in seen
            seen[s] = (t, r)
            want_ids = [int(local_index[ids[t, j]]) if j in mine else num_local[r] for j in range(k)]
            assert plan.local_ids[s].tolist() == want_ids
            assert torch.equal(plan.weights[s], torch.where(torch.tensor([j in mine for j in range(k)]),
                                                            weights[t], 0.0))
            assert int(plan.send_token[s]) == t
    counts = [sum(1 for (_, r) in seen.values() if r == rr) for rr in range(world)]
    assert plan.counts.tolist() == counts and max(counts, default=0) <= capacity
    # each rank's rows lie in its own block: r*C.. (equal split) or after rank r-1's rows (packed)
    for s, (_, r) in seen.items():
        lo = sum(counts[:r]) if packed else r * capacity
        assert lo <= s < lo + counts[r]
    for s in set(range(rows)) - set(seen):  # unused rows: no expert, no weight
        r = s // capacity if not packed else None
        if r is not None:
            assert plan.local_ids[s].tolist() == [num_local[r]] * k
        assert float(plan.weights[s].abs().sum()) == 0.0


def test_plan_rejects_a_batch_over_capacity():
    g = torch.Generator().manual_seed(fresh_seed())
    owner, local_index, num_local = placement(8, 2, g)
    ids, w = routing(5, 8, 2, g)
    with pytest.raises(ValueError, match="max-num-tokens"):
        plan_dispatch(ids, w, owner, local_index, torch.tensor(num_local), capacity=4)


@pytest.mark.parametrize("backend", [ExchangeBackend.GLOO, ExchangeBackend.GLOO_SPLITS])
@pytest.mark.parametrize("world,tokens", [(4, [5, 0, 17, 9]), (3, [1, 12, 12]), (2, [0, 0])])
def test_exchange_matches_all_local_experts(monkeypatch, world, tokens, backend):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    num_experts, k, hidden, inter, capacity = 10, 3, 16, 8, 20
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) / hidden ** 0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) / inter ** 0.5
    owner, local_index, num_local = placement(num_experts, world, g)
    xs = [torch.randn(t, hidden, generator=g) for t in tokens]
    routes = [routing(t, num_experts, k, g) for t in tokens]
    ranks = ThreadRanks(world)
    ranks.install(monkeypatch)
    outs = [None] * world
    handed, computed = [0] * world, [0] * world  # rows given to the expert step; rows its experts ran on
    counted = [None] * world  # the (row, expert) pairs the exchange read on the host (DepRows.EXACT)
    traffic = [None] * world
    real_swiglu = experts_module.swiglu

    def counting_swiglu(x, *a, **kw):
        if hasattr(ranks.local, "rank"):  # a rank thread (the reference below runs on the main thread)
            computed[ranks.local.rank] += x.shape[0]
        return real_swiglu(x, *a, **kw)

    monkeypatch.setattr(experts_module, "swiglu", counting_swiglu)

    def rank_main(r):
        mine = (owner == r).nonzero().flatten()
        local = ExpertWeights(w13[mine], w2[mine])
        ex = AllToAllExchange(owner, local_index, num_local, capacity, backend,
                              torch.device("cpu"), CommClock(torch.device("cpu")))
        traffic[r] = ex.traffic
        got = ex.dispatch(xs[r], *routes[r])
        handed[r], counted[r] = got.row_index.numel(), got.assignments
        assert int(got.num_rows) == handed[r]
        y = moe_experts(got.rows, got.local_ids, got.weights, local, rows=got.row_index)
        outs[r] = ex.combine(y, got)

    ranks.run(rank_main)
    # one dispatch, one combine (no count exchange); with split sizes the W row counts go first
    assert ranks.calls == (3 if backend is ExchangeBackend.GLOO_SPLITS else 2)
    # bytes: a row out is 16-byte padded hidden values + k ids + k weights, a row back the hidden values (fp32)
    out_row, back_row = -(-hidden * 4 // 16) * 16 + -(-8 * k // 16) * 16, hidden * 4
    for r in range(world):
        to_peers = sum(int(((owner[routes[r][0]] == q).any(1)).sum()) for q in range(world) if q != r) \
            if tokens[r] else 0
        moved, least = traffic[r].take()  # a named pair: moved, minimum
        assert least == to_peers * (out_row + back_row)
        # split sizes: the occupied rows and the W row counts (int64) sent first
        assert moved == (least + 8 * (world - 1) if backend is ExchangeBackend.GLOO_SPLITS else
                         (world - 1) * capacity * (out_row + back_row))
        print(f"rank {r} {backend.value}: moved {moved} bytes, minimum {least}")
    # the expert step runs on the rows received and nothing else: counted from the routing, independently
    for r in range(world):
        on_r = [owner[routes[s][0]] == r for s in range(world)]  # [T_s, k] each sender's slots on rank r
        rows_in = sum(int(m.any(1).sum()) for m in on_r if m.numel())
        slots_in = sum(int(m.sum()) for m in on_r)
        assert handed[r] == rows_in and computed[r] == slots_in, (seed, r, handed[r], rows_in, computed[r], slots_in)
        assert counted[r] == slots_in, (seed, r, counted[r], slots_in)
    assert sum(handed) < world * world * capacity or not sum(tokens)  # not the fixed capacity's W x C per rank
    full = ExpertWeights(w13.double(), w2.double())
    peak = 0.0
    for r in range(world):
        want = moe_experts(xs[r].double(), routes[r][0], routes[r][1].double(), full)
        assert outs[r].shape == (tokens[r], hidden)
        if tokens[r]:
            # float32 math against float64; rows are sums of at most k expert outputs of O(1)
            assert torch.allclose(outs[r].double(), want, atol=1e-5, rtol=1e-5), (seed, r)
            peak = max(peak, float(want.abs().max()))
    # not a comparison of near-zeros: over all ranks' tokens (one token alone may stay below 0.1)
    assert peak > 0.1 or not sum(tokens)
    print(f"rows handed to the expert step {handed}, expert rows computed {computed}, "
          f"fixed capacity {world * capacity} rows x {k} slots per rank")


def test_sentinel_ids_contribute_nothing():
    g = torch.Generator().manual_seed(fresh_seed())
    e, h, i = 5, 8, 4
    w = ExpertWeights(torch.randn(e, 2 * i, h, generator=g), torch.randn(e, h, i, generator=g))
    x = torch.randn(6, h, generator=g)
    ids = torch.randint(0, e, (6, 3), generator=g)
    wts = torch.rand(6, 3, generator=g)
    drop = torch.rand(6, 3, generator=g) < 0.5
    masked = moe_experts(x, torch.where(drop, e, ids), wts, w)
    want = moe_experts(x, ids, torch.where(drop, 0.0, wts), w)  # the same experts with weight 0
    assert torch.allclose(masked, want, atol=1e-6)
    assert torch.equal(moe_experts(x, torch.full_like(ids, e), wts, w), torch.zeros_like(x))


@pytest.mark.parametrize("sentinel,k", [(3, 2), (5, 4)])
def test_exact_and_bound_received_rows_compute_the_same(sentinel, k):
    """DepRows: exact hands the expert step the occupied rows and their (row, expert) count, read at once; bound
    keeps every receive row, unoccupied ones masked to "no expert" (a packed receive buffer's tail holds stale ids,
    which must not count). Both give the same result on every occupied row, against float64."""
    from tensorrt_llm_dwdp.moe.exchange import compact_received
    g = torch.Generator().manual_seed(fresh_seed())
    R, h, i = 37, 16, 8
    ids = torch.randint(0, sentinel + 1, (R, k), generator=g)
    occupied = torch.rand(R, generator=g) < 0.6
    x = torch.randn(R, h, generator=g, dtype=torch.float64)
    wts = torch.rand(R, k, generator=g, dtype=torch.float64)
    w = ExpertWeights(torch.randn(sentinel, 2 * i, h, generator=g, dtype=torch.float64) / h ** 0.5,
                      torch.randn(sentinel, h, i, generator=g, dtype=torch.float64) / i ** 0.5)
    exact, bound = compact_received(ids, sentinel, occupied), compact_received(ids, sentinel, occupied, exact=False)
    want_rows = occupied.nonzero().flatten()
    assert torch.equal(exact.row_index, want_rows) and int(exact.num_rows) == want_rows.numel()
    assert exact.assignments == int((ids[occupied] < sentinel).sum()) and bound.assignments is None
    assert torch.equal(bound.row_index, torch.arange(R)) and bool((bound.local_ids[~occupied] == sentinel).all())
    y_exact = moe_experts(x, exact.local_ids, wts[exact.row_index], w, rows=exact.row_index)
    y_bound = moe_experts(x, bound.local_ids, wts, w, rows=bound.row_index)
    assert torch.allclose(y_exact, y_bound[want_rows], atol=1e-12) and not y_bound[~occupied].any()
    ref = torch.zeros(want_rows.numel(), h, dtype=torch.float64)
    for n, r in enumerate(want_rows.tolist()):
        for e, wt in zip(ids[r].tolist(), wts[r].tolist()):
            if e < sentinel:
                gate, up = (w.w13[e] @ x[r]).chunk(2)
                ref[n] += wt * (w.w2[e] @ (torch.nn.functional.silu(gate) * up))
    assert torch.allclose(y_exact, ref, atol=1e-10) and float(ref.abs().max()) > 0.05
