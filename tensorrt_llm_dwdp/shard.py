"""What a rank holds: the MoE shape it serves, the composite plan setup decides before touching memory (pure, so
it can refuse early), and the filling of its shard from the host's weight loader. `hooks.DwdpHooks.setup` runs
them; nothing here keeps state between steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .config import DwdpConfig, DwdpConfigError
from .layout import ALIGN, CompositeLayout, MemoryPlan, W13Order, memory_plan, runs, stacked_views, swiglu_expert_specs
from .placement import Placement, placement_from_config

# (MoE layer ordinal, expert ids) -> {"w13": [n, 2I, H], "w2": [n, H, I], and for FP8 "w13_scale", "w2_scale"}
WeightLoader = Callable[[int, Sequence[int]], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class MoeShape:
    """The MoE part of a model, as the shards must match it.

    layer_ids: the model's index of each MoE layer (e.g. 3..60 for DeepSeek-V3, whose first
    three layers are dense); defaults to 0..num_layers-1.
    w13_order: the row order of w13 the host's kernels read (TensorRT-LLM's w3_w1 is UP_GATE); the shard
    holds the loader's tensors as given.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_experts: int
    layer_ids: Optional[Tuple[int, ...]] = None
    w13_order: W13Order = W13Order.GATE_UP

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_experts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DwdpConfigError(f"MoeShape.{name}", value, "it must be a positive integer",
                                      f"pass the model's {name.replace('_', ' ')} as an int >= 1")
        if self.layer_ids is not None:
            object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))
            if len(self.layer_ids) != self.num_layers or len(set(self.layer_ids)) != self.num_layers:
                raise DwdpConfigError("MoeShape.layer_ids", self.layer_ids, f"it must list {self.num_layers} "
                                      "distinct layer indices, one per MoE layer",
                                      "give the model's index of each MoE layer once, or leave layer_ids out")

    @property
    def ids(self) -> Tuple[int, ...]:
        return self.layer_ids if self.layer_ids is not None else tuple(range(self.num_layers))


@dataclass(frozen=True)
class CompositePlan:
    """Everything setup decides before touching memory; pure, so `plan_composite` can refuse early."""

    placement: Placement
    layout: CompositeLayout
    memory: MemoryPlan
    local: Tuple[int, ...]
    missing: Tuple[int, ...]


def check_shape(config: DwdpConfig, shape: MoeShape):
    """The expert tensor specs of this model under this config; DwdpConfigError where they do not fit."""
    if shape.num_experts != config.num_experts:
        raise DwdpConfigError("num_experts", config.num_experts,
                              f"the model's MoE layers have {shape.num_experts} experts",
                              f"set num_experts={shape.num_experts}")
    try:
        return swiglu_expert_specs(shape.hidden_size, shape.intermediate_size, config.weight_dtype)
    except ValueError as e:
        raise DwdpConfigError("weight_dtype", config.weight_dtype, str(e), "use bfloat16 expert weights for this model")


def plan_composite(config: DwdpConfig, shape: MoeShape, rank: int, granularity: int,
                   duplicate_shard: bool = False, contiguous: bool = False) -> CompositePlan:
    """Placement, composite layout and memory of group rank `rank`; raises DwdpConfigError on bad input.
    contiguous: the host's kernels assume each expert right after the previous one (no padded stride)."""
    specs = check_shape(config, shape)
    placement = placement_from_config(config)
    bounds = set()
    for r in range(placement.group_size):
        for ids in (placement.local_experts(r), placement.missing_experts(r)):
            for first, count in runs(ids):
                bounds.update((first, first + count))
    layout = CompositeLayout.build(specs, shape.num_experts, granularity, sorted(bounds))
    if contiguous and layout.padding_bytes_per_expert:
        _refuse_padding(config, shape, specs, granularity, bounds)
    local, missing = placement.local_experts(rank), placement.missing_experts(rank)
    mem = memory_plan(layout, shape.num_layers, local, missing, config.prefetch_depth, duplicate_shard)
    return CompositePlan(placement, layout, mem, local, missing)


