"""TensorRT-LLM expert layouts <-> our shard layout, against references built tensor by tensor."""

import pytest
import torch
import torch.nn.functional as F

from conftest import fresh_seed
from tensorrt_llm_dwdp.integrations.trtllm.layouts import (checkpoint_to_shard, from_shard, stored_weight_loader,
                                                           to_shard)
from tensorrt_llm_dwdp.layout import swiglu_expert_specs
from tensorrt_llm_dwdp.moe import ExpertWeights, moe_experts

SHAPES = [(3, 16, 8), (2, 256, 128), (1, 24, 40)]


def _experts(n, h, i, g, dtype=torch.float32):
    return [{"w1": torch.randn(i, h, generator=g).to(dtype), "w3": torch.randn(i, h, generator=g).to(dtype),
             "w2": torch.randn(h, i, generator=g).to(dtype)} for _ in range(n)]


def _bits(t):
    return t.contiguous().view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("n,h,i", SHAPES)
def test_w3_w1_layout_gate_rows_first_in_ours(n, h, i):
    g = torch.Generator().manual_seed(fresh_seed())
    ex = _experts(n, h, i, g)
    w3_w1 = torch.stack([torch.cat([e["w3"], e["w1"]]) for e in ex])  # TensorRT-LLM: up rows first
    w2 = torch.stack([e["w2"] for e in ex])
    shard = to_shard("w3_w1", w3_w1, w2)
    for k, e in enumerate(ex):
        assert torch.equal(shard["w13"][k, :i], e["w1"]) and torch.equal(shard["w13"][k, i:], e["w3"])
        assert torch.equal(shard["w2"][k], e["w2"])
    back = from_shard("w3_w1", shard)
    assert _same(back["w3_w1_weight"], w3_w1) and _same(back["w2_weight"], w2)


@pytest.mark.parametrize("n,h,i", SHAPES)
def test_triton_layout_interleaved_and_transposed(n, h, i):
    g = torch.Generator().manual_seed(fresh_seed())
    ex = _experts(n, h, i, g, torch.bfloat16)
    fused = torch.empty(n, h, 2 * i, dtype=torch.bfloat16)
    for k, e in enumerate(ex):  # column 2j = gate row j, column 2j+1 = up row j (shuffle_weight_for_activation_kernel)
        for j in range(i):
            fused[k, :, 2 * j], fused[k, :, 2 * j + 1] = e["w1"][j], e["w3"][j]
    w2 = torch.stack([e["w2"].t() for e in ex])  # [n, I, H]
    strided = fused.transpose(1, 2).contiguous().transpose(1, 2)  # update_weight_stride: stride(-2) == 1
    shard = to_shard("triton", strided, w2)
    for k, e in enumerate(ex):
        assert torch.equal(shard["w13"][k], torch.cat([e["w1"], e["w3"]])) and torch.equal(shard["w2"][k], e["w2"])
    back = from_shard("triton", shard)
    assert _same(back["w3_w1_weight"], fused) and _same(back["w2_weight"], w2)


