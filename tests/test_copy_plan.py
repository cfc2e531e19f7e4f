"""Copy plans against an independent byte-level model: simulate the copies and compare."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorrt_llm_dwdp.layout import CompositeLayout, runs, stacked_views, swiglu_expert_specs
from tensorrt_llm_dwdp.placement import Placement, even_placement, fetch_plan, redundant_placement
from tensorrt_llm_dwdp.prefetch.plan import build_layer_plan


def _layout(p: Placement, hidden, inter, dtype, gran=4096):
    specs = swiglu_expert_specs(hidden, inter, dtype)
    bounds = {b for r in range(p.group_size) for ids in (p.local_experts(r), p.missing_experts(r))
              for f, n in runs(ids) for b in (f, f + n)}
    return CompositeLayout.build(specs, p.num_experts, gran, sorted(bounds))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 24), st.integers(2, 6), st.integers(1, 3), st.sampled_from([4096, 8192, 65536]),
       st.sampled_from(["float32", "bfloat16", "float8_e4m3fn"]), st.data())
def test_plan_copies_exactly_the_missing_experts(num_experts, group_size, layers, slice_bytes, dtype, data):
    """Simulate the copies byte by byte, from owners' shard pieces into a poisoned region, and compare each
    missing expert with the truth; every boundary of every rank must fall on the granularity."""
    redundant = data.draw(st.booleans())
    per_rank = data.draw(st.integers(-(-num_experts // group_size), num_experts)) if redundant else None
    p = redundant_placement(num_experts, group_size, per_rank) if redundant else even_placement(num_experts, group_size)
    fp8 = dtype == "float8_e4m3fn"
    hidden, inter = data.draw(st.sampled_from([(128, 128), (256, 128)] if fp8 else [(64, 32), (48, 40), (128, 96)]))
    layout = _layout(p, hidden, inter, dtype)
    rank, layer = data.draw(st.integers(0, group_size - 1)), data.draw(st.integers(0, layers - 1))
    for r in range(group_size):
        for piece in layout.pieces(p.local_experts(r)) + layout.pieces(p.missing_experts(r)):
            assert piece.offset % layout.granularity == 0 and piece.nbytes % layout.granularity == 0
    locals_ = [p.local_experts(r) for r in range(group_size)]
    fp = fetch_plan(p, rank, layer)
    plan = build_layer_plan(fp, layer, layout, locals_, slice_bytes)

    g = torch.Generator().manual_seed(num_experts * 7919 + group_size)
    truth = {}  # (layer, expert, name) -> tensor
    shards = []  # per rank: its pieces, layer-major as the hooks allocate them
    for r in range(group_size):
        pieces = []
        for lyr in range(layers):
            for piece in layout.pieces(locals_[r]):
                buf = torch.zeros(piece.nbytes, dtype=torch.uint8)
                spec = layout.specs.pooled[layout.index(piece.tensor)]
                stride = layout.stride(piece.tensor)
                for i in range(piece.count):
                    key = (lyr, piece.first + i, piece.tensor)
                    if key not in truth:
                        truth[key] = torch.randn(*spec.shape, generator=g).to(getattr(torch, spec.dtype))
                    buf[i * stride: i * stride + spec.nbytes] = truth[key].view(torch.uint8).reshape(-1)
                pieces.append(buf)
        shards.append(pieces)
    region = torch.full((layout.nbytes,), 0xAB, dtype=torch.uint8)  # poisoned
    written = torch.zeros(layout.nbytes, dtype=torch.int32)
    for s in plan.slices:
        assert 0 < s.nbytes <= slice_bytes and s.source != rank
        region[s.dst_offset:s.dst_offset + s.nbytes] = shards[s.source][s.piece][s.src_offset:s.src_offset + s.nbytes]
        written[s.dst_offset:s.dst_offset + s.nbytes] += 1
    assert int(written.max()) <= 1  # no byte written twice
    assert plan.nbytes == len(fp.pulls) * sum(layout.strides)
    views = stacked_views(region, layout)
    for pull in fp.pulls:
        for spec in layout.specs.pooled:
            assert torch.equal(views[spec.name][pull.expert].view(torch.uint8),
                               truth[(layer, pull.expert, spec.name)].view(torch.uint8))


def test_stride_pads_only_where_boundaries_need_it():
    """2 MiB granularity: DeepSeek-V3's experts (w13 28 x 2 MiB) need no padding; Qwen3-30B-A3B's w2 (1.5 x 2 MiB)
    needs none with runs starting on even experts, and is padded to 2 MiB when a run starts on an odd one."""
    gran = 2 << 20
    ds = _layout(even_placement(256, 8), 7168, 2048, "bfloat16", gran)
    assert ds.padding_bytes_per_expert == 0
    qwen = _layout(even_placement(128, 4), 2048, 768, "bfloat16", gran)
    assert qwen.padding_bytes_per_expert == 0
    odd = _layout(Placement(128, (tuple(range(0, 65)), tuple(range(65, 128)))), 2048, 768, "bfloat16", gran)
    assert odd.stride("w2") == 4 << 20 and odd.padding_bytes_per_expert == (4 << 20) - 2048 * 768 * 2


def test_a_host_that_needs_contiguous_experts_is_refused_a_padded_stride_before_allocating():
    """plan_composite(contiguous=True), as the TensorRT-LLM adapter asks: the odd split above is refused, naming the
    boundary and the run length that would fit; the even split and DeepSeek-V3's experts plan with no padding."""
    from tensorrt_llm_dwdp.config import DwdpConfig, DwdpConfigError
    from tensorrt_llm_dwdp.shard import MoeShape, plan_composite
    gran = 2 << 20
    qwen = MoeShape(2, 2048, 768, 128, (0, 1))
    odd = DwdpConfig(num_experts=128, group_size=2, placement=(tuple(range(0, 65)), tuple(range(65, 128))))
    with pytest.raises(DwdpConfigError, match=r"at \[65\].*multiples of 2 ") as e:
        plan_composite(odd, qwen, 0, gran, contiguous=True)
    assert "\n" not in str(e.value)
    assert plan_composite(odd, qwen, 0, gran).memory.padding_bytes > 0  # kernels of ours read the padded stride
    even = plan_composite(DwdpConfig(num_experts=128, group_size=2), qwen, 1, gran, contiguous=True)
    assert even.layout.padding_bytes_per_expert == 0 and even.memory.padding_bytes == 0
    ds = plan_composite(DwdpConfig(num_experts=256, group_size=8), MoeShape(1, 7168, 2048, 256, (3,)), 5, gran,
                        contiguous=True)
    assert ds.memory.padding_bytes == 0


