"""Copy plans against an independent byte-level model: simulate the copies and compare."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorrt_llm_dwdp.layout import BlockLayout, ShardLayout, swiglu_expert_specs
from tensorrt_llm_dwdp.placement import even_placement, fetch_plan, redundant_placement
from tensorrt_llm_dwdp.prefetch.plan import build_layer_plan


def _setup(num_experts, group_size, per_rank, layers, hidden, inter, dtype):
    p = (redundant_placement(num_experts, group_size, per_rank) if per_rank
         else even_placement(num_experts, group_size))
    specs = swiglu_expert_specs(hidden, inter, dtype)
    layouts = [ShardLayout(BlockLayout(specs, len(p.local_experts(r))), layers) for r in range(group_size)]
    return p, specs, layouts


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 24), st.integers(2, 6), st.integers(1, 3), st.sampled_from([4096, 8192, 65536]),
       st.sampled_from(["float32", "bfloat16", "float8_e4m3fn"]), st.data())
def test_plan_copies_exactly_the_missing_experts(num_experts, group_size, layers, slice_bytes, dtype, data):
    redundant = data.draw(st.booleans())
    per_rank = data.draw(st.integers(-(-num_experts // group_size), num_experts)) if redundant else None
    fp8 = dtype == "float8_e4m3fn"  # block scales ride along: sizes in 128 blocks
    hidden, inter = data.draw(st.sampled_from([(128, 128), (256, 128)] if fp8 else [(64, 32), (48, 40), (128, 96)]))
    p, specs, layouts = _setup(num_experts, group_size, per_rank, layers, hidden, inter, dtype)
    rank, layer = data.draw(st.integers(0, group_size - 1)), data.draw(st.integers(0, layers - 1))
    fp = fetch_plan(p, rank, layer)
    slot_block = BlockLayout(specs, len(fp.pulls))
    rows = [p.index_in_rank(r) for r in range(group_size)]
    plan = build_layer_plan(fp, layer, layouts, rows, slot_block, slice_bytes)

    # Fill each peer's shard with a code for (layer, expert, tensor, element); run the slices.
    g = torch.Generator().manual_seed(num_experts * 7919 + group_size)
    truth = {}  # (layer, expert, name) -> tensor
    shards = []
    for r in range(group_size):
        buf = torch.zeros(layouts[r].nbytes, dtype=torch.uint8)
        for lyr in range(layers):
            views = layouts[r].block.views(buf, layouts[r].layer_offset(lyr))
            for row, e in enumerate(p.local_experts(r)):
                for s in specs:
                    key = (lyr, e, s.name)
                    if key not in truth:
                        truth[key] = torch.randn(*s.shape, generator=g).to(views[s.name].dtype)
                    views[s.name][row] = truth[key]
        shards.append(buf)
    slot = torch.full((slot_block.nbytes,), 0xAB, dtype=torch.uint8)  # poisoned
    written = torch.zeros(slot_block.nbytes, dtype=torch.int32)
    for s in plan.slices:
        assert 0 < s.nbytes <= slice_bytes and s.source != rank
        slot[s.dst_offset:s.dst_offset + s.nbytes] = shards[s.source][s.src_offset:s.src_offset + s.nbytes]
        written[s.dst_offset:s.dst_offset + s.nbytes] += 1
    assert int(written.max()) <= 1  # no byte written twice
    assert plan.nbytes == len(fp.pulls) * sum(s.nbytes for s in specs)
    views = slot_block.views(slot)
    for pull in fp.pulls:
        for s in specs:
            assert torch.equal(views[s.name][pull.slot_row].view(torch.uint8),
                               truth[(layer, pull.expert, s.name)].view(torch.uint8))


def test_round_robin_interleaves_and_staggers():
    p, specs, layouts = _setup(8, 4, None, 1, 64, 64, "float32")  # 2 experts per rank, 16 KiB per w13
    rows = [p.index_in_rank(r) for r in range(4)]
    firsts = []
    for rank in range(4):
        fp = fetch_plan(p, rank, 0)
        plan = build_layer_plan(fp, 0, layouts, rows, BlockLayout(specs, len(fp.pulls)), 4096)
        order = [s.source for s in plan.slices]
        firsts.append(order[0])
        # consecutive slices come from different peers while more than one peer has slices left
        head = order[:3 * (len(order) // 3)]
        assert all(a != b for a, b in zip(head, head[1:]))
    assert firsts == [1, 2, 3, 0]  # each rank starts at the next rank: no two start on one owner


@pytest.mark.gpu
def test_native_plan_graph_launch_copies_current_source():
    """The C++ plan's own graph: one launch per slot copies every slice; a replay reads the source as it
    is then; a slot that was never captured is refused."""
    try:
        from tensorrt_llm_dwdp import _C
    except ImportError as e:
        pytest.skip(f"no _C extension: {e}")
    g = torch.Generator(device="cuda").manual_seed(7)
    src = torch.randint(0, 256, (5 << 20,), dtype=torch.uint8, device="cuda", generator=g)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    chunk = 512 << 10
    triples = [(src.data_ptr() + i * chunk, j * chunk, chunk) for j, i in enumerate(perm)]  # shuffled slices
    plan = _C.CopyPlan(triples)
    slots = [torch.zeros(5 << 20, dtype=torch.uint8, device="cuda") for _ in range(2)]
    for slot in slots:
        plan.capture(slot.data_ptr())
    stream = torch.cuda.Stream()
    for round_ in range(2):
        for slot in slots:
            slot.fill_(0xAB)
        stream.wait_stream(torch.cuda.current_stream())
        for slot in slots:
            plan.launch(slot.data_ptr(), stream.cuda_stream)
        stream.synchronize()
        want = torch.cat([src[i * chunk:(i + 1) * chunk] for i in perm])
        for slot in slots:
            assert torch.equal(slot, want)
        src.random_(0, 256, generator=g)  # the next launch must see the new contents
    with pytest.raises(RuntimeError):
        plan.launch(src.data_ptr(), stream.cuda_stream)
