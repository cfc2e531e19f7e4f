"""EPLB's placement (eplb.py) as properties: every expert has an active replica, every rank the same number of
slots, a rank never holds one expert twice, and the busiest rank carries no more than plain DEP's contiguous
placement."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import fresh_seed
from tensorrt_llm_dwdp.eplb import contiguous_slots, eplb_placement, fill_slots, imbalance


@settings(max_examples=300, deadline=None)
@given(world=st.integers(1, 6), per=st.integers(1, 6), extra=st.integers(0, 3), data=st.data())
def test_placement_properties(world, per, extra, data):
    num_experts = world * per
    extra = min(extra, num_experts - per)
    load = data.draw(st.lists(st.one_of(st.floats(0, 1e4), st.integers(0, 50).map(float)),
                              min_size=num_experts, max_size=num_experts))
    p = eplb_placement(load, world, per + extra)
    assert p.world == world and all(len(s) == per + extra for s in p.slots)
    assert all(len(set(s)) == len(s) for s in p.slots)  # no expert twice on a rank
    reps = p.replicas()
    assert all(len(reps[e]) >= 1 for e in range(num_experts))
    # every slot holds an active replica or a spare copy (one that takes no tokens)
    assert sorted([x for r in reps.values() for x in r] + list(p.spare)) == list(range(world * (per + extra)))
    plain = contiguous_slots(num_experts, world).rank_loads(load)
    got = p.rank_loads(load)
    assert sum(got) == pytest.approx(sum(load))  # replicas split an expert's load, they do not add to it
    assert max(got) <= max(plain) * (1 + 1e-9) + 1e-9


def test_a_hot_expert_gets_replicas_and_the_imbalance_falls():
    rng = random.Random(fresh_seed())
    world, per = 4, 4
    load = [rng.uniform(1, 2) for _ in range(world * per)]
    hot = rng.randrange(world * per)
    load[hot] = 20.0  # most of one rank's load in one expert
    p = eplb_placement(load, world, per + 1)
    assert len(p.replicas()[hot]) >= 3
    before = imbalance(contiguous_slots(world * per, world).rank_loads(load))
    after = imbalance(p.rank_loads(load))
    assert before > 1.5 and after < 1.2, (before, after)


@pytest.mark.parametrize("load,world,slots,what", [([1.0] * 8, 2, 3, "cannot hold"), ([1.0] * 4, 2, 5, "twice"),
                                                   ([1.0, float("nan")], 2, 1, "finite"), ([1.0] * 4, 0, 2, ">= 1")])
def test_bad_input_is_one_clear_error(load, world, slots, what):
    with pytest.raises(ValueError, match=what):
        eplb_placement(load, world, slots)


def test_replica_routing_sends_each_token_to_one_replica_and_splits_evenly():
    import torch
    from tensorrt_llm_dwdp.moe.replicas import ReplicaRouting
    rng = random.Random(fresh_seed())
    world, per = 3, 3
    load = [rng.uniform(0.5, 1.0) for _ in range(world * per)]
    load[rng.randrange(world * per)] = 10.0
    p = eplb_placement(load, world, per + 2)
    reps = p.replicas()
    tokens = rng.randint(30, 90)
    ids = torch.stack([torch.randperm(world * per)[:2] for _ in range(tokens)])
    slot_of = {s: e for e, ss in reps.items() for s in ss}
    for rank in range(world):
        got = ReplicaRouting(reps, rank, torch.device("cpu"))(ids)
        assert all(slot_of[int(s)] == int(e) for s, e in zip(got.flatten(), ids.flatten()))  # a replica of its expert
        for e, ss in reps.items():
            hits = [int((got == s).sum()) for s in ss]
            assert max(hits) - min(hits) <= 1, (e, hits)  # round robin over the replicas


def _rank_loads(load, slots):
    """Each rank's load, written out: an expert's load splits evenly over its active (non-spare) replicas."""
    count = [sum((e, False) in s for s in slots) for e in range(len(load))]
    return [sum(load[e] / count[e] for e, spare in s if not spare) for s in slots]


def _fill_by_definition(load, base, slots_per_rank):
    """Plain DEP's slots with each free slot given the (rank, expert) whose replica leaves the busiest rank
    least busy (first in rank, then expert order), or a spare copy (the lowest expert the rank lacks) where
    every replica makes it busier."""
    slots = [list(s) for s in base]
    while any(len(s) < slots_per_rank for s in slots):
        loads = _rank_loads(load, slots)
        count = [sum((e, False) in s for s in slots) for e in range(len(load))]
        best = None
        for r, mine in enumerate(slots):
            if len(mine) == slots_per_rank:
                continue
            for e in range(len(load)):
                if e in {x for x, _ in mine}:
                    continue
                share = load[e] / (count[e] + 1)
                drop = load[e] / count[e] - share
                peak = max(loads[q] + (share if q == r else -drop if (e, False) in slots[q] else 0.0)
                           for q in range(len(slots)))
                if best is None or peak < best[0]:
                    best = (peak, r, e)
        _, r, e = best
        spare = next(x for x in range(len(load)) if x not in {y for y, _ in slots[r]})
        slots[r].append((e, False) if best[0] <= max(loads) else (spare, True))
    return slots


@settings(max_examples=200, deadline=None)
@given(world=st.integers(1, 6), per=st.integers(1, 6), extra=st.integers(0, 3), data=st.data())
def test_eplb_is_no_worse_than_the_filled_contiguous_placement(world, per, extra, data):
    """EPLB keeps the better of DeepSeek's greedy and plain DEP's slots filled by the rule above: its busiest
    rank carries no more than that rule's, computed here from its definition."""
    num_experts = world * per
    extra = min(extra, num_experts - per)
    load = data.draw(st.lists(st.one_of(st.floats(0, 1e4), st.integers(0, 5).map(float)),
                              min_size=num_experts, max_size=num_experts))
    base = [[(e, False) for e in s] for s in contiguous_slots(num_experts, world).slots]
    want = _fill_by_definition(load, base, per + extra)
    assert fill_slots(load, base, per + extra) == want  # the fill step itself, slot for slot
    ref = max(_rank_loads(load, want))
    assert max(eplb_placement(load, world, per + extra).rank_loads(load)) <= ref * (1 + 1e-9) + 1e-9
