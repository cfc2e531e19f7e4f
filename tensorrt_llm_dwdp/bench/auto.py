"""Mode `auto` for a bench run: its call of the one prediction (sim.decide.predict) that the TensorRT-LLM adapter
makes too, with the model's shapes as `sim.models.model_of` gives them."""

from __future__ import annotations

from typing import Optional

from ..commands.machine import gpu_names
from ..config import WeightDtype
from ..runtime.model_config import ModelConfig
from ..sim.decide import AutoDecision, predict
from ..sim.models import model_of


def choose(c: ModelConfig, ranks: int, isl: str, max_num_tokens: int, requested: str = "auto",
           machine: Optional[str] = None, weight_dtype: WeightDtype = WeightDtype.BF16) -> AutoDecision:
    """The decision for a bench run: --sim-machine, else the profile matching this machine's GPU. The GPU's
    name comes from nvidia-smi, so the launcher (no CUDA, no torch) and its ranks decide alike. A run the
    model cannot judge raises ValueError for mode auto."""
    names = gpu_names()
    try:
        return predict(model_of(c), WeightDtype(weight_dtype).sim_precision, ranks, isl, max_num_tokens, requested,
                       machine, names[0] if names else None, {"--machine": "--sim-machine"})
    except ValueError as e:
        raise ValueError(f"--modes auto: {e}") from None
