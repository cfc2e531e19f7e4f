"""Load (and write) Hugging Face safetensors checkpoints of DeepSeek-V2/V3/R1 and Qwen3-MoE models.

Reads `config.json` into a ModelConfig (hf_config: the Hub's format and transformers 5's) and maps the
checkpoint's tensor names onto the compact decoder: per-expert gate/up/down projections become the stacked
w13 [E, 2I, H] and w2 [E, H, I], dense and shared-expert MLPs become w13/w2 pairs; FP8 experts keep their
weight_scale_inv block scales (w13_scale, w2_scale). Every checkpoint tensor must be used and every model parameter filled, or loading
fails with the names at fault.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, Iterator, Tuple

import torch

from ..config import WeightDtype
from ..moe.ops import dequantize_blocks
from .hf_config import CheckpointError, parse_config
from .model import Decoder
from .model_config import ModelConfig, Routing, cut

__all__ = ["CheckpointError", "config_from_hf", "expert_weight_dtype", "hf_tensors", "load_hf", "safetensors_files",
           "save_hf"]


def config_from_hf(path: str, name: str = "checkpoint") -> ModelConfig:
    """The ModelConfig of `path`/config.json; CheckpointError naming the file and the key at fault."""
    file = os.path.join(path, "config.json")
    try:
        with open(file) as f:
            h = json.load(f)
    except OSError as e:
        raise CheckpointError(f"--checkpoint {path}: cannot read {file} ({e.strerror}). "
                              "Fix: pass a Hugging Face checkpoint directory (config.json + *.safetensors).") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--checkpoint {path}: {file} is not valid JSON ({e}). Fix: repair or re-download it.") from None
    # ModelConfig's own checks (shapes that do not fit together) raise ValueError; say which file
    try:
        return parse_config(h, f"--checkpoint {path}: {file}", name)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"--checkpoint {path}: {file} does not describe a supported MoE model ({e}). "
                              "Fix: use a DeepSeek-V2/V3/R1 or Qwen3-MoE checkpoint.") from None


def safetensors_files(path: str):
    """The checkpoint's *.safetensors files, each with a readable header (which also proves the file is
    as long as the header says: a truncated download fails here, with its name, before any rank starts)."""
    from safetensors import safe_open
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise CheckpointError(f"--checkpoint {path}: no *.safetensors files. Fix: download the weights too.")
    for fname in files:
        try:
            with safe_open(fname, framework="pt"):
                pass
        except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError)
            raise CheckpointError(f"--checkpoint {path}: {fname} cannot be read ({e}). "
                                  "Fix: re-download that file (it may be truncated).") from None
    return files


_ATTN = {"q_proj": "q_proj", "q_a": "q_a_proj", "q_a_norm": "q_a_layernorm", "q_b": "q_b_proj",
         "kv_a": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm", "kv_b": "kv_b_proj", "o_proj": "o_proj",
         "k_proj": "k_proj", "v_proj": "v_proj", "q_norm": "q_norm", "k_norm": "k_norm"}


def hf_tensors(model: Decoder) -> Iterator[Tuple[str, torch.Tensor]]:
    """The model's parameters under Hugging Face names (experts and SwiGLU pairs split back out)."""
    c = model.c
    yield "model.embed_tokens.weight", model.embed.weight
    yield "model.norm.weight", model.norm.weight
    yield "lm_head.weight", model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", layer.attn_norm.weight
        yield f"{p}.post_attention_layernorm.weight", layer.ffn_norm.weight
        for mod_name, module in layer.attn.named_children():
            yield f"{p}.self_attn.{_ATTN[mod_name]}.weight", module.weight
        ffn = layer.ffn
        if not c.is_moe(i):
            yield from _swiglu(f"{p}.mlp", ffn.w13, ffn.w2)
            continue
        yield f"{p}.mlp.gate.weight", ffn.gate
        if c.routing is Routing.DEEPSEEK_V3:
            yield f"{p}.mlp.gate.e_score_correction_bias", ffn.bias
        for e in range(c.num_experts):
            yield from _swiglu(f"{p}.mlp.experts.{e}", ffn.w13[e], ffn.w2[e])
            if ffn.w13_scale is not None:  # FP8 experts: DeepSeek-V3's 128x128 block scales, as stored
                yield from _swiglu(f"{p}.mlp.experts.{e}", ffn.w13_scale[e], ffn.w2_scale[e], "weight_scale_inv")
        if ffn.shared is not None:
            yield from _swiglu(f"{p}.mlp.shared_experts", ffn.shared.w13, ffn.shared.w2)


