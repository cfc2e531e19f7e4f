"""Hugging Face safetensors loading, on small checkpoints written here with the real tensor names."""

import dataclasses

import pytest
import torch

from conftest import fresh_seed
from tensorrt_llm_dwdp.runtime import Decoder, preset
from tensorrt_llm_dwdp.runtime.checkpoint import config_from_hf, load_hf, save_hf

pytest.importorskip("safetensors")

DEEPSEEK_CFG = {"model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 3,
                "first_k_dense_replace": 1, "intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 4,
                "moe_intermediate_size": 32, "n_shared_experts": 1, "num_attention_heads": 4, "topk_method": "noaux_tc",
                "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "norm_topk_prob": True, "q_lora_rank": 48,
                "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
                "rope_theta": 10000.0, "rms_norm_eps": 1e-6}
QWEN_CFG = {"model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
            "intermediate_size": 96, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "norm_topk_prob": True, "rope_theta": 1e6,
            "rms_norm_eps": 1e-6}


@pytest.mark.parametrize("hf", [DEEPSEEK_CFG, QWEN_CFG], ids=["deepseek", "qwen3"])
def test_roundtrip_through_hf_names(tmp_path, hf):
    path = str(tmp_path / "ckpt")
    cfg = dataclasses.replace(config_from_hf_dict(tmp_path, hf), name="x")
    src = Decoder.build(cfg, fresh_seed())
    save_hf(src, path, hf)
    from safetensors import safe_open
    with safe_open(f"{path}/model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        last = cfg.layers - 1
        assert f"model.layers.{last}.mlp.experts.3.gate_proj.weight" in keys
        assert tuple(f.get_tensor(f"model.layers.{last}.mlp.experts.3.down_proj.weight").shape) == (64, 32)
    loaded = load_hf(path, dtype=torch.float32)
    assert loaded.c == dataclasses.replace(cfg, name="checkpoint")
    ids = torch.randint(0, cfg.vocab, (13,))
    with torch.no_grad():
        assert torch.equal(loaded(ids, [6, 7]), src(ids, [6, 7]))


def config_from_hf_dict(tmp_path, hf):
    import json
    d = tmp_path / "cfg"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(hf))
    return config_from_hf(str(d))


def test_presets_match_their_hf_configs(tmp_path):
    c = config_from_hf_dict(tmp_path, DEEPSEEK_CFG)
    assert (c.attention, c.routing, c.n_group, c.shared_inter) == ("mla", "deepseek", 4, 32)
    q = config_from_hf_dict(tmp_path, QWEN_CFG)
    assert (q.attention, q.routing, q.kv_heads, q.qk_norm, q.shared_inter) == ("gqa", "softmax", 2, True, 0)
    assert preset("tiny").num_experts == c.num_experts


def test_truncated_load_and_mismatch_errors(tmp_path):
    path = str(tmp_path / "ckpt")
    cfg = config_from_hf_dict(tmp_path, DEEPSEEK_CFG)
    src = Decoder.build(cfg, fresh_seed())
    save_hf(src, path, DEEPSEEK_CFG)
    two = load_hf(path, dtype=torch.float32, num_layers=2)  # layers past 2 in the file are skipped
    assert two.c.layers == 2 and torch.equal(two.layers[1].ffn.w13, src.layers[1].ffn.w13)
    bad = dict(DEEPSEEK_CFG, moe_intermediate_size=48)
    save_hf(src, path, bad)  # config says 48, tensors are 32
    with pytest.raises(ValueError, match="model expects"):
        load_hf(path, dtype=torch.float32)


