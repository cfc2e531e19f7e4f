"""Mode `auto` for a TensorRT-LLM deployment: the served model's own Hugging Face config, read by the
runtime's parser (runtime/hf_config.py), goes to the one prediction (sim.decide.predict) the runtime makes
too; never a path or a hub id.

TensorRT-LLM attributes read (1.2 line and main): the model's `model_config.pretrained_config` (a
transformers PretrainedConfig; `config` on DecoderModelForCausalLM is the same object), and the engine's
`max_num_tokens` / `llm_args.max_num_tokens`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ...config import Mode, WeightDtype
from ...runtime.hf_config import CheckpointError, parse_config
from ...runtime.model_config import ModelConfig
from ...sim.decide import AutoDecision
from ...sim.decide import predict as sim_predict
from ...sim.models import model_of
from .log import log
from .options import TrtllmDwdpOptions

WHERE = "the served model's config (model_config.pretrained_config)"
# The performance model's options in the deployment's words.
OPTION_NAMES = {"--machine": "dwdp.machine", "--ranks": "moe_expert_parallel_size",
                "--max-num-tokens": "max_num_tokens"}
# LlmArgs' own default of max_num_tokens, for an engine that does not say.
DEFAULT_MAX_NUM_TOKENS = 8192


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
    return sim_predict(model_of(served_config(model)), WeightDtype(weight_dtype).sim_precision, ranks, isl,
                       max_num_tokens, requested, machine, gpu, OPTION_NAMES)


def wanted(engine, options: TrtllmDwdpOptions, group_size: int, weight_dtype: WeightDtype) -> bool:
    """Whether DWDP serves `engine`'s model (said on stderr): mode auto as the performance model decides; mode
    dwdp on, with its warning where it cannot pay, and with the reason where nothing could be predicted."""
    try:
        args = getattr(engine, "llm_args", None)
        tokens = int(getattr(engine, "max_num_tokens", None) or getattr(args, "max_num_tokens", None)
                     or DEFAULT_MAX_NUM_TOKENS)
        d = predict(engine.model, group_size, options.isl or str(tokens), tokens, options.mode, options.machine,
                    weight_dtype)
    except Exception as e:  # noqa: BLE001 - no prediction must not stop a deployment asking for DWDP
        # A config the parser refuses, or a run the model cannot judge: the message names the key or option.
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        log(f"no performance prediction: {why}" + ("; mode auto leaves DWDP off" if options.mode == Mode.AUTO else ""))
        return options.mode != Mode.AUTO
    if options.mode == Mode.AUTO:
        log(f"mode auto chose {d.mode.upper()}: {d.reason}")
        return d.mode is Mode.DWDP
    if d.warning:
        log("warning: " + d.warning)
    return True
