"""Mode `auto` for a TensorRT-LLM deployment: the served model's own Hugging Face config, read by the
runtime's parser (runtime/hf_config.py), goes to the one prediction (sim.auto.predict) the runtime makes
too; never a path or a hub id.

TensorRT-LLM attributes read (1.2 line and main): the model's `model_config.pretrained_config` (a
transformers PretrainedConfig; `config` on DecoderModelForCausalLM is the same object), and the engine's
`max_num_tokens` / `llm_args.max_num_tokens`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ...config import WeightDtype
from ...runtime.auto import sim_model
from ...runtime.config import ModelConfig
from ...runtime.hf_config import CheckpointError, parse_config
from ...sim.auto import AutoDecision
from ...sim.auto import predict as sim_predict

WHERE = "the served model's config (model_config.pretrained_config)"


def pretrained_config(model) -> Any:
    """The Hugging Face config TensorRT-LLM built the model from (None where it has none)."""
    mc = getattr(model, "model_config", None)
    cfg = getattr(mc, "pretrained_config", None)
    return cfg if cfg is not None else getattr(model, "config", None)


def config_dict(cfg: Any) -> Dict[str, Any]:
    """A PretrainedConfig as the config.json it stands for (to_dict(); a dict as it is)."""
    if isinstance(cfg, dict):
        return cfg
    if not callable(getattr(cfg, "to_dict", None)):
        raise CheckpointError(f"{WHERE}: {type(cfg).__name__}, not a Hugging Face config. Fix: serve a Hugging "
                              "Face checkpoint, or set dwdp.mode: dwdp")
    return cfg.to_dict()


def served_config(model) -> ModelConfig:
    """The served model as the runtime describes it. Raises CheckpointError (one line naming the key) where
    its config is not one the parser computes: DeepSeek-V2/V3/R1 and Qwen3-MoE only."""
    return parse_config(config_dict(pretrained_config(model)), WHERE, name="served model")


def predict(model, ranks: int, isl: str, max_num_tokens: int, requested: str, machine: Optional[str],
            weight_dtype: WeightDtype) -> AutoDecision:
    """The decision for `model` (TensorRT-LLM's) on dwdp.machine, else the profile matching this GPU."""
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return sim_predict(sim_model(served_config(model)), WeightDtype(weight_dtype).sim_precision, ranks, isl,
                       max_num_tokens, requested, machine, gpu, machine_option="dwdp.machine")
