"""`apply_dwdp(model, config)`: rewire a finished model's MoE blocks to DWDP (gpt-fast's apply_tp style).

Collective over the world communicator. After it, each MoE block reads its routed experts
through the hooks (local shard + prefetch slot) and the model's full expert tensors are dropped.
The model stays plain: the host's executor brackets each forward with the returned hooks'
begin_step / end_step, as TensorRT-LLM's PyExecutor._forward_step would.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import DwdpConfig
from ..hooks import DwdpHooks, MoeShape
from ..moe import expert_compute
from .model import Decoder


class DwdpExperts:
    """Expert source backed by the hooks: waits for its layer's pull, frees the slot after."""

    def __init__(self, hooks: DwdpHooks):
        self.hooks = hooks

    def routed(self, x, topk_ids, topk_weights, layer_idx: int):
        weights = self.hooks.layer_weights(layer_idx)
        y = expert_compute(x, topk_ids, topk_weights, weights)
        self.hooks.layer_done(layer_idx)
        return y


def apply_dwdp(model: Decoder, config: DwdpConfig, comm=None, device: Optional[torch.device] = None) -> DwdpHooks:
    blocks = model.moe_blocks()
    if not blocks:
        raise ValueError("apply_dwdp: the model has no MoE layers")
    c = model.c
    shape = MoeShape(len(blocks), c.hidden, c.moe_inter, c.num_experts, tuple(b.layer_idx for b in blocks))

    def load(moe_layer: int, experts):
        w13, w2 = blocks[moe_layer].expert_weights(list(experts))
        return {"w13": w13, "w2": w2}

    device = device if device is not None else next(model.parameters()).device
    hooks = DwdpHooks.setup(config, shape, load, comm=comm, device=device)
    source = DwdpExperts(hooks)
    for b in blocks:
        b.experts = source
        # The shard holds this rank's experts now; keep no second copy of all of them.
        b.w13 = torch.nn.Parameter(b.w13.new_empty(0), requires_grad=False)
        b.w2 = torch.nn.Parameter(b.w2.new_empty(0), requires_grad=False)
    return hooks
