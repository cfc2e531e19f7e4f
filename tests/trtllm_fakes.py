"""Stand-ins shaped like TensorRT-LLM's PyTorch backend, for adapter tests where it cannot be installed.

MoE modules carry the attributes and tensor layouts the adapter reads (see
integrations/trtllm/discover.py and layouts.py); `write_fake_package` writes a `tensorrt_llm`
package with the module paths the adapter patches.
"""

import os
import textwrap
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class ActivationType(IntEnum):
    """TensorRT-LLM's ActivationType (_torch/utils.py, the CUTLASS MoE kernels' C++ enum in Python). The MoE
    modules do not keep it: MoE.__init__ stores int(activation_type) (see tests/contracts)."""

    InvalidType = 0
    Identity = 1
    Gelu = 2
    Relu = 3
    Silu = 4
    Swiglu = 5
    Geglu = 6
    SwigluBias = 7
    Relu2 = 8


@dataclass(frozen=True, eq=False)
class SwigluActivation:
    """Newer main's activation carrier (fused_moe/activation.py): plain SwiGLU, or clamped."""

    clamp: Optional[float] = None


@dataclass(frozen=True, eq=False)
class SimpleActivation:
    """Newer main's carrier for kinds without constants (Silu, Geglu, Relu2...)."""

    kind: int


class RenormalizeRouting(nn.Module):
    """TensorRT-LLM's RenormalizeMoeRoutingMethod: top-k of the logits, softmax over the k."""

    def __init__(self, top_k):
        super().__init__()
        self.top_k = top_k
        self.fail_next = None  # an exception the next call raises: a step failing inside a MoE layer

    def apply(self, router_logits):
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        vals, ids = torch.topk(router_logits.float(), self.top_k, dim=-1)
        return ids.to(torch.int32), torch.softmax(vals, dim=-1)