def test_cpu_ranks_rehearse_a_gpu_granularity(monkeypatch):
    from tensorrt_llm_dwdp.config import DwdpConfigError
    from tensorrt_llm_dwdp.memory import get_backend
    monkeypatch.setenv("DWDP_SHM_GRANULARITY", str(2 << 20))
    assert get_backend("cpu_shm").granularity == 2 << 20
    monkeypatch.setenv("DWDP_SHM_GRANULARITY", "1000")
    with pytest.raises(DwdpConfigError, match="DWDP_SHM_GRANULARITY"):
        get_backend("cpu_shm")

def test_round_robin_interleaves_and_staggers():
    p = even_placement(8, 4)  # 2 experts per rank, 16 KiB per w13
    layout = _layout(p, 64, 64, "float32")
    locals_ = [p.local_experts(r) for r in range(4)]
    firsts = []
    for rank in range(4):
        plan = build_layer_plan(fetch_plan(p, rank, 0), 0, layout, locals_, 4096)
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


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([(7168, 2048), (2048, 768), (1024, 1024), (4096, 1536), (256, 128)]),
       st.sampled_from(["bfloat16", "float8_e4m3fn"]), st.integers(2, 8), st.data())
def test_the_split_a_padding_refusal_names_plans_without_padding(dims, dtype, group_size, data):
    """contiguous=True refuses exactly the placements that pad; splitting at the run length its message names
    then plans with no padding, as the message promises."""
    import re

    from tensorrt_llm_dwdp.config import DwdpConfig, DwdpConfigError
    from tensorrt_llm_dwdp.shard import MoeShape, plan_composite
    hidden, inter = dims
    gran = 2 << 20
    experts = data.draw(st.integers(group_size, 64))
    cuts = sorted(data.draw(st.sets(st.integers(1, experts - 1), min_size=group_size - 1, max_size=group_size - 1)))
    bounds = [0, *cuts, experts]
    cfg = DwdpConfig(num_experts=experts, group_size=group_size, weight_dtype=dtype,
                     placement=tuple(tuple(range(a, b)) for a, b in zip(bounds, bounds[1:])))
    shape = MoeShape(1, hidden, inter, experts)
    padded = plan_composite(cfg, shape, 0, gran).layout.padding_bytes_per_expert > 0
    try:
        plan_composite(cfg, shape, 0, gran, contiguous=True)
        assert not padded
        return
    except DwdpConfigError as e:
        assert padded and "\n" not in str(e)
        if "too small to split" in str(e):
            return
        unit = int(re.search(r"multiples of (\d+)", str(e)).group(1))
        assert unit < experts
    runs_ = -(-experts // unit)  # split at multiples of `unit`, over as many ranks as that gives
    fixed = DwdpConfig(num_experts=experts, group_size=runs_, weight_dtype=dtype,
                       placement=tuple(tuple(range(a, min(a + unit, experts))) for a in range(0, experts, unit)))
    assert plan_composite(fixed, shape, 0, gran, contiguous=True).memory.padding_bytes == 0
