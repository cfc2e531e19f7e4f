"""Routing and the plain-torch experts against the independent float64 per-token reference."""

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.moe import DeepSeekV3Routing, ExpertWeights, SharedExpert, SoftmaxTopKRouting, moe_experts
from tensorrt_llm_dwdp.verify import reference as ref


@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (4, 2), (8, 3)])
def test_deepseek_routing_matches_reference(n_group, topk_group):
    g = torch.Generator().manual_seed(fresh_seed())
    logits, bias = torch.randn(37, 32, generator=g), torch.randn(32, generator=g) * 0.3
    r = DeepSeekV3Routing(top_k=6, n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5)(logits, bias)
    for t in range(logits.shape[0]):
        want = ref.route_token_deepseek(logits[t].double(), bias.double(), 6, n_group, topk_group, 2.5)
        got = dict(zip(r.topk_ids[t].tolist(), r.topk_weights[t].tolist()))
        assert set(got) == {e for e, _ in want}
        for e, w in want:
            assert got[e] == pytest.approx(w, rel=1e-5)


def test_group_limit_excludes_other_groups():
    logits = torch.full((1, 8), -5.0)
    logits[0, 7] = 5.0  # group 1 (experts 4..7) wins on the top-2 sum only with expert 6 too
    logits[0, 6] = 4.0
    logits[0, 0] = 4.5
    r = DeepSeekV3Routing(top_k=2, n_group=2, topk_group=1)(logits, torch.zeros(8))
    assert set(r.topk_ids[0].tolist()) == {6, 7}


def test_bias_selects_but_does_not_weight():
    logits = torch.zeros(1, 4)
    bias = torch.tensor([0.0, 0.0, 1.0, 0.0])
    r = DeepSeekV3Routing(top_k=1, renormalize=False)(logits, bias)
    assert r.topk_ids.item() == 2 and r.topk_weights.item() == pytest.approx(0.5)


@pytest.mark.parametrize("renorm", [True, False])
def test_softmax_routing_matches_reference(renorm):
    g = torch.Generator().manual_seed(fresh_seed())
    logits = torch.randn(29, 16, generator=g)
    r = SoftmaxTopKRouting(top_k=4, renormalize=renorm)(logits)
    for t in range(29):
        want = dict(ref.route_token_softmax(logits[t].double(), 4, renorm))
        got = dict(zip(r.topk_ids[t].tolist(), r.topk_weights[t].tolist()))
        assert set(got) == set(want) and all(got[e] == pytest.approx(want[e], rel=1e-5) for e in want)


@pytest.mark.parametrize("num_tokens", [0, 1, 7, 64])
def test_reference_experts_match_float64_per_token(num_tokens):
    """The plain path on [E, ...] tensors, with idle experts and "no expert" ids (E), against float64 math."""
    g = torch.Generator().manual_seed(fresh_seed())
    E, H, I, K = 12, 32, 24, 3
    w13, w2 = torch.randn(E, 2 * I, H, generator=g) / 6, torch.randn(E, H, I, generator=g) / 5
    sh = (torch.randn(2 * I, H, generator=g) / 6, torch.randn(H, I, generator=g) / 5)
    x = torch.randn(num_tokens, H, generator=g, dtype=torch.float64)
    # Only even experts are routed to, so odd ones get zero tokens; some slots name no expert (E).
    ids = torch.stack([torch.randperm(E // 2, generator=g)[:K] * 2 for _ in range(num_tokens)]) if num_tokens \
        else torch.zeros(0, K, dtype=torch.long)
    if num_tokens:
        ids[torch.rand(num_tokens, K, generator=g) < 0.3] = E
    wts = torch.rand(num_tokens, K, generator=g)
    out = moe_experts(x, ids, wts, ExpertWeights(w13.double(), w2.double()), SharedExpert(sh[0].double(), sh[1].double()))
    assert out.shape == (num_tokens, H)
    for t in range(num_tokens):
        choices = [(e, w) for e, w in zip(ids[t].tolist(), wts[t].double().tolist()) if e < E]
        want = ref.moe_token_f64(x[t], choices, w13.double(), w2.double(), (sh[0].double(), sh[1].double()))
        assert torch.allclose(out[t], want, rtol=1e-10, atol=1e-12)