def full_experts(num_experts, hidden, inter, seed, dtype=torch.float32):
    """Per-expert gate (w1), up (w3), down (w2) weights, as a checkpoint holds them."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g) / s[-1] ** 0.5).to(dtype)  # noqa: E731
    return {"w1": mk(num_experts, inter, hidden), "w3": mk(num_experts, inter, hidden),
            "w2": mk(num_experts, hidden, inter)}


def _dequant(w, scale, s):
    """A weight as float32; FP8 e4m3 with 128x128 fp32 block scales [.., rows/128, cols/128] dequantized."""
    if scale is None:
        return w.float()
    blocks = scale[s].float().repeat_interleave(128, 0).repeat_interleave(128, 1)
    return w.float() * blocks[: w.shape[0], : w.shape[1]]


class _FusedMoE(nn.Module):
    """Common part: an expert-parallel partition of the experts, TensorRT-LLM's MoE attributes."""

    def __init__(self, *, num_experts, hidden, inter, layer_idx, ep_size=1, ep_rank=0, top_k=2, use_dp=True,
                 dtype=torch.float32, activation_type=ActivationType.Swiglu, swiglu_limit_scalar=None):
        super().__init__()
        self.routing_method = RenormalizeRouting(top_k)
        self.num_experts, self.hidden_size, self.intermediate_size = num_experts, hidden, inter
        self.intermediate_size_per_partition = inter
        self.layer_idx, self.ep_size, self.ep_rank, self.tp_size, self.use_dp = layer_idx, ep_size, ep_rank, 1, use_dp
        self.cluster_size = 1  # mapping.moe_cluster_size
        # main splits experts ceil/floor where ep_size does not divide them (the first ranks get one more)
        base, extra = divmod(num_experts, ep_size)
        start = ep_rank * base + min(ep_rank, extra)
        self.expert_size_per_partition = n = base + (ep_rank < extra)
        self.initial_local_expert_ids = list(range(start, start + n))
        self.layer_load_balancer, self.bias, self.swiglu_alpha = None, False, None
        self.activation_type, self.swiglu_limit_scalar = int(activation_type), swiglu_limit_scalar
        self.dtype = dtype
        # what CutlassFusedMoE.__init__ derives from the partition (1.2): the slots this rank computes, and
        # parallel_size (mapping.tp_size: the attention-DP world), which turns on allgather / reducescatter
        self.num_slots, self.slot_start, self.slot_end = num_experts, start, start + n
        self.initial_global_assignments = list(range(num_experts))
        self.parallel_size = ep_size
        self.kernel_calls = 0  # grouped GEMMs this module ran over its own weight tensors

    # main's MoE.forward: everything after router_logits positional-or-keyword
    def forward(self, x, router_logits, do_finalize=True, output_dtype=None, all_rank_num_tokens=None,
                use_dp_padding=None, lora_params=None, input_ids=None, **kwargs):
        """TensorRT-LLM's forward_chunk in small: route, the attention-DP exchange where parallel_size > 1,
        the fused MoE kernel over this module's slots."""
        assert do_finalize, "CutlassFusedMoE does not support do_finalize=False"
        ids, scales = self.routing_method.apply(router_logits)
        assert ids.dtype == torch.int32 and scales.dtype == torch.float32
        if self.use_dp and self.parallel_size > 1:
            raise RuntimeError(f"expert-parallel exchange ran: allgather over {self.parallel_size} ranks "
                               "(no communicator in this stand-in)")
        y = self.fused_moe(x, ids, scales)
        return y.to(output_dtype if output_dtype is not None else x.dtype)

    def fused_moe(self, x, ids, scales):
        """The grouped GEMM: each token's experts that fall in this rank's slots [slot_start, slot_end),
        read from this module's own tensors at slot (expert - slot_start); other experts contribute nothing."""
        assert self.w3_w1_weight.shape[0] == self.expert_size_per_partition == self.slot_end - self.slot_start
        self.kernel_calls += 1
        y = torch.zeros(x.shape[0], self.hidden_size, dtype=torch.float32, device=x.device)
        xf = x.float()
        for s in range(self.expert_size_per_partition):
            rows, k = torch.nonzero(ids.long() == self.slot_start + s, as_tuple=True)
            if rows.numel() == 0:
                continue
            gate, up, down = self.expert_mats(s)
            h = F.silu(xf[rows] @ gate.t()) * (xf[rows] @ up.t())
            y.index_add_(0, rows, scales[rows, k, None] * (h @ down.t()))
        return y

    def expert_mats(self, s):
        """(gate [I, H], up [I, H], down [H, I]) of slot s, float32, from this module's tensors; FP8 block scales
        from quant_scales, what the quant method set up (the kernels' scale arguments)."""
        w13_scale, w2_scale = getattr(self, "quant_scales", None) or (None, None)
        up, gate = _dequant(self.w3_w1_weight[s], w13_scale, s).chunk(2)
        return gate, up, _dequant(self.w2_weight[s], w2_scale, s)


