"""TensorRT-LLM's expert weight layouts <-> our shard layout. Pure tensor reshuffles.

Ours (layout.swiglu_expert_specs), per expert, stacked over n experts:
  w13 [n, 2I, H]  gate (w1) rows, then up (w3) rows;     w2 [n, H, I];
  FP8 adds w13_scale [n, 2I/128, H/128] and w2_scale [n, H/128, I/128], float32 DeepSeek-V3
  128x128 block scales in the same gate-then-up row order.

TensorRT-LLM, PyTorch backend, tensors of one MoE module (read from
tensorrt_llm/_torch/modules/fused_moe/quantization.py and fused_moe_triton.py, at the 1.2 line
and at main, 1.3 cycle; the names and shapes are the same in both):
  layout "w3_w1"  CutlassFusedMoE (Hopper and Blackwell), DeepGemmFusedMoE (SM100/103 only), WideEPMoE;
      UnquantizedFusedMoEMethod and DeepSeekFP8BlockScalesFusedMoEMethod:
      w3_w1_weight [n, 2I, H] with the up (w3) rows FIRST, then gate (w1);  w2_weight [n, H, I];
      FP8: w3_w1_weight_scaling_factor [n, 2*ceil(I/128), ceil(H/128)] fp32, w3 block rows
      first (load_expert_all_weight_scale_fp8_block_scale: dst.chunk(2) -> w3, w1), and
      w2_weight_scaling_factor [n, ceil(H/128), ceil(I/128)] fp32.
  layout "triton"  TritonFusedMoE, TritonUnquantizedFusedMoEMethod (bf16, shuffle_weight=True):
      w3_w1_weight [n, H, 2I]: cat(w3, w1) transposed, then columns interleaved by
      shuffle_weight_for_activation_kernel so column 2j is gate row j and 2j+1 is up row j;
      w2_weight [n, I, H] (transposed).
Not convertible, so not supported: DeepGemmFusedMoE on Blackwell (transform_weights resmooths to
UE8M0 and packs the scales with transform_sf_into_required_layout), TRTLLMGenFusedMoE (weights
shuffled for its kernels), CuteDslFusedMoE, NVFP4 and FP8 per-tensor (QDQ) methods.

Checkpoint tensors as TensorRT-LLM's MoE load_weights receives them (MoEWeightLoadingMode.VANILLA):
"{e}.w1.weight" (gate) [I, H], "{e}.w3.weight" (up) [I, H], "{e}.w2.weight" [H, I], and for FP8
"{e}.w1.weight_scale_inv" etc. (block scales, as stored by DeepSeek-V3's checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ...config import Choice


class Layout(Choice):
    """How a TensorRT-LLM MoE backend stores its experts (see the module docstring)."""

    W3_W1 = "w3_w1"
    TRITON = "triton"


FP8_BLOCK = 128
TRTLLM_NAMES = ("w3_w1_weight", "w2_weight", "w3_w1_weight_scaling_factor", "w2_weight_scaling_factor")


def _check_layout(layout: Union[str, Layout]) -> Layout:
    try:
        return Layout(layout)
    except ValueError:
        raise ValueError(f"layout {layout!r}: unknown. Fix: one of {', '.join(x.value for x in Layout)}") from None


def _halves(t: torch.Tensor, dim: int):
    if t.shape[dim] % 2:
        raise ValueError(f"fused gate/up tensor of shape {tuple(t.shape)} has an odd size {t.shape[dim]} at dim {dim}")
    return t.chunk(2, dim=dim)


def to_shard(layout: str, w3_w1: torch.Tensor, w2: torch.Tensor, w3_w1_scale: Optional[torch.Tensor] = None,
             w2_scale: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """TensorRT-LLM tensors of n experts -> {"w13", "w2"[, "w13_scale", "w2_scale"]} (new tensors)."""
    if _check_layout(layout) is Layout.W3_W1:
        up, gate = _halves(w3_w1, 1)
        out = {"w13": torch.cat([gate, up], dim=1), "w2": w2.contiguous()}
    else:
        if w3_w1_scale is not None or w2_scale is not None:
            raise ValueError("layout 'triton': block-scaled FP8 is not a Triton layout this adapter reads")
        gate, up = w3_w1[..., 0::2], w3_w1[..., 1::2]  # [n, H, I] each
        out = {"w13": torch.cat([gate, up], dim=2).transpose(1, 2).contiguous(),
               "w2": w2.transpose(1, 2).contiguous()}
    if (w3_w1_scale is None) != (w2_scale is None):
        raise ValueError("FP8 block scales come in pairs: give both w3_w1 and w2 scales, or neither")
    if w3_w1_scale is not None:
        up_s, gate_s = _halves(w3_w1_scale, 1)
        out["w13_scale"] = torch.cat([gate_s, up_s], dim=1).float()
        out["w2_scale"] = w2_scale.float().contiguous()
    return out


def from_shard(layout: str, shard: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our {"w13", "w2"[, scales]} of n experts -> TensorRT-LLM's tensors (TRTLLM_NAMES keys)."""
    layout = _check_layout(layout)
    w13, w2 = shard["w13"], shard["w2"]
    gate, up = _halves(w13, 1)
    if layout is Layout.W3_W1:
        out = {"w3_w1_weight": torch.cat([up, gate], dim=1), "w2_weight": w2.contiguous()}
    else:
        n, i, h = gate.shape
        fused = torch.empty(n, h, 2 * i, dtype=w13.dtype, device=w13.device)
        fused[..., 0::2], fused[..., 1::2] = gate.transpose(1, 2), up.transpose(1, 2)
        out = {"w3_w1_weight": fused, "w2_weight": w2.transpose(1, 2).contiguous()}
    if "w13_scale" in shard:
        gate_s, up_s = _halves(shard["w13_scale"], 1)
        out["w3_w1_weight_scaling_factor"] = torch.cat([up_s, gate_s], dim=1)
        out["w2_weight_scaling_factor"] = shard["w2_scale"].contiguous()
    return out


