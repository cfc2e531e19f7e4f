from hypothesis import given, settings
from hypothesis import strategies as st

from tensorrt_llm_dwdp.config import DwdpConfig
from tensorrt_llm_dwdp.placement import (Placement, even_placement, fetch_plan, placement_from_config,
                                         redundant_placement)


def _check_plan(p: Placement, rank: int, layer: int):
    plan = fetch_plan(p, rank, layer)
    pulled = [x.expert for x in plan.pulls]
    assert sorted(pulled) == sorted(set(range(p.num_experts)) - set(p.local_experts(rank)))  # each missing once
    assert len(pulled) == len(set(pulled))
    for x in plan.pulls:
        assert x.source != rank and x.expert in p.local_experts(x.source)
    assert [x.slot_row for x in plan.pulls] == list(range(len(plan.pulls)))
    return plan


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 16), st.data())
def test_even_and_uneven(num_experts, group_size, data):
    p = even_placement(num_experts, group_size)
    sizes = [len(r) for r in p.ranks]
    assert sum(sizes) == num_experts and max(sizes) - min(sizes) <= 1  # disjoint, balanced
    rank = data.draw(st.integers(0, group_size - 1))
    _check_plan(p, rank, data.draw(st.integers(0, 60)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(1, 12), st.data())
def test_redundant(num_experts, group_size, data):
    lo = -(-num_experts // group_size)
    k = data.draw(st.integers(lo, num_experts))
    p = redundant_placement(num_experts, group_size, k)
    assert all(len(r) == k for r in p.ranks)
    rank = data.draw(st.integers(0, group_size - 1))
    _check_plan(p, rank, data.draw(st.integers(0, 60)))


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 64), st.data())
def test_random_explicit_with_multi_owner_spread(num_experts, data):
    group_size = data.draw(st.integers(2, min(8, num_experts)))
    owners = [data.draw(st.sets(st.integers(0, group_size - 1), min_size=1, max_size=group_size))
              for _ in range(num_experts)]
    for r in range(group_size):  # every rank holds part of the experts
        owners[r].add(r)
    ranks = tuple(tuple(e for e in range(num_experts) if r in owners[e]) for r in range(group_size))
    p = placement_from_config(DwdpConfig(group_size=group_size, num_experts=num_experts, placement=ranks))
    rank = data.draw(st.integers(0, group_size - 1))
    plan = _check_plan(p, rank, data.draw(st.integers(0, 60)))
    # Spreading never does worse than sending every choice to the lowest owner.
    naive = {}
    for e in p.missing_experts(rank):
        src = min(o for o in p.owners(e) if o != rank)
        naive[src] = naive.get(src, 0) + 1
    assert max(plan.pulls_per_source().values(), default=0) <= max(naive.values(), default=0)


def test_two_owners_split_evenly():
    # Every expert 0..7 is owned by ranks 1 and 2; rank 0 owns 8..9 and must pull 0..7.
    p = Placement(10, ((8, 9), tuple(range(8)), tuple(range(8))))
    assert fetch_plan(p, 0).pulls_per_source() == {1: 4, 2: 4}


def test_stagger_differs_across_layers():
    p = Placement(4, ((0, 1), (0, 1), (2, 3)))
    firsts = {fetch_plan(p, 2, layer).pulls[0].source for layer in range(4)}
    assert firsts == {0, 1}
