"""Attention of the compact decoder: DeepSeek MLA and grouped-query attention over packed sequences (x is [T, H]
with `seq_lens` summing to T; causal within each sequence), RoPE with YaRN scaling, RMSNorm."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .model_config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


@functools.lru_cache(maxsize=None)
def inv_freq(c: ModelConfig, dim: int, device=None) -> torch.Tensor:
    """The rotary frequencies [dim/2] fp32 of c (YaRN-rescaled when c.yarn is set), computed as the models'
    reference code does; made once per config and device (read-only)."""
    pos = c.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    if c.yarn is None:
        return 1.0 / pos
    low, high = c.yarn.correction_range(dim, c.rope_theta)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) /
            (high - low if high != low else 0.001)).clamp(0, 1)
    return (1.0 / (c.yarn.factor * pos)) * ramp + (1.0 / pos) * (1 - ramp)


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False,
         scale: float = 1.0) -> torch.Tensor:
    """Rotary embedding over the last dim of x [T, heads, d] with `freqs` [d/2]; cos and sin scaled by `scale`.

    Halves rotated (NeoX style), or with `interleaved` pairs (x0, x1), (x2, x3), ... each rotated by one
    frequency, as DeepSeek stores q_pe and k_pe. NOTE: the interleaved result comes out de-interleaved (evens,
    then odds), as DeepSeek's code returns it; q and k are permuted alike, so q.k is unchanged."""
    ang = positions.float()[:, None] * freqs[None]
    cos, sin = (ang.cos() * scale)[:, None, :], (ang.sin() * scale)[:, None, :]
    xf = x.float()
    x1, x2 = (xf[..., 0::2], xf[..., 1::2]) if interleaved else xf.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def causal_attention(q, k, v, seq_lens: Sequence[int], scale: float) -> torch.Tensor:
    """q [T, h, dqk], k [T, h, dqk], v [T, h, dv] -> [T, h*dv], causal within each sequence."""
    dv = v.shape[-1]
    if dv < q.shape[-1]:  # MLA (192 vs 128): flash attention wants one head dim; zero columns add nothing
        v = F.pad(v, (0, q.shape[-1] - dv))
    outs, start = [], 0
    # NOTE: 4-D [1, h, n, d]: SDPA's flash and memory-efficient kernels take only 4-D inputs; 3-D falls back
    # to the math path, which materialises the h x n x n scores. cuDNN's kernel is left out: it builds a plan
    # per new sequence length (tens of ms), which would charge whichever mode runs first.
    with sdpa_kernel(_SDPA_BACKENDS):
        for n in seq_lens:
            sl = slice(start, start + n)
            o = F.scaled_dot_product_attention(*(t[sl].transpose(0, 1).unsqueeze(0) for t in (q, k, v)),
                                               is_causal=True, scale=scale)
            outs.append(o[0, ..., :dv].transpose(0, 1).reshape(n, -1))
            start += n
    return torch.cat(outs) if outs else q.new_zeros(0, q.shape[1] * dv)


# NOTE: DeepSeek's code (and transformers') builds q_a_layernorm and kv_a_layernorm with RMSNorm's default
# eps, not the config's rms_norm_eps.
LORA_NORM_EPS = 1e-6


class MlaAttention(nn.Module):
    """DeepSeek MLA, computed in prefill as multi-head attention over decompressed k/v."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        qk = c.qk_nope_dim + c.qk_rope_dim
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden, c.heads * qk, bias=False)
        else:
            self.q_a = nn.Linear(c.hidden, c.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(c.q_lora_rank, LORA_NORM_EPS)
            self.q_b = nn.Linear(c.q_lora_rank, c.heads * qk, bias=False)
        self.kv_a = nn.Linear(c.hidden, c.kv_lora_rank + c.qk_rope_dim, bias=False)
        self.kv_a_norm = RMSNorm(c.kv_lora_rank, LORA_NORM_EPS)
        self.kv_b = nn.Linear(c.kv_lora_rank, c.heads * (c.qk_nope_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(c.heads * c.v_head_dim, c.hidden, bias=False)

    def forward(self, x, positions, seq_lens):
        c, t = self.c, x.shape[0]
        q = self.q_proj(x) if c.q_lora_rank is None else self.q_b(self.q_a_norm(self.q_a(x)))
        q = q.view(t, c.heads, c.qk_nope_dim + c.qk_rope_dim)
        q_nope, q_rope = q.split([c.qk_nope_dim, c.qk_rope_dim], dim=-1)
        ckv, k_rope = self.kv_a(x).split([c.kv_lora_rank, c.qk_rope_dim], dim=-1)
        kv = self.kv_b(self.kv_a_norm(ckv)).view(t, c.heads, c.qk_nope_dim + c.v_head_dim)
        k_nope, v = kv.split([c.qk_nope_dim, c.v_head_dim], dim=-1)
        freqs = inv_freq(c, c.qk_rope_dim, x.device)
        mscale = c.yarn.rotary_scale if c.yarn else 1.0
        q_rope = rope(q_rope, positions, freqs, c.rope_interleave, mscale)
        k_rope = rope(k_rope.view(t, 1, c.qk_rope_dim), positions, freqs, c.rope_interleave, mscale)
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(t, c.heads, c.qk_rope_dim)], dim=-1)
        scale = (c.yarn.softmax_scale if c.yarn else 1.0) / math.sqrt(c.qk_nope_dim + c.qk_rope_dim)
        return self.o_proj(causal_attention(q, k, v, seq_lens, scale))


class GqaAttention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)
        if c.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(c.head_dim, c.rms_eps), RMSNorm(c.head_dim, c.rms_eps)

    def forward(self, x, positions, seq_lens):
        c, t = self.c, x.shape[0]
        q = self.q_proj(x).view(t, c.heads, c.head_dim)
        k = self.k_proj(x).view(t, c.kv_heads, c.head_dim)
        v = self.v_proj(x).view(t, c.kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        freqs, mscale = inv_freq(c, c.head_dim, x.device), c.yarn.rotary_scale if c.yarn else 1.0
        q, k = (rope(t, positions, freqs, c.rope_interleave, mscale) for t in (q, k))
        rep = c.heads // c.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return self.o_proj(causal_attention(q, k, v, seq_lens, 1.0 / math.sqrt(c.head_dim)))
