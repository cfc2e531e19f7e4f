"""Stand-in of TensorRT-LLM's ConfigurableMoE (_torch/modules/fused_moe/configurable_moe.py), in the two shapes
upstream has had, built along upstream's construction path:

* "1.2": __init__ creates the backend (create_moe_backend(..., without_comm=True)), mirrors the partition onto it,
  then `self.comm = self._create_comm_strategy_auto()`; calculate_num_chunks sums every rank's tokens.
* "main" (the composite-view DWDP version, _torch/moe/fused_moe/configurable_moe.py): __init__ builds and syncs the
  backend (_create_and_sync_backend), registers upstream's own DWDP layers (enable_dwdp), sets
  `self.comm = self._create_comm_strategy_auto()` (None for a DWDP layer), and last builds the forward scheduler,
  which reads comm (create_moe_scheduler(self)); calculate_num_chunks counts the padded dispatch with a comm,
  max(all_rank_num_tokens) for a DWDP layer, and asserts one rank's list otherwise.

The facts and their sources are in tests/contracts/*.json; tests/test_trtllm_contracts.py checks this file.
"""

from torch import nn

import trtllm_fakes as fk

# what ConfigurableMoE mirrors onto its backend after building it (main: _BACKEND_SYNC_ATTRS; 1.2: the same names,
# assigned one by one)
SYNC_ATTRS = ("layer_idx", "num_slots", "layer_load_balancer", "initial_local_expert_ids",
              "initial_global_assignments", "slot_start", "slot_end", "expert_size_per_partition")


class AllGatherReduceScatter:
    """The fallback exchange strategy (communication/allgather_reducescatter.py)."""


def create_strategy(moe):
    """CommunicationFactory.create_strategy in small: None without attention DP or with one DP rank, else at least
    AllGatherReduceScatter."""
    return AllGatherReduceScatter() if moe.use_dp and moe.ep_size > 1 else None


class Scheduler:
    """main's forward scheduler (moe_scheduler.py): built last in __init__, it keeps the exchange it was built with."""

    def __init__(self, moe):
        self.comm = moe.comm


def create_moe_scheduler(moe):
    return Scheduler(moe)


class ConfigurableMoE(nn.Module):
    """Wrapper whose .backend holds the tensors. backend_kw are the fake backend's arguments (fk._FusedMoE)."""

    def __init__(self, version="main", backend_cls=None, **backend_kw):
        super().__init__()
        assert version in ("1.2", "main")
        if version == "1.2":  # interface.py, 1.2 line: without EPLB the experts split evenly or not at all
            assert backend_kw["num_experts"] % backend_kw.get("ep_size", 1) == 0
        self.version = version
        wrapper = (backend_cls or fk.CutlassFusedMoE)(**backend_kw)  # MoE.__init__'s attributes, as the wrapper's own
        for name in ("routing_method", "num_experts", "hidden_size", "intermediate_size",
                     "intermediate_size_per_partition", "layer_idx", "ep_size", "ep_rank", "tp_size", "use_dp",
                     "layer_load_balancer", "num_slots", "slot_start", "slot_end", "expert_size_per_partition",
                     "initial_local_expert_ids", "initial_global_assignments", "parallel_size", "activation_type"):
            setattr(self, name, getattr(wrapper, name))
        self._backend_cls, self._backend_kw = backend_cls or fk.CutlassFusedMoE, backend_kw
        self.moe_max_num_tokens = 1 << 20  # max_num_tokens * dp_size by default: one chunk here
        self._bind_backend()
        if version == "main":
            self.dwdp_manager = None  # get_global_dwdp_manager(): upstream's own DWDP is off
            self.enable_dwdp = False  # upstream: True for CuteDSL NVFP4 layers under dwdp_config only
        self.comm = self._create_comm_strategy_auto()
        if version == "main":
            self.scheduler = create_moe_scheduler(self)

    def _bind_backend(self):
        self.backend = self._backend_cls(**self._backend_kw)  # layer_idx=None upstream, then the sync below
        self.backend.routing_method = self.routing_method  # create_moe_backend(routing_method=routing_method, ...)
        for name in SYNC_ATTRS:
            setattr(self.backend, name, getattr(self, name))

    def _create_comm_strategy_auto(self):
        if self.version == "main" and self.enable_dwdp:
            return None
        return create_strategy(self)

    def calculate_num_chunks(self, all_rank_num_tokens):
        if self.version == "1.2":
            rows = sum(all_rank_num_tokens)
        elif self.use_dp and self.comm is not None:
            rows = len(all_rank_num_tokens) * max(all_rank_num_tokens)
        elif self.enable_dwdp:
            rows = max(all_rank_num_tokens)
        else:
            assert len(all_rank_num_tokens) == 1, (
                f"non-DP path expects a single-element list, got {len(all_rank_num_tokens)}")
            rows = all_rank_num_tokens[0]
        return (rows + self.moe_max_num_tokens - 1) // self.moe_max_num_tokens

    def forward(self, x, router_logits, do_finalize=True, output_dtype=None, all_rank_num_tokens=None,
                use_dp_padding=None, lora_params=None, input_ids=None, **kwargs):
        counts = all_rank_num_tokens if all_rank_num_tokens is not None else [x.shape[0]]
        assert self.calculate_num_chunks(counts) <= 1, "the stand-in runs one chunk"
        if self.version == "main" and self.scheduler.comm is not self.comm:
            raise RuntimeError("the scheduler was built with another exchange than the wrapper's")
        if self.comm is not None:
            raise RuntimeError(f"expert-parallel exchange ran: the wrapper's {type(self.comm).__name__}")
        return self.backend.forward(x, router_logits, do_finalize, output_dtype, all_rank_num_tokens,
                                    use_dp_padding, lora_params, input_ids, **kwargs)