def _swiglu(prefix: str, w13: torch.Tensor, w2: torch.Tensor, what: str = "weight"):
    gate, up = w13.chunk(2, dim=0)
    yield f"{prefix}.gate_proj.{what}", gate
    yield f"{prefix}.up_proj.{what}", up
    yield f"{prefix}.down_proj.{what}", w2


_FP8_EXPERT = re.compile(r"\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight_scale_inv$")


def _tensor_files(path: str) -> Dict[str, str]:
    """Every tensor name of the checkpoint -> its file (headers only)."""
    from safetensors import safe_open
    keys = {}
    for fname in safetensors_files(path):
        with safe_open(fname, framework="pt") as f:
            keys.update((k, fname) for k in f.keys())
    return keys


def expert_weight_dtype(path: str, keys=None) -> WeightDtype:
    """FP8 where the routed experts carry block scales (weight_scale_inv: DeepSeek-V3/R1), else BF16; from the
    headers, so the launcher can tell before any rank loads a weight."""
    keys = _tensor_files(path) if keys is None else keys
    return WeightDtype.FP8 if any(_FP8_EXPERT.search(k) for k in keys) else WeightDtype.BF16


def save_hf(model: Decoder, path: str, hf_config: Dict) -> None:
    """Write model as `config.json` + one safetensors file with Hugging Face names."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=1)
    save_file({k: v.detach().contiguous().cpu() for k, v in hf_tensors(model)},
              os.path.join(path, "model.safetensors"))


def load_hf(path: str, device=None, dtype: torch.dtype = torch.bfloat16, num_layers=None) -> Decoder:
    """A Decoder with the weights of the checkpoint directory `path` (config.json + *.safetensors).

    FP8 checkpoints (DeepSeek-V3/R1: e4m3 weights with `weight_scale_inv` 128x128 block scales): the routed
    experts stay e4m3 with their scales as stored; other FP8 weights are dequantized into `dtype`."""
    from safetensors import safe_open
    c = config_from_hf(path)
    c = cut(c, num_layers)
    keys = _tensor_files(path)
    model = Decoder.build(c, seed=0, device=device, dtype=dtype, weight_dtype=expert_weight_dtype(path, keys).value)
    want = dict(hf_tensors(model))
    filled, unused = set(), []

    def read(key):
        with safe_open(keys[key], framework="pt") as f:
            return f.get_tensor(key)

    with torch.no_grad():
        for key in keys:
            if key not in want:
                base = key[:-len("_scale_inv")] if key.endswith(".weight_scale_inv") else None
                if base is not None and base in want and want[base].dtype != torch.float8_e4m3fn:
                    continue  # consumed with its weight below
                if not _beyond_kept_layers(key, c.layers):
                    unused.append(key)
                continue
            t, dst = read(key), want[key]
            if tuple(t.shape) != tuple(dst.shape):
                raise ValueError(f"{key}: checkpoint shape {tuple(t.shape)}, model expects {tuple(dst.shape)}")
            if t.dtype == torch.float8_e4m3fn and dst.dtype != t.dtype:  # a non-expert FP8 weight
                scale = key + "_scale_inv"
                if scale not in keys:
                    raise ValueError(f"{key}: an FP8 weight without {scale}")
                t = dequantize_blocks(t, read(scale))
            dst.copy_(t)
            filled.add(key)
    missing = sorted(set(want) - filled)
    if missing or unused:
        raise ValueError(f"{path}: checkpoint does not match the model: missing {missing[:5]} "
                         f"({len(missing)} in all), unused {unused[:5]} ({len(unused)} in all)")
    return model.finish()


def _beyond_kept_layers(key: str, layers: int) -> bool:
    parts = key.split(".")
    return len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= layers
