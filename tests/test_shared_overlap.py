"""The shared expert beside the routed experts (moe/overlap.py): MoEBlock's sum is routed + shared (on CPU the two
run one after the other); on GPUs the shared expert runs on the side stream with the sequential result."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.moe import swiglu
from tensorrt_llm_dwdp.moe.overlap import side_stream
from tensorrt_llm_dwdp.runtime import Decoder, preset


def _block_and_input(device, dtype):
    seed = fresh_seed()
    model = Decoder.build(preset("tiny"), seed, device=device, dtype=dtype)
    block = model.moe_blocks()[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(37, model.c.hidden, generator=g).to(device, dtype)
    return block, x


def _separately(block, x):
    """routed + shared, each computed on its own (the shared expert as plain SwiGLU on its weights)."""
    logits = x.float() @ block.gate.float().t()
    r = block.route(logits if block.logit_bias is None else logits + block.logit_bias, block.bias)
    y = block.experts.routed(x, r.topk_ids, r.topk_weights, block.layer_idx)
    return y + swiglu(x, block.shared.w13, block.shared.w2)


def test_moe_block_is_routed_plus_shared_on_cpu():
    block, x = _block_and_input("cpu", torch.float32)
    assert block.shared is not None
    with torch.no_grad():
        got, want = block(x), _separately(block, x)
    assert torch.equal(got, want)
    assert float(want.abs().max()) > 0.1  # not a comparison of near-zeros


@pytest.mark.gpu
def test_shared_expert_runs_on_the_side_stream_with_the_sequential_result():
    device = torch.device("cuda", torch.cuda.current_device())
    block, x = _block_and_input(device, torch.bfloat16)
    streams = []
    forward = block.shared.forward

    def recording(v):
        streams.append(torch.cuda.current_stream(device))
        return forward(v)
    block.shared.forward = recording
    with torch.no_grad():
        got = block(x)
        assert streams == [side_stream(device)] and streams[0] != torch.cuda.current_stream(device)
        want = _separately(block, x)
    torch.cuda.synchronize(device)
    assert torch.equal(got, want)


@pytest.mark.gpu
def test_beside_is_capturable_in_a_cuda_graph():
    """Fork and join are stream waits (no host sync): the pair captures, and a replay gives the eager results."""
    from tensorrt_llm_dwdp.moe.overlap import beside
    device = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator(device=device).manual_seed(fresh_seed())
    a, b = (torch.randn(512, 512, device=device, generator=g) for _ in range(2))

    def step():
        return beside(a, lambda: a @ b, lambda v: torch.tanh(v) @ b.t())
    step()  # eager first: cuBLAS handles and the side stream exist before the capture
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    a.copy_(torch.randn(512, 512, device=device, generator=g))  # new input: the replay must recompute
    want = [a @ b, torch.tanh(a) @ b.t()]
    graph.replay()
    torch.cuda.synchronize(device)
    for got, w in zip(outs, want):
        assert torch.allclose(got, w, rtol=1e-5, atol=1e-4)