def _refuse_padding(config: DwdpConfig, shape: MoeShape, specs, granularity: int, bounds) -> None:
    sizes = ", ".join(f"{s.name} {s.nbytes} B" for s in specs.pooled)
    unit = 1
    for s in specs.pooled:  # runs of `unit` experts fill whole granules of every pooled tensor
        k = granularity // math.gcd(granularity, s.nbytes)
        unit = unit * k // math.gcd(unit, k)
    off = sorted(b for b in bounds if 0 < b < shape.num_experts and b % unit)
    if not off:
        raise DwdpConfigError("weight_dtype", config.weight_dtype, f"the expert tensors ({sizes}) are not multiples "
                              f"of {ALIGN} bytes, so experts need a padded stride the host's kernels cannot read",
                              "serve this model without DWDP")
    where = config.placement if config.placement is not None else f"even over {config.group_size} ranks"
    fix = (f"split the experts at multiples of {unit} (a group size or explicit placement to match)"
           if unit < shape.num_experts else "serve this model without DWDP: its experts are too small to split "
           f"on the {granularity}-byte granularity")
    raise DwdpConfigError("placement", where, f"it splits the {shape.num_experts} experts at {off}, where the expert "
                          f"tensors ({sizes}) do not end on the {granularity}-byte mapping granularity, and the host's "
                          "kernels cannot read a padded expert stride", fix)


def fill_shard(shard, pieces, layout: CompositeLayout, local: Sequence[int], load: WeightLoader, shape: MoeShape,
                device) -> List[Dict[str, torch.Tensor]]:
    """Copy this rank's experts into its pieces; returns per layer the replicated tensors [E, ...] with the
    local experts' rows filled (the rest come from their owners in replicate_rows)."""
    row = {e: i for i, e in enumerate(local)}
    replicated = []
    for layer in range(shape.num_layers):
        rep = {s.name: torch.zeros((shape.num_experts, *s.shape), dtype=getattr(torch, s.dtype), device=device)
               for s in layout.specs.replicated}
        replicated.append(rep)
        if not local:
            continue
        tensors = load(layer, list(local))
        for spec in layout.specs.all:
            src = tensors.get(spec.name) if isinstance(tensors, Mapping) else None
            want = (len(local), *spec.shape)
            if src is None or tuple(src.shape) != want:
                got = None if src is None else tuple(src.shape)
                raise DwdpConfigError(
                    "model", f"MoE layer {shape.ids[layer]}",
                    f"weight {spec.name!r} of experts {list(local)[:4]}... has shape {got}, the shard expects {want} "
                    f"(hidden {shape.hidden_size}, intermediate {shape.intermediate_size}, {spec.dtype})",
                    "pass the MoE shape and weight dtype of the model being loaded")
            if spec.name in rep:
                rep[spec.name][list(local)] = src.to(device=device, dtype=rep[spec.name].dtype)
        for i, p in enumerate(pieces):
            dst = piece_view(shard[layer * len(pieces) + i].tensor, layout, p)
            dst.copy_(tensors[p.tensor][row[p.first]: row[p.first] + p.count].to(device=dst.device, dtype=dst.dtype))
    return replicated


def piece_view(buf: torch.Tensor, layout: CompositeLayout, piece) -> torch.Tensor:
    """[count, *shape] view of a piece's experts in its own allocation `buf` (experts `stride` apart)."""
    i = layout.index(piece.tensor)
    one = CompositeLayout(type(layout.specs)((layout.specs.pooled[i],)), piece.count, layout.granularity,
                          (layout.strides[i],), (0,), piece.nbytes)
    return stacked_views(buf, one)[piece.tensor]


def replicate_rows(replicated: List[Dict[str, torch.Tensor]], local: Sequence[int], group) -> None:
    """Fill the other ranks' rows of the replicated tensors from their owners (collective, once at setup)."""
    if not replicated or not replicated[0]:
        return
    mine = [{k: v[list(local)].cpu() for k, v in rep.items()} if local else {} for rep in replicated]
    for ids, theirs in group.allgather((tuple(local), mine)):
        for rep, t in zip(replicated, theirs):
            for k, v in t.items():
                rep[k][list(ids)] = v.to(rep[k].device)
