"""`apply_dwdp(model, config)`: rewire a finished model's MoE blocks to DWDP (gpt-fast's apply_tp style).

Collective over the world communicator. After it, each MoE block reads its routed experts
through the hooks (composite tensors: local shard + prefetch slot) and the model's full expert tensors are dropped.
The model stays plain: the host's executor brackets each forward with the returned hooks'
begin_step / end_step, as TensorRT-LLM's PyExecutor._forward_step would.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import DwdpConfig
from ..hooks import DwdpHooks, MoeShape
from ..moe.layer import DwdpWeights, RoutedExperts
from .model import Decoder


def apply_dwdp(model: Decoder, config: DwdpConfig, comm=None, device: Optional[torch.device] = None) -> DwdpHooks:
    blocks = model.moe_blocks()
    if not blocks:
        raise ValueError("apply_dwdp: the model has no MoE layers")
    c = model.c
    shape = MoeShape(len(blocks), c.hidden, c.moe_inter, c.num_experts, tuple(b.layer_idx for b in blocks))

    def load(moe_layer: int, experts):
        return blocks[moe_layer].expert_tensors(list(experts))

    device = device if device is not None else next(model.parameters()).device
    hooks = DwdpHooks.setup(config, shape, load, comm=comm, device=device)
    experts = RoutedExperts(DwdpWeights(hooks))
    for b in blocks:
        b.experts = experts
        b.drop_experts()  # the shard holds this rank's experts now
    return hooks