def test_fp8_block_scales_follow_their_rows():
    g = torch.Generator().manual_seed(fresh_seed())
    n, h, i = 2, 256, 384
    ex = _experts(n, h, i, g, torch.float8_e4m3fn)
    sc = [{k: torch.rand(r // 128, c // 128, generator=g) + 0.1 for k, (r, c) in
           {"w1": (i, h), "w3": (i, h), "w2": (h, i)}.items()} for _ in range(n)]
    w3_w1 = torch.stack([torch.cat([e["w3"], e["w1"]]) for e in ex])
    s3_s1 = torch.stack([torch.cat([s["w3"], s["w1"]]) for s in sc])  # w3 block rows first
    w2, s2 = torch.stack([e["w2"] for e in ex]), torch.stack([s["w2"] for s in sc])
    shard = to_shard("w3_w1", w3_w1, w2, s3_s1, s2)
    specs = {s.name: s for s in swiglu_expert_specs(h, i, "float8_e4m3fn")}
    for name, spec in specs.items():  # what the shard layout expects (the scales, where it has them)
        assert tuple(shard[name].shape[1:]) == spec.shape and str(shard[name].dtype) == f"torch.{spec.dtype}"
    for k in range(n):
        assert _same(shard["w13"][k], torch.cat([ex[k]["w1"], ex[k]["w3"]]))
        assert torch.equal(shard["w13_scale"][k], torch.cat([sc[k]["w1"], sc[k]["w3"]]))
        assert torch.equal(shard["w2_scale"][k], sc[k]["w2"])
    back = from_shard("w3_w1", shard)
    assert _same(back["w3_w1_weight"], w3_w1) and _same(back["w3_w1_weight_scaling_factor"], s3_s1)
    assert _same(back["w2_weight"], w2) and _same(back["w2_weight_scaling_factor"], s2)


def test_checkpoint_tensors_to_shard():
    g = torch.Generator().manual_seed(fresh_seed())
    ex = _experts(4, 256, 128, g)
    tensors = {f"{e}.{w}.weight": t[w] for e, t in enumerate(ex) for w in ("w1", "w3", "w2")}
    tensors.update({f"{e}.{w}.weight_scale_inv": torch.rand(2, 2, generator=g) for e in range(4) for w in ("w1", "w3")})
    tensors.update({f"{e}.w2.weight_scale_inv": torch.rand(2, 1, generator=g) for e in range(4)})
    shard = checkpoint_to_shard(tensors, [3, 1])
    assert torch.equal(shard["w13"][0], torch.cat([ex[3]["w1"], ex[3]["w3"]]))
    assert torch.equal(shard["w2"][1], ex[1]["w2"])
    s1, s3 = tensors["1.w1.weight_scale_inv"], tensors["1.w3.weight_scale_inv"]
    assert torch.equal(shard["w13_scale"][1], torch.cat([s1, s3]))
    with pytest.raises(KeyError, match="7.w1.weight"):
        checkpoint_to_shard(tensors, [7])


def test_converted_weights_compute_what_tensorrt_llm_computes():
    """TensorRT-LLM's SwiGLU reads w3_w1 as (up, gate); ours after conversion gives the same MoE output."""
    g = torch.Generator().manual_seed(fresh_seed())
    n, h, i, t, k = 5, 16, 12, 9, 2
    w3_w1, w2 = torch.randn(n, 2 * i, h, generator=g), torch.randn(n, h, i, generator=g)
    x = torch.randn(t, h, generator=g)
    ids = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(t)])
    p = torch.softmax(torch.randn(t, k, generator=g), -1)
    want = torch.zeros(t, h, dtype=torch.float64)  # float64: the float32 result may sum in any order
    for r in range(t):
        for j in range(k):
            up, gate = (w3_w1[ids[r, j]].double() @ x[r].double()).chunk(2)  # fc1 output: w3 half first
            want[r] += p[r, j].double() * (w2[ids[r, j]].double() @ (F.silu(gate) * up))
    shard = to_shard("w3_w1", w3_w1, w2)
    got = moe_experts(x, ids, p, ExpertWeights.from_tensors(shard))
    assert (got.double() - want).norm() / want.norm() < 1e-5


def test_module_loader_reads_local_rows_as_stored_and_rejects_foreign_experts():
    g = torch.Generator().manual_seed(fresh_seed())

    class Holder:
        w3_w1_weight = torch.randn(3, 8, 4, generator=g)
        w2_weight = torch.randn(3, 4, 4, generator=g)

    load = stored_weight_loader([Holder], [(6, 7, 8)])  # EP rank 2 of 3 experts each
    got = load(0, [8, 6])  # TensorRT-LLM's tensors as stored (up rows first): the shard is declared UP_GATE
    assert torch.equal(got["w13"], Holder.w3_w1_weight[[2, 0]]) and torch.equal(got["w2"], Holder.w2_weight[[2, 0]])
    with pytest.raises(ValueError, match="not loaded on this rank"):
        load(0, [5])


def test_bad_layout_and_unpaired_scales():
    w = torch.zeros(1, 4, 2)
    with pytest.raises(ValueError, match="unknown"):
        to_shard("shuffled", w, w)
    with pytest.raises(ValueError, match="pairs"):
        to_shard("w3_w1", w, torch.zeros(1, 2, 2), torch.ones(1, 2, 1))
