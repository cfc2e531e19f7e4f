"""One packing rule: the runtime's executor and the simulator pack the same requests into the same iterations,
and both match a plain reference written from the rule's words."""

import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.runtime.executor import ContextExecutor
from tensorrt_llm_dwdp.sim import batches
from tensorrt_llm_dwdp.workloads.requests import IslDist, Request


def reference(isls, budget, chunked, cap=None):
    """FCFS; a request joins the open iteration if it fits (or, chunked, as much as fits); an iteration closes
    when full, at `cap` requests, or when the next whole request does not fit; a request longer than the
    budget is split, alone, even without chunking. Iterations as lists of (request, offset, tokens)."""
    its, cur, room = [], [], budget
    for i, isl in enumerate(isls):
        off = 0
        while True:
            left = isl - off
            if cur and (room == 0 or (cap is not None and len(cur) == cap) or (left > room and not chunked)):
                its.append(cur)
                cur, room = [], budget
            take = min(left, room)
            cur.append((i, off, take))
            off, room = off + take, room - take
            if off == isl:
                break
    if cur:
        its.append(cur)
    return its


class _Recorder:
    """A model that records each step's chunks: lengths, and offsets from the positions the executor passes."""

    def __init__(self):
        self.c = SimpleNamespace(vocab=7)
        self.steps = []

    def __call__(self, ids, lens, positions=None):
        starts = [0] * len(lens) if positions is None else \
            [int(p[0]) if len(p) else None for p in torch.split(positions.cpu(), lens)]
        self.steps.append(list(zip(starts, lens)))


def runtime_iterations(isls, budget, chunked):
    model = _Recorder()
    ex = ContextExecutor(model, "local", budget, torch.device("cpu"), seed=0, chunked_prefill=chunked)
    res = ex.run([Request(i, n) for i, n in enumerate(isls)], 0.0, 0)
    assert [it.tokens for it in res.iterations] == [sum(n for _, n in s) for s in model.steps]
    assert sorted(r.id for r in res.requests) == list(range(len(isls)))
    return model.steps


def sim_iterations(isls, budget, chunked, cap=None):
    return [[(c.prior, c.tokens) for c in b.chunks] for b in batches.pack(isls, budget, chunked, cap)]


def norm(its):
    """(offset, tokens) per chunk; a zero-token chunk has no position to read, so its offset is None."""
    return [[(c[-2] if c[-1] else None, c[-1]) for c in it] for it in its]


def _workload(rng, fits):
    budget = rng.choice([1, 2, 3, rng.randint(4, 64), rng.randint(64, 4096)])
    hi = budget if fits else 3 * budget + 2
    isls = [rng.choice([0, 1, budget, rng.randint(1, hi)]) if rng.random() < 0.3 else rng.randint(1, hi)
            for _ in range(rng.randint(0, 40))]
    return isls, budget


@pytest.mark.parametrize("chunked", [False, True])
def test_runtime_and_simulator_pack_alike(chunked):
    rng = random.Random(fresh_seed())
    for _ in range(60):
        isls, budget = _workload(rng, fits=not chunked)
        ref = norm(reference(isls, budget, chunked))
        assert norm(runtime_iterations(isls, budget, chunked)) == ref
        assert norm(sim_iterations(isls, budget, chunked)) == ref


def test_simulator_rule_beyond_what_the_runtime_accepts():
    """Requests longer than the budget without chunking (the runtime refuses them before packing), and a cap."""
    rng = random.Random(fresh_seed())
    for _ in range(200):
        isls, budget = _workload(rng, fits=False)
        chunked, cap = rng.random() < 0.5, rng.choice([None, 1, 2, rng.randint(1, 10)])
        ref = [[(off, n) for _, off, n in it] for it in reference(isls, budget, chunked, cap)]
        assert sim_iterations(isls, budget, chunked, cap) == ref
    with pytest.raises(ValueError, match="chunked-prefill"):
        runtime_iterations([5, 9], 8, chunked=False)


def test_simulator_draws_requests_lazily():
    """An endless stream packed into k iterations draws only the requests those iterations touch."""
    rng = random.Random(fresh_seed())
    for _ in range(30):
        budget, k = rng.randint(1, 500), rng.randint(1, 20)
        drawn = []

        def stream():
            for _ in itertools.count():
                drawn.append(rng.randint(1, 3 * budget))
                yield drawn[-1]

        chunked = rng.random() < 0.5
        got = batches.pack(stream(), budget, chunked, limit=k)
        assert len(got) == k
        ref = reference(drawn, budget, chunked)
        assert [[(c.prior, c.tokens) for c in b.chunks] for b in got] == [[(o, n) for _, o, n in it] for it in ref][:k]
        # at most one request past the last iteration's: the one that did not fit it
        assert len(drawn) - 1 <= ref[k - 1][-1][0] + 1


def test_rank_batches_bound_the_requests_an_iteration_holds():
    with pytest.raises(ValueError, match="--max-batch-size"):
        batches.rank_batches(IslDist("fixed", 1), 1 << 20, 1, None)
    cap = batches.MAX_REQUESTS_PER_ITERATION
    b = batches.rank_batches(IslDist("fixed", 1), 1 << 20, 2, np.random.default_rng(fresh_seed()),
                                  max_batch_size=cap)
    assert [len(x.chunks) for x in b] == [cap, cap]
