"""What a `bench` run needs of the machine, counted before any rank starts.

Weights and activations of one rank, from the model's shapes (no tensor is made), against the memory the
ranks will share: host memory for CPU ranks, each GPU's memory for GPU ranks. A run that cannot fit is
refused in one line naming the option and the value that fits, instead of ranks that swap, get killed, or
allocate for minutes first.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

from ..commands.machine import gpu_memory_bytes, host_available_bytes
from ..config import is_fp8
from ..runtime.model_config import AttentionKind, ModelConfig

GIB = 1 << 30
# A rank's interpreter with torch, MPI and gloo loaded, before any model (measured on CPU ranks: ~0.42 GiB).
RANK_BASE_BYTES = int(0.6 * GIB)
# Host memory left to the system and the launcher.
HOST_RESERVE_BYTES = 2 * GIB


@dataclass(frozen=True)
class RankNeeds:
    """Bytes one rank holds at its peak: weights of the mode that holds the most, and activations of one
    iteration of max_num_tokens tokens."""

    weight_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return RANK_BASE_BYTES + self.weight_bytes + self.activation_bytes


def _params(c: ModelConfig) -> dict:
    """Parameter counts by kind, from the shapes the decoder builds."""
    h = c.hidden
    if c.attention is AttentionKind.MLA:
        qk = c.qk_nope_dim + c.qk_rope_dim
        q = (h * c.q_lora_rank + c.q_lora_rank * c.heads * qk) if c.q_lora_rank else h * c.heads * qk
        attn = q + h * (c.kv_lora_rank + c.qk_rope_dim) + c.kv_lora_rank * c.heads * (c.qk_nope_dim + c.v_head_dim) \
            + c.heads * c.v_head_dim * h
    else:
        attn = h * c.heads * c.head_dim * 2 + h * c.kv_heads * c.head_dim * 2
    moe_layers = c.layers - c.first_k_dense
    experts = moe_layers * c.num_experts * 3 * c.moe_inter * h
    rest = (c.layers * attn + c.first_k_dense * 3 * c.dense_inter * h
            + moe_layers * (c.num_experts * h + 3 * c.shared_inter * h) + 2 * c.vocab * h)
    return {"experts": experts, "rest": rest}


def activation_bytes_per_token(c: ModelConfig, elem: int) -> int:
    """Bytes live per token inside one layer's forward: an upper bound (CPU ranks, tiny preset, 64K tokens:
    0.42 GiB counted, 0.24 GiB measured above the interpreter's own)."""
    h = c.hidden
    if c.attention is AttentionKind.MLA:
        attn = c.heads * (3 * (c.qk_nope_dim + c.qk_rope_dim) + c.v_head_dim) + c.kv_lora_rank + (c.q_lora_rank or 0)
    else:
        attn = (c.heads * 2 + c.kv_heads * 2) * c.head_dim + 2 * c.heads * c.head_dim
    moe = c.num_experts + c.top_k * (2 * h + 3 * c.moe_inter) + 3 * c.shared_inter
    dense = 3 * c.dense_inter if c.first_k_dense else 0
    return elem * (4 * h + attn + max(moe, dense)) + 64  # + ids, positions, routing indices


def rank_needs(c: ModelConfig, modes: Sequence[str], world: int, max_num_tokens: int, elem: int,
               expert_elem: Optional[int] = None, depth: int = 2, eplb: int = 0) -> RankNeeds:
    """Peak bytes of one rank over the modes it runs one after the other (each builds its own model).
    eplb: redundant expert slots per rank of mode dep+eplb."""
    p = _params(c)
    expert_elem = elem if expert_elem is None else expert_elem
    moe_layers = max(1, c.layers - c.first_k_dense)
    per_layer = p["experts"] // moe_layers * expert_elem
    held = {"local": moe_layers * per_layer,
            "dep": -(-moe_layers * per_layer // world),
            "dwdp": -(-moe_layers * per_layer // world) + depth * per_layer,
            "dep+eplb": moe_layers * (-(-c.num_experts // world) + eplb) * (per_layer // c.num_experts)}
    experts = max(held.get(m, held["local"]) for m in modes)
    return RankNeeds(p["rest"] * elem + experts, max_num_tokens * activation_bytes_per_token(c, elem))


def rank_needs_for(c: ModelConfig, args, modes: Sequence[str], gpus: Optional[Sequence[int]] = None) -> RankNeeds:
    """rank_needs for a `bench` run's options (bfloat16 activations on GPUs, float32 on CPU ranks)."""
    elem = 2 if (gpus if gpus is not None else gpu_memory_bytes()) else 4
    fp8 = is_fp8(args.weight_dtype)
    return rank_needs(c, modes, args.ranks, args.max_num_tokens, elem, 1 if fp8 else elem, args.depth,
                      getattr(args, "eplb", 0))


def check_fits(c: ModelConfig, args, modes: Sequence[str], world: int) -> RankNeeds:
    """Refuse (ValueError naming the options) a run whose ranks cannot hold their peak in this machine's memory."""
    gpus = gpu_memory_bytes()
    needs = rank_needs_for(c, argparse.Namespace(**dict(vars(args), ranks=world)), modes, gpus or ())
    if gpus:
        share = -(-world // len(gpus))
        room, where = min(gpus), f"{share} rank(s) on a GPU of {min(gpus) / GIB:.0f} GiB"
    else:
        avail = host_available_bytes()
        if avail is None:
            return needs
        room, where, share = avail - HOST_RESERVE_BYTES, f"{world} CPU ranks in {avail / GIB:.1f} GiB available", world
    if needs.total * share <= room:
        return needs
    per_rank = room // share
    fit_tokens = (per_rank - RANK_BASE_BYTES - needs.weight_bytes) // max(1, needs.activation_bytes // args.max_num_tokens)
    fit_ranks = max(0, room // max(1, needs.total)) * (len(gpus) if gpus else 1)
    fixes = []
    if fit_tokens >= 1:
        fixes.append(f"--max-num-tokens {min(fit_tokens, args.max_num_tokens - 1)} or less")
    if 1 <= fit_ranks < world:
        fixes.append(f"--ranks {fit_ranks} or less")
    fixes.append("--layers N (fewer layers) or a smaller --preset")
    raise ValueError(f"--ranks {world}: each rank needs ~{needs.total / GIB:.1f} GiB ({needs.weight_bytes / GIB:.1f} "
                     f"weights, {needs.activation_bytes / GIB:.1f} activations for --max-num-tokens "
                     f"{args.max_num_tokens}); {where} does not fit it. Fix: {', or '.join(fixes)}.")
