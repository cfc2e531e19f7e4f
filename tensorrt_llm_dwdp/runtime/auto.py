"""Mode `auto` for the runtime: the shapes of a ModelConfig as the performance model sees them, and the
runtime's call of the one prediction (sim.auto.predict) that the TensorRT-LLM adapter makes too."""

from __future__ import annotations

from typing import Optional

from ..config import WeightDtype
from ..sim.auto import AutoDecision, predict
from ..sim.models import MoEModel, model_of
from .capacity import gpu_names
from .config import ModelConfig


def sim_model(c: ModelConfig) -> MoEModel:
    """The model's shapes as the performance model sees them (a preset, a checkpoint's or a served model's
    config.json parsed by hf_config)."""
    return model_of(c, "runtime model config")


def choose(c: ModelConfig, ranks: int, isl: str, max_num_tokens: int, requested: str = "auto",
           machine: Optional[str] = None, weight_dtype: WeightDtype = WeightDtype.BF16) -> AutoDecision:
    """The decision for a bench run: --sim-machine, else the profile matching this machine's GPU. The GPU's
    name comes from nvidia-smi, so the launcher (no CUDA, no torch) and its ranks decide alike. A run the
    model cannot judge raises ValueError for mode auto."""
    names = gpu_names()
    try:
        return predict(sim_model(c), WeightDtype(weight_dtype).sim_precision, ranks, isl, max_num_tokens, requested,
                       machine, names[0] if names else None, {"--machine": "--sim-machine"})
    except ValueError as e:
        raise ValueError(f"--modes auto: {e}") from None