class CutlassFusedMoE(_FusedMoE):
    """w3_w1_weight [n, 2I, H] up rows first; w2_weight [n, H, I] (quantization.py, 1.2 and main)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        n, h, i = self.expert_size_per_partition, self.hidden_size, self.intermediate_size
        self.w3_w1_weight = nn.Parameter(torch.empty(n, 2 * i, h, dtype=self.dtype), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(n, h, i, dtype=self.dtype), requires_grad=False)

    def load_weights(self, full):
        ids = self.initial_local_expert_ids
        self.w3_w1_weight.data.copy_(torch.cat([full["w3"][ids], full["w1"][ids]], dim=1).to(self.dtype))
        self.w2_weight.data.copy_(full["w2"][ids].to(self.dtype))


class DeepSeekFP8BlockScalesFusedMoEMethod:
    """Hopper: 128x128 fp32 block scales as loaded. setup_quant_scales(module) is FusedMoEMethodBase's hook
    (quantization.py), rerun after loading "as the tensors may have been modified"; the stand-in keeps the tensors
    as they were then, so a scale Parameter whose .data changed without a rerun is read stale."""

    def setup_quant_scales(self, module):
        module.quant_scales = (module.w3_w1_weight_scaling_factor.data, module.w2_weight_scaling_factor.data)


class DeepSeekFP8BlockScalesFusedMoEMethodDeepGemm(DeepSeekFP8BlockScalesFusedMoEMethod):
    """Blackwell (selected by CUTLASS too): scales resmoothed to UE8M0, four exponents packed per int32."""


class DeepGemmFusedMoE(CutlassFusedMoE):
    """FP8 block scales as CutlassFusedMoE holds them on Hopper (DeepSeekFP8BlockScalesFusedMoEMethod; the real
    DeepGemmFusedMoE is SM100+): w3_w1_weight_scaling_factor [n, 2I/128, H/128] (w3 first), w2 [n, H/128, I/128].
    blackwell=True: the scales as DeepGEMM's Blackwell method leaves them, int32 [n, rows, ceil(cols/512)]
    (one UE8M0 exponent per 128 columns, per weight row, four per int32)."""

    def __init__(self, blackwell=False, **kw):
        super().__init__(dtype=torch.float8_e4m3fn, **kw)
        n, h, i = self.expert_size_per_partition, self.hidden_size // 128, self.intermediate_size // 128
        self.quant_method = (DeepSeekFP8BlockScalesFusedMoEMethodDeepGemm if blackwell
                             else DeepSeekFP8BlockScalesFusedMoEMethod)()
        if blackwell:
            hh, ii = self.hidden_size, self.intermediate_size
            self.w3_w1_weight_scaling_factor = nn.Parameter(torch.zeros(n, 2 * ii, -(-h // 4), dtype=torch.int32),
                                                            requires_grad=False)
            self.w2_weight_scaling_factor = nn.Parameter(torch.zeros(n, hh, -(-i // 4), dtype=torch.int32),
                                                         requires_grad=False)
            return
        self.w3_w1_weight_scaling_factor = nn.Parameter(torch.empty(n, 2 * i, h), requires_grad=False)
        self.w2_weight_scaling_factor = nn.Parameter(torch.empty(n, h, i), requires_grad=False)

    def load_fp8(self, q, scales):
        """q/scales: {"w1", "w3", "w2"} fp8 weights and [.., rows/128, cols/128] block scales of all experts."""
        ids = self.initial_local_expert_ids
        self.w3_w1_weight.data.copy_(torch.cat([q["w3"][ids], q["w1"][ids]], dim=1))
        self.w2_weight.data.copy_(q["w2"][ids])
        self.w3_w1_weight_scaling_factor.data.copy_(torch.cat([scales["w3"][ids], scales["w1"][ids]], dim=1))
        self.w2_weight_scaling_factor.data.copy_(scales["w2"][ids])
        self.quant_method.setup_quant_scales(self)  # post_load_weights


class TritonFusedMoE(_FusedMoE):
    """w3_w1_weight [n, H, 2I], columns gate, up, gate, up...; w2_weight [n, I, H] (fused_moe_triton.py).

    version "1.2" asserts what 1.2's __init__ asserts (no attention DP, no expert parallelism); "main"
    raises as main does off Hopper (sm != 9) with ep_size > 1 and asserts Renormalize routing."""

    def __init__(self, version="main", sm=9, **kw):
        super().__init__(**kw)
        assert isinstance(self.routing_method, RenormalizeRouting), \
            "routing_method must be an instance of RenormalizeMoeRoutingMethod for TritonFusedMoE"
        if version == "1.2":
            assert not self.use_dp, "AttentionDP is not supported in TritonFusedMoE."
            assert self.ep_size == 1, " TritonFusedMoE does not support expert parallelism (ep_size > 1)."
        elif sm != 9 and self.ep_size > 1:
            raise NotImplementedError("TritonFusedMoE is only supported on Hopper with EP size > 1.")
        n, h, i = self.expert_size_per_partition, self.hidden_size, self.intermediate_size
        self.w3_w1_weight = nn.Parameter(torch.empty(n, h, 2 * i, dtype=self.dtype), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(n, i, h, dtype=self.dtype), requires_grad=False)

    def load_weights(self, full):
        ids = self.initial_local_expert_ids
        w = self.w3_w1_weight.data
        for j in range(self.intermediate_size):  # explicit column by column, as the Triton kernel reads them
            w[:, :, 2 * j].copy_(full["w1"][ids, j, :])
            w[:, :, 2 * j + 1].copy_(full["w3"][ids, j, :])
        self.w2_weight.data.copy_(full["w2"][ids].transpose(1, 2))
        # TensorRT-LLM re-strides the weights so that stride(-2) == 1 (update_weight_stride)
        self.w3_w1_weight.data = self.w3_w1_weight.data.transpose(1, 2).contiguous().transpose(1, 2)

    def expert_mats(self, s):
        w = self.w3_w1_weight[s].float()
        return w[:, 0::2].t(), w[:, 1::2].t(), self.w2_weight[s].float().t()


class TRTLLMGenFusedMoE(CutlassFusedMoE):
    """A backend whose weights are shuffled for its kernels: the adapter must refuse it."""


class Block(nn.Module):
    """A decoder block's MoE call as TensorRT-LLM's models make it: under attention DP all_rank_num_tokens has one
    entry per DP rank (the stand-in repeats this rank's count: only the length and this rank's entry matter here)."""

    def __init__(self, experts, hidden, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.gate = nn.Parameter(torch.randn(experts.num_experts, hidden, generator=g), requires_grad=False)
        self.experts = experts
        self.dp_size = experts.ep_size if experts.use_dp else 1

    def forward(self, x):
        return x + self.experts(x, x.float() @ self.gate.t(), output_dtype=x.dtype,
                                all_rank_num_tokens=[len(x)] * self.dp_size)


class Decoder(nn.Module):
    """MoE blocks; an extra MTP block (layer_idx == num_hidden_layers) that forward does not run."""

    def __init__(self, blocks, mtp=None):
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.mtp = mtp
        self.config = SimpleNamespace(num_hidden_layers=len(blocks))

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return x


def reference_forward(x, blocks, fulls):
    """The same decoder computed from the full per-expert weights, independently of any layout."""
    for b, full in zip(blocks, fulls, strict=True):
        ids, p = b.experts.routing_method.apply(x.float() @ b.gate.t())
        y = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for k in range(ids.shape[1]):
                e = int(ids[t, k])
                h = F.silu(full["w1"][e].to(x.dtype) @ x[t]) * (full["w3"][e].to(x.dtype) @ x[t])
                y[t] += p[t, k].to(x.dtype) * (full["w2"][e].to(x.dtype) @ h)
        x = x + y
    return x


class Engine:
    """PyTorchModelEngine stand-in: holds .model; forward runs one step. warmup() runs the model the way
    main's DecoderRunner._forward_warmup does: the model's forward, not engine.forward."""

    def __init__(self, model):
        self.model = model

    def forward(self, x):
        return self.model(x)

    def warmup(self, x):
        return self.model(x)


class CausalLM(nn.Module):
    """DecoderModelForCausalLM stand-in: the decoder at .model (what TensorRT-LLM compiles), the Hugging
    Face config at .model_config.pretrained_config and .config."""

    def __init__(self, decoder, pretrained_config=None):
        super().__init__()
        self.model = decoder
        self.config = pretrained_config if pretrained_config is not None else decoder.config
        self.model_config = SimpleNamespace(pretrained_config=self.config)

    def forward(self, x):
        return self.model(x)


class PyExecutor:
    """PyExecutor._forward_step as 1.2 and main have it: an exception is handed to _handle_errors, which
    fails the step's requests, and the executor serves the next step."""

    def __init__(self, engine):
        self.engine, self.errors = engine, []

    def _handle_errors(self, error):
        self.errors.append(error)

    def _forward_step(self, x):
        try:
            return self.engine.forward(x)
        except Exception as e:  # noqa: BLE001 - what the executor does
            self._handle_errors(e)
            return None


