"""What a MoE module that DWDP serves believes it holds: every expert local, no expert-parallel exchange.

Attributes set on the MoE module and, under main's ConfigurableMoE, on its backend (read in
CutlassFusedMoE.__init__ / forward_chunk / reducescatter_or_allreduce at 1.2 and in MoE/ConfigurableMoE at
main; only those the module has are set, all restored by the undo calls returned):
  ep_size 1, ep_rank 0           passed to the fused_moe op (1.2, main): slots of this rank = all E
  expert_size_per_partition E    1.2, main: slot count the kernels and load_weights use
  num_slots E, slot_start 0, slot_end E, initial_global_assignments 0..E-1, initial_local_expert_ids
                                 0..E-1: 1.2, main (EPLB bookkeeping read by the module)
  parallel_size 1                1.2: with use_dp, > 1 runs allgather before and reducescatter after
                                 the kernel (forward_chunk, reducescatter_or_allreduce)
A ConfigurableMoE built without its exchange (configurable.py) also chunks by this rank's own tokens.
"""

from __future__ import annotations

import functools
from typing import Callable, List

from . import configurable
from .discover import MoeLayer

# The table above, as a function of E.
PARTITION = {"ep_size": lambda e: 1, "ep_rank": lambda e: 0, "expert_size_per_partition": lambda e: e,
             "num_slots": lambda e: e, "slot_start": lambda e: 0, "slot_end": lambda e: e,
             "initial_global_assignments": lambda e: list(range(e)),
             "initial_local_expert_ids": lambda e: list(range(e)), "parallel_size": lambda e: 1}


def make_all_local(layer: MoeLayer, num_experts: int) -> List[Callable[[], None]]:
    """Set the table on the layer's module (and its backend); returns the calls that put each value back."""
    undo: List[Callable[[], None]] = []
    for owner in {id(layer.module): layer.module, id(layer.holder): layer.holder}.values():
        for name, value in PARTITION.items():
            if hasattr(owner, name):
                undo.append(functools.partial(setattr, owner, name, getattr(owner, name)))
                setattr(owner, name, value(num_experts))
    chunks = configurable.chunk_by_own_tokens(layer.module) if configurable.skipped(layer.module) else None
    return undo + ([chunks] if chunks is not None else [])
