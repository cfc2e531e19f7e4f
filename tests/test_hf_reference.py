"""Checkpoints compute what their models compute: logits of `load_hf` + Decoder against Hugging Face
transformers' own model classes (the models' reference code), float32 on CPU.

Each case builds a tiny random model with transformers, randomises every weight (norms and the routing
correction bias included, so none is left at its initial value), writes it with save_pretrained, and loads it
with load_hf, once with config.json as transformers 5 writes it and once rewritten in the Hub's format (as the
models' own code reads it). Packed sequences of different lengths (one of a single token) go through the
Decoder; each sequence alone goes through transformers' forward.

Where transformers differs from DeepSeek's own modeling code, the decoder follows DeepSeek's (hf_config.py);
the cases stay where both agree:
- DeepSeek-V2: transformers ignores norm_topk_prob and always scales by routed_scaling_factor; DeepSeek-V2's gate
  renormalises (and does not scale) when norm_topk_prob and top_k > 1. The V2 cases use norm_topk_prob false, as
  the published V2 and V2-Lite configs do.
- DeepSeek-V2/V3 with top_k 1: transformers renormalises, DeepSeek's code does not (no case uses top_k 1).
- YaRN: with only one of mscale / mscale_all_dim set, transformers' cos/sin factor differs from DeepSeek's
  mscale(factor, mscale) / mscale(factor, mscale_all_dim); the cases set both, to values that differ.
- noaux_tc: experts outside the kept groups are masked with -inf by transformers, DeepSeek's inference code and
  the decoder; the modeling_deepseek.py published with the DeepSeek-V3 weights masks them with 0.0, which picks
  a masked expert only where a kept one's biased score is negative (the decoder keeps -inf).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, fresh_seed

transformers = pytest.importorskip("transformers", reason="transformers (a test-only dependency) is not installed")
pytest.importorskip("safetensors")

from tensorrt_llm_dwdp.moe.ops import dequantize_blocks, quantize_weight_blocks  # noqa: E402
from tensorrt_llm_dwdp.runtime.checkpoint import load_hf  # noqa: E402

TOLERANCE = 1e-5  # relative L2 of the logits, float32
SEQ_LENS = [7, 1, 12, 4]
YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8, "rope_theta": 10000.0}
_DS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
           first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
           num_experts_per_tok=3, n_shared_experts=1, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=16,
           v_head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=2560)
CASES = {
    "qwen3_moe-mlp_only_layers": ("Qwen3Moe", dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, mlp_only_layers=[0, 2], rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        rms_norm_eps=1e-5)),
    "qwen3_moe-decoder_sparse_step": ("Qwen3Moe", dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=False, decoder_sparse_step=2, rms_norm_eps=1e-6)),
    "qwen3_moe-yarn": ("Qwen3Moe", dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, rms_norm_eps=1e-6, max_position_embeddings=256, rope_parameters={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0})),
    "deepseek_v2-group_limited_greedy": ("DeepseekV2", dict(
        _DS, topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5,
        norm_topk_prob=False, q_lora_rank=None)),
    "deepseek_v2-greedy-yarn": ("DeepseekV2", dict(
        _DS, topk_method="greedy", routed_scaling_factor=2.0, norm_topk_prob=False, q_lora_rank=24,
        rope_parameters=YARN)),
    "deepseek_v3-noaux_tc-yarn": ("DeepseekV3", dict(
        _DS, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=24,
        rope_interleave=True, rope_parameters=YARN)),
    "deepseek_v3-not-interleaved": ("DeepseekV3", dict(
        _DS, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=False, q_lora_rank=24,
        rope_interleave=False)),
}


def build_reference(family: str, kwargs: dict, seed: int):
    """transformers' model of `family` with every weight drawn from `seed`: N(0, 1/fan_in) matrices, norms
    around 1, a routing correction bias of either sign."""
    config = getattr(transformers, f"{family}Config")(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, f"{family}ForCausalLM")(config).float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
    return model


def hub_format(cfg: dict) -> dict:
    """config.json as the models' own code writes it: rope_theta + rope_scaling, num_experts (Qwen3-MoE),
    topk_method / scoring_func spelled out for DeepSeek, no transformers-only keys."""
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    kind = rope.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else dict(rope, type=kind)
    cfg.pop("transformers_version", None)
    if cfg["model_type"] == "qwen3_moe":
        cfg["num_experts"] = cfg.pop("num_local_experts")
    else:
        cfg.pop("head_dim"), cfg.pop("qk_head_dim")  # transformers' derived MLA sizes
        assert cfg.pop("rope_interleave", True), "the Hub's DeepSeek code always interleaves"
        v3 = cfg["model_type"] == "deepseek_v3"
        cfg.setdefault("topk_method", "noaux_tc")
        cfg.update(scoring_func="sigmoid" if v3 else "softmax", moe_layer_freq=1)
    return cfg


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def compare(model, path: str, seed: int) -> float:
    ours = load_hf(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, ours.c.vocab, (sum(SEQ_LENS),), generator=g)
    with torch.no_grad():
        got = ours(ids, SEQ_LENS)
        want, start = [], 0
        for n in SEQ_LENS:
            want.append(model(input_ids=ids[None, start:start + n]).logits[0, -1])
            start += n
    err = relative_l2(got, torch.stack(want))
    print(f"{os.path.basename(path)}: relative L2 {err:.2e}")
    return err


@pytest.mark.parametrize("fmt", ["transformers", "hub"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_equal_the_reference(tmp_path, case, fmt):
    family, kwargs = CASES[case]
    if fmt == "hub" and kwargs.get("rope_interleave") is False:
        pytest.skip("the Hub's DeepSeek code has no non-interleaved rotary dims")
    seed = fresh_seed()
    model = build_reference(family, kwargs, seed)
    path = tmp_path / f"{case}-{fmt}"
    model.save_pretrained(str(path))
    cfg = json.loads((path / "config.json").read_text())
    if fmt == "hub":
        (path / "config.json").write_text(json.dumps(hub_format(cfg)))
    if "mlp_only_layers" in kwargs or "decoder_sparse_step" in kwargs:
        ours = load_hf(str(path), dtype=torch.float32)
        assert ours.c.moe_layer_ids == tuple(i for i, layer in enumerate(model.model.layers)
                                             if hasattr(layer.mlp, "experts"))
    assert compare(model, str(path), seed) <= TOLERANCE


def test_fp8_checkpoint_against_the_dequantized_reference(tmp_path):
    """DeepSeek-V3's FP8 format: e4m3 expert (and one dense) weights with weight_scale_inv per 128x128 block.
    The reference is transformers' model of the dequantized weights; the decoder keeps the experts in e4m3."""
    from safetensors.torch import load_file, save_file
    seed = fresh_seed()
    kwargs = dict(_DS, hidden_size=128, moe_intermediate_size=128, intermediate_size=128, num_hidden_layers=2,
                  n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1, norm_topk_prob=True,
                  routed_scaling_factor=2.5, q_lora_rank=32, kv_lora_rank=32, rope_parameters=YARN)
    model = build_reference("DeepseekV3", kwargs, seed)
    src, fp8 = tmp_path / "bf16", tmp_path / "fp8"
    model.save_pretrained(str(src))
    tensors = load_file(str(src / "model.safetensors"))
    dequantized = dict(tensors)
    for name in list(tensors):
        if ".mlp.experts." in name or name == "model.layers.0.mlp.down_proj.weight":
            q, s = quantize_weight_blocks(tensors[name])
            tensors[name], tensors[name + "_scale_inv"] = q, s
            dequantized[name] = dequantize_blocks(q, s)
    os.makedirs(fp8)
    save_file(tensors, str(fp8 / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}
    (fp8 / "config.json").write_text(json.dumps(cfg))
    save_file(dequantized, str(src / "model.safetensors"))
    reference = transformers.DeepseekV3ForCausalLM.from_pretrained(str(src), dtype=torch.float32,
                                                                   attn_implementation="eager").eval()
    assert load_hf(str(fp8), dtype=torch.float32).moe_blocks()[0].w13.dtype == torch.float8_e4m3fn
    assert compare(reference, str(fp8), seed) <= TOLERANCE


def test_deepseek_v2_norm_topk_prob_follows_deepseeks_gate():
    """With norm_topk_prob, DeepSeek-V2's own MoEGate renormalises the top-k weights and leaves out
    routed_scaling_factor; transformers' router ignores norm_topk_prob. Same experts either way: the decoder's
    weights are transformers' divided by their sum (its scale cancels)."""
    from tensorrt_llm_dwdp.moe import DeepSeekV2Routing
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
    config = transformers.DeepseekV2Config(**dict(_DS, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                                  routed_scaling_factor=3.0, norm_topk_prob=True))
    g = torch.Generator().manual_seed(fresh_seed())
    hf = DeepseekV2TopkRouter(config)
    with torch.no_grad():
        hf.weight.normal_(0.0, 1.0, generator=g)
        x = torch.randn(64, config.hidden_size, generator=g)
        _, want_w, want_ids = hf(x)
    got = DeepSeekV2Routing(3, 4, 2, 3.0, renormalize=True)(x @ hf.weight.t(), None)
    want_ids, order = want_ids.sort(-1)
    got_ids, got_order = got.topk_ids.sort(-1)
    assert torch.equal(got_ids, want_ids)
    want = want_w.gather(1, order)
    torch.testing.assert_close(got.topk_weights.gather(1, got_order), want / want.sum(-1, keepdim=True))


@pytest.mark.mpi
def test_bench_runs_dwdp_and_dep_on_a_checkpoint_written_by_transformers(tmp_path):
    """`trtllm-dwdp bench --checkpoint` reads what transformers wrote (here with a dense layer between MoE layers)
    as load_hf does, and DWDP and DEP run on it."""
    path = tmp_path / "qwen3"
    build_reference("Qwen3Moe", dict(CASES["qwen3_moe-mlp_only_layers"][1], num_hidden_layers=3, mlp_only_layers=[1]),
                    fresh_seed()).save_pretrained(str(path))
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "-m", "tensorrt_llm_dwdp", "bench", "--ranks", "2",
                           "--modes", "dwdp,dep", "--checkpoint", str(path), "--isl", "16", "--requests", "2",
                           "--warmup", "0", "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modes = json.loads(out.read_text())["modes"]
    assert modes["dwdp"]["tokens_per_s_per_gpu"] > 0 and modes["dep"]["tokens_per_s_per_gpu"] > 0
