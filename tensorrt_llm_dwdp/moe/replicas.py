"""EPLB over DEP's exchange: each token's expert goes to one of its replicas (flat slot ids), then the plain
exchange dispatches, computes and combines over slots instead of experts."""

from __future__ import annotations

from typing import Dict, Sequence

import torch


class ReplicaRouting:
    """EPLB: each token's expert to one of its replicas (flat slot ids, rank = slot // slots per rank).

    replicas: expert -> its slot ids. The i-th of this rank's tokens routed to an expert takes replica
    (i + rank) mod count: an expert's tokens split evenly over its replicas (within one), and ranks with few
    tokens do not all pick the first one. Device-side sort and lookups: no host sync."""

    def __init__(self, replicas: Dict[int, Sequence[int]], rank: int, device: torch.device):
        num_experts = len(replicas)
        width = max(len(v) for v in replicas.values())
        self.table = torch.tensor([[replicas[e][i % len(replicas[e])] for i in range(width)]
                                   for e in range(num_experts)], dtype=torch.long, device=device)
        self.count = torch.tensor([len(replicas[e]) for e in range(num_experts)], dtype=torch.long, device=device)
        self.rank = rank

    def __call__(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """topk_ids [T, K] global expert ids -> [T, K] slot ids."""
        flat = topk_ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        first = torch.searchsorted(flat[order], flat[order])  # where each expert's run starts in sorted order
        nth = torch.empty_like(flat)
        nth[order] = torch.arange(flat.numel(), device=flat.device) - first  # i: earlier tokens of the same expert
        return self.table[topk_ids, ((nth + self.rank) % self.count[flat]).view_as(topk_ids)]


class ReplicatedExchange:
    """A token exchange over replica slots (EPLB): global expert ids become slot ids, then `exchange` (built with
    one "expert" per slot) dispatches, computes and combines as plain DEP does."""

    def __init__(self, exchange, routing: ReplicaRouting):
        self.exchange, self.routing = exchange, routing

    def run(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, compute) -> torch.Tensor:
        return self.exchange.run(x, self.routing(topk_ids), topk_weights, compute)
