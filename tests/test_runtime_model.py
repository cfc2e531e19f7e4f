"""The compact decoder: attention against float64 loops, packing, causality, presets, apply_dwdp."""

import dataclasses
import os
import subprocess

import pytest
import torch

from conftest import ROOT, fresh_seed
from tensorrt_llm_dwdp.runtime import Decoder, preset
from tensorrt_llm_dwdp.runtime.attention import causal_attention


def _gqa_small():
    return dataclasses.replace(preset("qwen3-30b-a3b"), hidden=64, heads=4, kv_heads=2, head_dim=16, num_experts=8,
                               moe_inter=32, layers=2, vocab=100)


def test_causal_attention_matches_float64_loops():
    g = torch.Generator().manual_seed(fresh_seed())
    lens = [5, 1, 9]
    t, h, dqk, dv = sum(lens), 3, 12, 7
    q, k, v = (torch.randn(t, h, d, generator=g) for d in (dqk, dqk, dv))
    out = causal_attention(q, k, v, lens, 0.3).view(t, h, dv)
    start = 0
    for n in lens:
        for i in range(n):
            for head in range(h):
                s = [0.3 * float(q[start + i, head].double() @ k[start + j, head].double()) for j in range(i + 1)]
                m = max(s)
                w = torch.tensor([pow(2.718281828459045, x - m) for x in s], dtype=torch.float64)
                want = (w[:, None] * v[start:start + i + 1, head].double()).sum(0) / w.sum()
                assert torch.allclose(out[start + i, head].double(), want, atol=1e-5)
        start += n


@pytest.mark.parametrize("cfg", [preset("tiny"), _gqa_small()], ids=["mla", "gqa"])
def test_packed_prefill_equals_separate_prefills_and_is_causal(cfg):
    model = Decoder(cfg).init_random(fresh_seed())
    g = torch.Generator().manual_seed(fresh_seed())
    ids = torch.randint(0, cfg.vocab, (23,), generator=g)
    with torch.no_grad():
        packed = model(ids, [10, 13])
        a, b = model(ids[:10], [10]), model(ids[10:], [13])
        assert torch.allclose(packed, torch.cat([a, b]), atol=1e-5)
        changed = ids.clone()
        changed[-1] = (changed[-1] + 1) % cfg.vocab
        again = model(changed, [10, 13])
    # The first sequence never sees the second: only rounding from a different expert batching may differ.
    assert torch.allclose(again[0], packed[0], atol=1e-5)
    assert (again[1] - packed[1]).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", [preset("tiny"), _gqa_small()], ids=["mla", "gqa"])
def test_lazy_experts_are_the_full_builds_rows_and_the_rest_is_equal(cfg):
    seed = fresh_seed()
    full, lazy = Decoder.build(cfg, seed), Decoder.build(cfg, seed, lazy_experts=True)
    lazy_params = dict(lazy.named_parameters())
    for name, p in full.named_parameters():  # everything but the expert stacks is made identically
        if lazy_params[name].numel():
            assert torch.equal(p, lazy_params[name]), name
    g = torch.Generator().manual_seed(fresh_seed())
    for fb, lb in zip(full.moe_blocks(), lazy.moe_blocks()):
        assert lb.w13.numel() == 0 and lb.w2.numel() == 0  # never made whole
        pick = torch.randperm(cfg.num_experts, generator=g)[:3].tolist()
        t = lb.expert_tensors(pick)
        w13, w2 = t["w13"], t["w2"]
        assert torch.equal(w13, fb.w13.detach()[pick]) and torch.equal(w2, fb.w2.detach()[pick])
        assert w13.std() > 0.5 / cfg.hidden ** 0.5  # real draws, not zeros
    with pytest.raises(RuntimeError, match="apply_dwdp or apply_dep"):
        lazy(torch.zeros(3, dtype=torch.long), [3])


def test_presets_and_errors():
    v3 = preset("deepseek-v3-layers", num_layers=5)
    assert v3.layers == 5 and v3.first_k_dense == 3 and v3.moe_layer_ids == (3, 4)
    assert preset("deepseek-v3-layers", num_layers=2).first_k_dense == 1
    with pytest.raises(ValueError, match="unknown"):
        preset("llama")
    with pytest.raises(ValueError, match="n_group"):
        dataclasses.replace(preset("tiny"), n_group=3)


def _mpi_script(name, *args, ranks=4):
    from tensorrt_llm_dwdp.commands.mpirun import clean_launch_env, mpirun_command
    cmd = mpirun_command(ranks, [os.path.join(ROOT, "tests", name), str(fresh_seed()), *args], {"OMP_NUM_THREADS": "1"})
    return subprocess.run(cmd, env=dict(clean_launch_env(dict(os.environ)), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.mpi
def test_apply_dwdp_matches_the_local_model_on_four_ranks():
    proc = _mpi_script("mpi_apply_dwdp.py")
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("model", [[], ["dense-between-moe"]], ids=["tiny", "dense-between-moe"])
def test_local_dwdp_and_dep_agree_with_an_idle_rank(model):
    proc = _mpi_script("mpi_modes_equal.py", *model)
    assert proc.returncode == 0 and "modes agree" in proc.stdout, proc.stdout + proc.stderr
    assert "rank 1: 0 sequences" in proc.stdout and "max |dep+eplb - local|" in proc.stdout


@pytest.mark.parametrize("routing", ["deepseek", "softmax"])
def test_routing_skew_gives_zipf_popularity_on_fresh_logits(routing):
    """The synthetic routers' skew means what the simulator's does: expert shares proportional to 1/(i+1)^s
    over a seeded order per layer, measured on logits the calibration never saw."""
    import random
    from tensorrt_llm_dwdp.moe import DeepSeekV3Routing, SoftmaxTopKRouting
    from tensorrt_llm_dwdp.runtime.model import zipf_selection_bias
    seed = fresh_seed()
    rng = random.Random(seed)
    cfg = dataclasses.replace(preset("tiny"), routing=routing, num_experts=32, top_k=4, n_group=4, topk_group=2)
    route = DeepSeekV3Routing(4, 4, 2) if routing == "deepseek" else SoftmaxTopKRouting(4)
    skew, layer = rng.choice([0.3, 0.6]), rng.randrange(60)
    bias = zipf_selection_bias(cfg, skew, seed % 1000, layer)
    logits = torch.randn(20000, 32, generator=torch.Generator().manual_seed(seed))
    r = route(logits + bias, torch.zeros(32)) if routing == "softmax" else route(logits, bias)
    share = torch.bincount(r.topk_ids.flatten(), minlength=32).double()
    share = share / share.sum()
    ranked = share.sort(descending=True).values
    want = 1.0 / torch.arange(1, 33, dtype=torch.float64) ** skew
    want = want / want.sum()
    assert float((ranked / want).log().abs().max()) < 0.2, (seed, skew, ranked, want)
    assert torch.equal(bias, zipf_selection_bias(cfg, skew, seed % 1000, layer))  # the same on every rank and mode
    assert not torch.equal(bias, zipf_selection_bias(cfg, skew, seed % 1000, layer + 1))  # hot experts move per layer
    assert float(zipf_selection_bias(cfg, 0.0, 0, layer).abs().max()) == 0.0