def test_fp8_checkpoint_keeps_expert_scales_and_dequantizes_the_rest(tmp_path):
    """DeepSeek-V3-style FP8: routed experts are loaded as e4m3 with their weight_scale_inv as stored (bit for bit);
    an FP8 non-expert weight is dequantized with its scales; the loaded model computes what the source does."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tensorrt_llm_dwdp.moe.ops import dequantize_blocks, quantize_weight_blocks
    hf = dict(DEEPSEEK_CFG, hidden_size=256, moe_intermediate_size=128, intermediate_size=256, n_shared_experts=0,
              q_lora_rank=None)
    cfg = dataclasses.replace(config_from_hf_dict(tmp_path, hf), name="x")
    src = Decoder.build(cfg, fresh_seed(), weight_dtype="float8_e4m3fn")
    path = str(tmp_path / "ckpt")
    save_hf(src, path, hf)
    with safe_open(f"{path}/model.safetensors", framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert tensors["model.layers.1.mlp.experts.3.gate_proj.weight"].dtype == torch.float8_e4m3fn
    assert tuple(tensors["model.layers.1.mlp.experts.3.gate_proj.weight_scale_inv"].shape) == (1, 2)
    name = "model.layers.0.mlp.down_proj.weight"  # store one dense weight in FP8, as DeepSeek-V3 does
    q, s = quantize_weight_blocks(tensors[name].float())
    tensors[name], tensors[name + "_scale_inv"] = q, s
    save_file(tensors, f"{path}/model.safetensors")
    loaded = load_hf(path, dtype=torch.float32)
    for a, b in zip(src.moe_blocks(), loaded.moe_blocks()):
        assert torch.equal(a.w13.view(torch.uint8), b.w13.view(torch.uint8)) and torch.equal(a.w2_scale, b.w2_scale)
    assert torch.equal(loaded.layers[0].ffn.w2, dequantize_blocks(q, s))
    src.layers[0].ffn.w2.data.copy_(dequantize_blocks(q, s))
    ids = torch.randint(0, cfg.vocab, (13,))
    with torch.no_grad():
        assert torch.equal(loaded(ids, [6, 7]), src(ids, [6, 7]))


def test_dense_layers_between_moe_layers(tmp_path):
    """Qwen3-MoE: mlp_only_layers and decoder_sparse_step make dense layers between MoE layers; the round trip
    keeps them, and the cost model counts them wherever they sit."""
    from tensorrt_llm_dwdp.sim.models import model_of
    hf = dict(QWEN_CFG, num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    cfg = config_from_hf_dict(tmp_path, hf)
    assert cfg.moe_layer_ids == (1, 5) and model_of(cfg).moe_layers == 2
    src = Decoder.build(cfg, fresh_seed())
    path = str(tmp_path / "ckpt")
    save_hf(src, path, hf)
    loaded = load_hf(path, dtype=torch.float32)
    assert [b.layer_idx for b in loaded.moe_blocks()] == [1, 5]
    ids = torch.randint(0, cfg.vocab, (9,))
    with torch.no_grad():
        assert torch.equal(loaded(ids, [1, 8]), src(ids, [1, 8]))
    assert load_hf(path, dtype=torch.float32, num_layers=3).c.moe_layer_ids == (1,)
    with pytest.raises(ValueError, match="--layers 1"):
        load_hf(path, dtype=torch.float32, num_layers=1)


REFUSED = {  # key: (value, where it goes) -- each refused in one line naming the key and its value
    "model_type": ("mixtral", DEEPSEEK_CFG),
    "vocab_size": (None, DEEPSEEK_CFG),
    "hidden_size": (64.0, QWEN_CFG),
    "num_experts_per_tok": (True, QWEN_CFG),
    "scoring_func": ("softmax", DEEPSEEK_CFG),
    "topk_method": ("greedy", DEEPSEEK_CFG),
    "moe_layer_freq": (2, DEEPSEEK_CFG),
    "rope_scaling": ({"type": "linear", "factor": 4.0}, DEEPSEEK_CFG),
    "rope_parameters": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "mscale_all_dim": 1.0}, QWEN_CFG),
    "hidden_act": ("gelu", QWEN_CFG),
    "tie_word_embeddings": (True, QWEN_CFG),
    "attention_bias": (True, DEEPSEEK_CFG),
    "use_sliding_window": (True, QWEN_CFG),
    "mlp_only_layers": ([0, 7], QWEN_CFG),
    "quantization_config": ({"quant_method": "fp8", "weight_block_size": [64, 64]}, DEEPSEEK_CFG),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_unsupported_configs_are_refused_naming_key_and_value(tmp_path, key):
    from tensorrt_llm_dwdp.runtime.checkpoint import CheckpointError
    value, base = REFUSED[key]
    with pytest.raises(CheckpointError) as e:
        config_from_hf_dict(tmp_path, dict(base, **{key: value}))
    line = str(e.value)
    assert "\n" not in line and "config.json" in line and "Fix:" in line, line
    assert f"{key}=" in line or f"{key}." in line, line


def test_yarn_extra_keys_and_both_rope_fields_are_refused(tmp_path):
    from tensorrt_llm_dwdp.runtime.checkpoint import CheckpointError
    yarn = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
            "mscale_all_dim": 1.0}
    assert config_from_hf_dict(tmp_path, dict(DEEPSEEK_CFG, rope_scaling=yarn)).yarn.factor == 40.0
    with pytest.raises(CheckpointError, match=r"rope_scaling\.attention_factor=1\.5"):
        config_from_hf_dict(tmp_path, dict(DEEPSEEK_CFG, rope_scaling=dict(yarn, attention_factor=1.5)))
    with pytest.raises(CheckpointError, match="rope_scaling="):
        config_from_hf_dict(tmp_path, dict(DEEPSEEK_CFG, rope_scaling=yarn, rope_parameters={"rope_type": "default"}))


# The published config.json files (huggingface.co/<repo>/config.json, the Hub's format), keys as published.
PUBLISHED = {
    "deepseek-v3": {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
        "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [128, 128]},
        "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                                "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                                "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
        "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280},
    "deepseek-v2-lite": {
        "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
        "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
        "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
        "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": None,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
        "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 102400},
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
        "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
}
SHAPES = ("vocab", "hidden", "layers", "first_k_dense", "dense_inter", "num_experts", "top_k", "moe_inter",
          "shared_inter", "attention", "heads", "n_group", "topk_group", "routed_scaling", "kv_heads", "head_dim",
          "q_lora_rank", "kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim", "rope_theta")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_are_read_with_the_presets_shapes(tmp_path, name):
    """The published checkpoints' config.json files parse, with the shapes of the preset of the same name and
    each family's rope and routing (YaRN and interleaved pairs for DeepSeek, V2-Lite's greedy softmax)."""
    from tensorrt_llm_dwdp.runtime.model_config import PRESETS
    c, p = config_from_hf_dict(tmp_path, PUBLISHED[name]), PRESETS.get(name) or preset("deepseek-v3-layers")
    assert {f: getattr(c, f) for f in SHAPES} == {f: getattr(p, f) for f in SHAPES}
    if name.startswith("deepseek"):
        assert c.rope_interleave and c.yarn.factor == 40 and c.yarn.original_max_position_embeddings == 4096
        assert c.yarn.rotary_scale == 1.0 and c.yarn.softmax_scale > 1.0  # mscale == mscale_all_dim
    assert c.routing == {"deepseek-v3": "deepseek", "deepseek-v2-lite": "deepseek_v2"}.get(name, "softmax")
    assert c.renormalize == (name != "deepseek-v2-lite")