def checkpoint_to_shard(tensors: Mapping[str, torch.Tensor], expert_ids: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Per-expert checkpoint tensors ("{e}.w1.weight", ...) of `expert_ids` -> our stacked shard dict."""
    def stack(e_name: str):
        missing = [f"{e}.{e_name}" for e in expert_ids if f"{e}.{e_name}" not in tensors]
        if missing:
            raise KeyError(f"checkpoint tensors missing: {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        return torch.stack([tensors[f"{e}.{e_name}"] for e in expert_ids])

    out = {"w13": torch.cat([stack("w1.weight"), stack("w3.weight")], dim=1), "w2": stack("w2.weight")}
    if any(f"{e}.w1.weight_scale_inv" in tensors for e in expert_ids):
        out["w13_scale"] = torch.cat([stack("w1.weight_scale_inv"), stack("w3.weight_scale_inv")], dim=1).float()
        out["w2_scale"] = stack("w2.weight_scale_inv").float()
    return out


def module_tensors(holder, rows: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The TRTLLM_NAMES tensors a MoE module holds (rows of the expert dim if given), detached."""
    out = {}
    for name in TRTLLM_NAMES:
        t = getattr(holder, name, None)
        if t is not None:
            t = t.detach()
            out[name] = t if rows is None else t.index_select(0, rows.to(t.device))
    return out


SHARD_NAMES = dict(zip(TRTLLM_NAMES, ("w13", "w2", "w13_scale", "w2_scale")))


def stored_weight_loader(holders: Sequence, local_ids: Sequence[Sequence[int]]):
    """A hooks.WeightLoader handing the "w3_w1" layout's tensors as stored (w13 rows up first: the shard is
    declared W13Order.UP_GATE), so the composite tensors are what TensorRT-LLM's own kernels read."""
    index = [{e: i for i, e in enumerate(ids)} for ids in local_ids]

    def load(moe_layer: int, expert_ids: Sequence[int]) -> Dict[str, torch.Tensor]:
        missing = [e for e in expert_ids if e not in index[moe_layer]]
        if missing:
            raise ValueError(f"MoE layer {moe_layer}: experts {missing[:8]} are not loaded on this rank "
                             f"(it holds {list(local_ids[moe_layer])[:8]}...)")
        rows = torch.tensor([index[moe_layer][e] for e in expert_ids], dtype=torch.long)
        return {SHARD_NAMES[n]: t for n, t in module_tensors(holders[moe_layer], rows).items()}

    return load


def stored_rows(weights, expert_ids: Sequence[int]) -> Dict[str, torch.Tensor]:
    """TensorRT-LLM's tensors (TRTLLM_NAMES keys) of `expert_ids`, read from composite ExpertWeights that hold
    them as stored (stored_weight_loader)."""
    idx = list(expert_ids)
    return {n: getattr(weights, s)[idx] for n, s in SHARD_NAMES.items() if getattr(weights, s) is not None}


@dataclass(frozen=True)
class StagedTensor:
    """A module parameter moved to host memory, with what restoring it on its device needs."""

    name: str
    param: torch.nn.Parameter
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    device: torch.device

    def back_to_device(self) -> None:
        """Undo the staging: the host copy back on the device (a failed setup)."""
        self.param.data = self.param.data.to(self.device)

    def drop(self) -> None:
        """Free the host copy: the shard holds these experts now."""
        self.param.data = self.param.data.new_empty(0)


def stage_to_host(holder) -> List[StagedTensor]:
    """Move a module's expert tensors to host memory in place."""
    recs = []
    for name in TRTLLM_NAMES:
        p = getattr(holder, name, None)
        if p is not None:
            recs.append(StagedTensor(name, p, tuple(p.shape), p.stride(), p.device))
            p.data = p.data.to("cpu")
    return recs


def restore_module_tensor(rec: StagedTensor, tensors: Mapping[str, torch.Tensor]) -> None:
    """Give a staged parameter its values back, on its device, with its strides."""
    buf = torch.empty_strided(rec.shape, rec.stride, dtype=rec.param.dtype, device=rec.device)
    buf.copy_(tensors[rec.name])
    rec.param.data = buf
