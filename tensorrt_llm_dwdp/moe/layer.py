"""One MoE layer's routed experts = weight source x token exchange x expert kernel.

  * weight source: `LocalWeights` (every expert this rank computes, in ordinary tensors) or `DwdpWeights`
    (the hooks' composite tensors: waits for the layer's pull, frees its slot after);
  * token exchange: `NoExchange` (local and DWDP: a rank computes its own tokens) or DEP's all-to-all
    (tokens travel to the ranks that own their experts and back);
  * expert kernel: `kernels.select`, once per weights object, the same for every mode.

`local`, `dwdp` and `dep` therefore run the same kernel on the same layout; a comparison changes one part.
Hosts build a `RoutedExperts` instead of writing layer_weights -> compute -> layer_done by hand.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Dict, Iterator, Optional, Protocol, Tuple

import torch

from . import deepgemm
from .kernels import ExpertKernel, expert_compute, select
from .weights import ExpertWeights

# (x [R, H], topk_ids [M, k], topk_weights [M, k], rows [M] or None, assignments int or None, exact bool or
# None) -> [M, H]: the experts of the weight source on x[rows] (all of x when rows is None; x may be a strided
# view, read in place, or QuantizedRows: DEP's FP8 dispatch, which the expert kernel takes as they are);
# assignments: the ids below E, when the exchange read that count on the host (DepRows.EXACT), to size the
# kernels' buffers; exact: kernels.expert_compute's (False: the exchange promised no host sync)
ComputeFn = Callable[..., torch.Tensor]


class WeightSource(Protocol):
    def acquire(self, layer_idx: int) -> ExpertWeights: ...

    def release(self, layer_idx: int) -> None: ...

    def layer_ids(self) -> Tuple[int, ...]: ...

    def peek(self) -> ContextManager[ExpertWeights]: ...


class TokenExchange(Protocol):
    def run(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
            compute: ComputeFn) -> torch.Tensor: ...


class LocalWeights:
    """Experts held in ordinary tensors, per model layer index (the `local` and `dep` modes)."""

    def __init__(self, layers: Dict[int, ExpertWeights]):
        self.layers = dict(layers)

    def acquire(self, layer_idx: int) -> ExpertWeights:
        return self.layers[layer_idx]

    def release(self, layer_idx: int) -> None:
        pass

    def layer_ids(self) -> Tuple[int, ...]:
        return tuple(self.layers)

    @contextmanager
    def peek(self) -> Iterator[ExpertWeights]:
        """The first layer's experts, outside any step (setup code)."""
        yield self.layers[self.layer_ids()[0]]


class DwdpWeights:
    """The hooks' composite tensors: local shard and prefetch slot, joined in virtual memory."""

    def __init__(self, hooks):
        self.hooks = hooks

    def acquire(self, layer_idx: int) -> ExpertWeights:
        return self.hooks.layer_weights(layer_idx)

    def release(self, layer_idx: int) -> None:
        self.hooks.layer_done(layer_idx)

    def layer_ids(self) -> Tuple[int, ...]:
        return tuple(self.hooks.shape.ids)

    @contextmanager
    def peek(self) -> Iterator[ExpertWeights]:
        """The first layer's experts, in a step of their own that is aborted after (setup code)."""
        self.hooks.begin_step()
        try:
            yield self.hooks.layer_weights(self.layer_ids()[0])
        finally:
            self.hooks.abort_step()


class NoExchange:
    """Every rank computes its own tokens (local and DWDP)."""

    def run(self, x, topk_ids, topk_weights, compute: ComputeFn) -> torch.Tensor:
        return compute(x, topk_ids, topk_weights)


class RoutedExperts:
    """The routed experts of every MoE layer of a model on one rank; `routed` is what a MoE block calls.

    Counters, device tensors updated without a host sync (read them after the step, then `reset_counters`):
    expert_rows: (row, expert) pairs this rank's experts computed (its own tokens', or those DEP sent it);
    load [E] (when `count_load(E)` was called): tokens routed to each global expert from this rank."""

    def __init__(self, source: WeightSource, exchange: Optional[TokenExchange] = None,
                 kernel: Optional[ExpertKernel] = None):
        self.source, self.exchange, self.kernel = source, exchange or NoExchange(), kernel
        self.expert_rows: Optional[torch.Tensor] = None
        self.load: Optional[torch.Tensor] = None

    def count_load(self, num_experts: int, device) -> None:
        self.load = torch.zeros(num_experts, dtype=torch.long, device=device)

    def reset_counters(self) -> None:
        self.expert_rows = None

    def warm_up_kernels(self, max_rows: int, top_k: int, dtype: torch.dtype,
                        max_step: Optional[int] = None) -> Optional[str]:
        """Setup code: compile every kernel config a call of up to `max_rows` token rows (top_k each) of activations
        in `dtype` (the run's) can launch on these experts, so that no timed step compiles (DeepGEMM JIT-compiles
        at its first launch of each config; the other kernels need nothing). max_step: the most tokens a rank's
        own step holds (default max_rows; DEP's calls receive more rows than that): the kernel is chosen by it, as
        `routed` chooses, so DWDP and DEP warm up the same kernel. Returns what was done, or None."""
        if max_rows <= 0 or not self.source.layer_ids() or deepgemm.unavailable() is not None:
            return None  # before touching the weights: a DWDP step here would pull for nothing
        with self.source.peek() as weights:
            probe = torch.empty(0, weights.w13.shape[2], dtype=dtype, device=weights.device)
            kernel = self.kernel or select(probe, weights, (max_step or max_rows) * top_k).kernel
            if kernel not in (ExpertKernel.DEEPGEMM_FP8, ExpertKernel.DEEPGEMM_BF16):
                return None
            calls = deepgemm.warm_up(weights, max_rows, top_k, kernel is ExpertKernel.DEEPGEMM_FP8)
        return f"{kernel.value} warm-up: {calls} GEMM calls up to {max_rows} rows x top-{top_k}"

    def routed(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
               layer_idx: int) -> torch.Tensor:
        weights = self.source.acquire(layer_idx)
        if self.load is not None:
            self.load.scatter_add_(0, topk_ids.reshape(-1), torch.ones_like(topk_ids.reshape(-1)))

        step = topk_ids.numel()  # this rank's own tokens x top-k: what the kernel choice is sized by, in every mode

        def compute(xs, ids, wts, rows=None, assignments=None, exact=None):
            n = (ids < weights.num_experts).sum()
            self.expert_rows = n if self.expert_rows is None else self.expert_rows + n
            return expert_compute(xs, ids, wts, weights, kernel=self.kernel, rows=rows, assignments=assignments,
                                  exact=exact, step=step)

        y = self.exchange.run(x, topk_ids, topk_weights, compute)
        self.source.release(layer_idx)
        return y
