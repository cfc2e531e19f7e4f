"""A toy stack of MoE layers with seeded random weights, run two ways:
through DWDP hooks (composite expert tensors, pulls) and through the float64 all-local reference.

Layer l: h = x / rms(x); x = x + MoE_l(h). Router, correction bias and shared expert are
replicated; routed experts are sharded by DWDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..config import is_fp8

from ..layout import torch_dtype
from ..moe import SharedExpert, make_router, ops
from ..moe.layer import DwdpWeights, RoutedExperts
from ..moe.overlap import beside
from ..runtime.model_config import Routing
from . import reference as ref


ROUTED_SCALING = 2.5
TOY_ROUTINGS = (Routing.DEEPSEEK_V3, Routing.SOFTMAX)  # the routers the toy model offers


def toy_router(routing: str, top_k: int, n_group: int, topk_group: int):
    """The toy model's router ("deepseek" grouped sigmoid or "softmax"); `.check(E)` validates it."""
    scaling = ROUTED_SCALING if Routing(routing) is Routing.DEEPSEEK_V3 else 1.0
    return make_router(routing, top_k, n_group, topk_group, scaling)


@dataclass
class ToyMoeModel:
    num_layers: int
    hidden: int
    inter: int
    num_experts: int
    top_k: int
    routing: str  # "deepseek" or "softmax"
    n_group: int
    topk_group: int
    weight_dtype: str
    seed: int

    def __post_init__(self):
        self.router().check(self.num_experts)
        g = torch.Generator().manual_seed(self.seed)
        L, E, H, I = self.num_layers, self.num_experts, self.hidden, self.inter
        fp8 = is_fp8(self.weight_dtype)
        wd = torch.float32 if fp8 else torch_dtype(self.weight_dtype)
        # Stored in the shard dtype; the reference upcasts the same rounded values.
        self.w13 = (torch.randn(L, E, 2 * I, H, generator=g) / H ** 0.5).to(wd)
        self.w2 = (torch.randn(L, E, H, I, generator=g) / I ** 0.5).to(wd)
        self.gate = torch.randn(L, E, H, generator=g) / H ** 0.5
        self.bias = torch.randn(L, E, generator=g) * 0.1
        self.shared_w13 = (torch.randn(L, 2 * I, H, generator=g) / H ** 0.5).to(wd)
        self.shared_w2 = (torch.randn(L, H, I, generator=g) / I ** 0.5).to(wd)
        self.scales = {}
        if fp8:  # routed experts in e4m3 with 128x128 block scales; the reference takes their exact values
            (self.w13, s13), (self.w2, s2) = ops.quantize_weight_blocks(self.w13), ops.quantize_weight_blocks(self.w2)
            self.scales = {"w13_scale": s13, "w2_scale": s2}
        self.ref_w13, self.ref_w2 = (self._exact(self.w13, "w13_scale"), self._exact(self.w2, "w2_scale"))
        self.scaling = ROUTED_SCALING

    def _exact(self, w: torch.Tensor, scale: str) -> torch.Tensor:
        if scale not in self.scales:
            return w
        s = self.scales[scale].double().repeat_interleave(128, -2).repeat_interleave(128, -1)
        return w.double() * s

    def router(self):
        return toy_router(self.routing, self.top_k, self.n_group, self.topk_group)

    def load_experts(self, layer: int, experts):
        idx = torch.tensor(list(experts), dtype=torch.long)
        out = {"w13": self.w13[layer, idx], "w2": self.w2[layer, idx]}
        out.update({name: s[layer, idx] for name, s in self.scales.items()})
        return out

    def forward_dwdp(self, x: torch.Tensor, hooks, after_layer: Optional[Callable[[int], None]] = None):
        """x [T, H] float32 on the shard's device; one DWDP step."""
        dev = x.device
        route, experts = self.router(), RoutedExperts(DwdpWeights(hooks))
        hooks.begin_step()
        for layer in range(self.num_layers):
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            logits = h @ self.gate[layer].to(dev).t()
            r = route(logits, self.bias[layer].to(dev))
            shared = SharedExpert(self.shared_w13[layer].to(dev), self.shared_w2[layer].to(dev))
            # NOTE: (routed + shared) first, as the reference sums them: the other association moves x by an ulp,
            # enough to flip a near-tie in a later layer's float32 routing against the float64 reference.
            y, s = beside(h, lambda: experts.routed(h, r.topk_ids, r.topk_weights, layer), lambda v: _shared(v, shared))
            x = x + (y + s)
            if after_layer is not None:
                after_layer(layer)
        hooks.end_step()
        return x

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same stack in float64, token by token, with every expert local."""
        x = x.double().cpu()
        for layer in range(self.num_layers):
            out = torch.empty_like(x)
            for t in range(x.shape[0]):
                xt = x[t]
                h = xt / torch.sqrt(xt.pow(2).mean() + 1e-6)
                logits = self.gate[layer].double() @ h
                if self.routing == "deepseek":
                    choices = ref.route_token_deepseek(logits, self.bias[layer].double(), self.top_k, self.n_group,
                                                       self.topk_group, self.scaling)
                else:
                    choices = ref.route_token_softmax(logits, self.top_k, renormalize=True)
                out[t] = xt + ref.moe_token_f64(h, choices, self.ref_w13[layer], self.ref_w2[layer],
                                                (self.shared_w13[layer], self.shared_w2[layer]))
            x = out
        return x


def _shared(h: torch.Tensor, shared: SharedExpert) -> torch.Tensor:
    from ..moe import swiglu
    return swiglu(h, shared.w13, shared.w2)