FAKE_FILES = {
    "tensorrt_llm/__init__.py": '__version__ = "0.0.0+fake"\n',
    "tensorrt_llm/_utils.py": """
        _comm = None


        def mpi_comm():
            # an Intracomm subclass, as set_mpi_comm installs one in the disaggregated worker
            global _comm
            from mpi4py import MPI

            class Comm(MPI.Intracomm):
                pass

            if _comm is None:
                _comm = Comm(MPI.COMM_WORLD)
            return _comm
    """,
    "tensorrt_llm/llmapi/mpi_session.py": """
        import sys

        STARTED = []


        class MPIPoolExecutor:  # records what mpi4py.futures.MPIPoolExecutor would be given
            def __init__(self, max_workers=None, **kwargs):
                STARTED.append(dict(kwargs, max_workers=max_workers))


        class MpiPoolSession:
            def __init__(self, n_workers):
                self.n_workers, self.mpi_pool = n_workers, None
                self._start_mpi_pool()

            def _start_mpi_pool(self):
                assert not self.mpi_pool, 'MPI session already started'
                self.mpi_pool = MPIPoolExecutor(max_workers=self.n_workers, path=sys.path)
    """,
    "tensorrt_llm/llmapi/__init__.py": "",
    "tensorrt_llm/llmapi/llm_args.py": """
        KNOWN = {"model", "max_num_tokens", "enable_attention_dp", "cuda_graph_config", "moe_expert_parallel_size"}

        def update_llm_args_with_extra_dict(llm_args, llm_args_dict, extra_llm_api_options=None):
            bad = sorted(set(llm_args_dict) - KNOWN)
            if bad:  # LlmArgs has extra="forbid"
                raise ValueError(f"Extra inputs are not permitted: {bad}")
            return dict(llm_args, **llm_args_dict)
    """,
    "tensorrt_llm/llmapi/llm_utils.py": "from .llm_args import update_llm_args_with_extra_dict  # noqa: F401\n",
    "tensorrt_llm/_torch/__init__.py": "",
    "tensorrt_llm/_torch/modules/__init__.py": "",
    "tensorrt_llm/_torch/modules/fused_moe/__init__.py": "",
    # the stand-in class itself, so a patch of the module's class reaches the modules the tests build
    "tensorrt_llm/_torch/modules/fused_moe/configurable_moe.py": "from trtllm_fakes_configurable import ConfigurableMoE  # noqa: F401\n",
    "tensorrt_llm/_torch/pyexecutor/__init__.py": "",
    "tensorrt_llm/_torch/pyexecutor/model_engine.py": """
        import torch


        class PyTorchModelEngine:
            def __init__(self, *, model_path=None, llm_args=None, model=None, is_draft_model=False,
                         torch_compile=False):
                self.model, self.model_path, self.llm_args = model, model_path, llm_args
                self.is_draft_model = is_draft_model
                self._torch_compile_enabled = torch_compile
                if torch_compile:  # as TensorRT-LLM does inside __init__, before anyone attaches
                    self.model.model = torch.compile(self.model.model, backend="eager")

            def forward(self, x):
                return self.model(x)
    """,
}


def write_fake_package(root):
    """Write the fake `tensorrt_llm` package under directory root; returns root."""
    for rel, text in FAKE_FILES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
    return root


class TwoRankView:
    """Rank `rank` of a two-rank communicator whose ranks loaded TensorRT-LLM's even split of 8 experts;
    enough for the checks attach() makes before its first real collective."""

    def __init__(self, rank, loaded=((0, 1, 2, 3), (4, 5, 6, 7))):
        self.rank, self.loaded = rank, loaded

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return len(self.loaded)

    def allgather(self, _mine):
        return list(self.loaded)


from trtllm_fakes_configurable import AllGatherReduceScatter, ConfigurableMoE  # noqa: E402,F401 - re-exported
