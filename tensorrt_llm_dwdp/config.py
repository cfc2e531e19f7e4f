"""User options for DWDP, validated before any memory is touched.

Every error names the option, the value and the fix, so a deployment fails at start-up
with a sentence rather than deep inside a copy engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Tuple


class Choice(str, Enum):
    """An option with named values: a member equals its string and prints as it, so options, JSON and messages
    read the same as plain strings would."""

    def __str__(self) -> str:
        return self.value


class WeightDtype(Choice):
    """The dtype of expert weights, and what it implies. A member equals its string (torch's dtype name), so
    options, JSON and messages read as the user writes them; the FP8 name is spelled here only."""

    BF16 = "bfloat16"
    FP16 = "float16"
    FP32 = "float32"
    FP8 = "float8_e4m3fn"  # DeepSeek-V3 block-scaled: 128x128 weight scales travel with each expert

    @property
    def is_fp8(self) -> bool:
        return self is WeightDtype.FP8

    @property
    def itemsize(self) -> int:
        return {WeightDtype.FP8: 1, WeightDtype.FP32: 4}.get(self, 2)

    @property
    def sim_precision(self) -> str:
        """The performance model's precision for these experts."""
        return "fp8" if self.is_fp8 else "bf16"

    def torch_dtype(self):
        import torch  # NOTE: here, not at import: the launcher and the simulator run without torch
        return getattr(torch, self.value)


class DepDispatch(Choice):
    """What DEP's dispatch rows carry: BF16 (the activations as they are) or FP8 (1x128 e4m3 rows with their fp32
    scales, what an FP8 expert kernel would quantize them to anyway). AUTO: FP8 where the experts are FP8 and the
    expert kernel quantizes its activations 1x128, else BF16. The combine is in the activations' dtype either way."""

    AUTO = "auto"
    BF16 = "bf16"
    FP8 = "fp8"


class DepRows(Choice):
    """How a GPU rank sizes DEP's expert step on the rows it received. BOUND: the receive buffer's static shape,
    world x max_num_tokens rows x top-k: no host sync, capturable in a CUDA graph (TensorRT-LLM's fixed-capacity
    all-to-all runs so), but at DeepSeek-V3 shapes on 8 ranks and 16K tokens its temporaries are tens of GB. EXACT:
    one host read of the received row and assignment counts per layer, then buffers of exactly those (DeepEP's
    normal mode reads its received count on the host the same way). AUTO: BOUND where its temporaries fit
    (runtime.dep.rows_choice), else EXACT. CPU ranks are always exact."""

    AUTO = "auto"
    BOUND = "bound"
    EXACT = "exact"


def is_fp8(dtype) -> bool:
    """Whether a weight dtype name (or WeightDtype) is the block-scaled FP8 one."""
    return str(dtype) == WeightDtype.FP8.value


class BackendKind(Choice):
    """Where shard pieces live and how peers map them (memory.factory builds each); equals its string."""

    AUTO = "auto"  # cuda_vmm where a GPU is used, cpu_shm otherwise
    CPU_SHM = "cpu_shm"
    CUDA_IPC = "cuda_ipc"  # legacy IPC handles: the composite views need a second copy of the shard
    CUDA_VMM = "cuda_vmm"  # cuMemCreate + POSIX file descriptors (one node)
    CUDA_FABRIC = "cuda_fabric"  # cuMemCreate + fabric handles (multi-node NVLink domains)

    @property
    def needs_cuda(self) -> bool:
        return self.value.startswith("cuda")


class PullIssue(Choice):
    """How GPU ranks issue a layer's pull; equals its string."""

    GRAPH = "graph"  # captured per layer and slot, one launch
    BATCHED = "batched"  # one cudaMemcpyBatchAsync
    PER_SLICE = "per_slice"  # one cudaMemcpyAsync per slice


class Mode(Choice):
    """How a run serves its MoE layers; equals its string. AUTO asks the performance model (sim.decide) for DWDP or
    DEP; DEP_EPLB is the bench's DEP with redundant experts, measured beside plain DEP."""

    LOCAL = "local"  # every rank holds every expert (the bench's baseline)
    DWDP = "dwdp"
    DEP = "dep"
    DEP_EPLB = "dep+eplb"
    AUTO = "auto"


# The choice lists options and help texts show.
WEIGHT_DTYPES = tuple(d.value for d in WeightDtype)
MEMORY_BACKENDS = tuple(b.value for b in BackendKind)
PULL_ISSUE_MODES = tuple(p.value for p in PullIssue)
# NOTE: 32 MiB, measured on 2 H200s over NVLink: with every GPU pulling, 2 MiB slices kept 75% of the link and
# slowed a DeepSeek-V3 expert MLP computing beside them by 25-75%; 32 MiB kept 97% and slowed it 3-4%.
DEFAULT_SLICE_BYTES = 32 << 20


class DwdpConfigError(ValueError):
    """A DWDP option is invalid; the message names the option, its value and the fix."""

    def __init__(self, option: str, value, problem: str, fix: str):
        self.option, self.value = option, value
        self.problem, self.fix = problem, fix
        shown = value.value if isinstance(value, Enum) else value  # an option's value as the user wrote it
        super().__init__(f"{option}={shown!r}: {problem}. Fix: {fix}.")


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class DwdpConfig:
    """Options of one DWDP deployment.

    group_size: ranks that share one copy of the routed experts (must be NVLink peers).
    num_groups: groups in the world; None means world_size // group_size.
    num_experts: routed experts per MoE layer.
    experts_per_rank: experts each rank holds; None spreads them evenly (some ranks get one
        more when num_experts is not divisible); more than num_experts / group_size makes
        neighbouring ranks overlap (redundant placement).
    num_prefetch_experts: optional cross-check, must equal num_experts - experts_per_rank.
    placement: explicit expert ids held by each rank of a group; overrides experts_per_rank.
    prefetch_depth: prefetch slots (ping-pong is 2); layer l+depth is pulled after layer l ends.
    slice_bytes: size of one copy; pulls are cut into slices taken round-robin across peers.
    weight_dtype: dtype of the expert weights in the shards (WeightDtype); FP8 adds DeepSeek-V3
        128x128 block scales (w13_scale, w2_scale) that travel with each expert.
    memory_backend: "cpu_shm" (CPU ranks); "cuda_ipc" (legacy IPC handles), "cuda_vmm" (cuMemCreate,
        POSIX file descriptors) or "cuda_fabric" (cuMemCreate, fabric handles) for GPU ranks; or "auto".
    pull_issue: how GPU ranks issue a layer's pull: "graph" (captured per layer and slot, one
        launch), "batched" (one cudaMemcpyBatchAsync) or "per_slice" (one cudaMemcpyAsync each).
    """

    group_size: int
    num_experts: int
    num_groups: Optional[int] = None
    experts_per_rank: Optional[int] = None
    num_prefetch_experts: Optional[int] = None
    placement: Optional[Tuple[Tuple[int, ...], ...]] = None
    prefetch_depth: int = 2
    slice_bytes: int = DEFAULT_SLICE_BYTES
    weight_dtype: WeightDtype = WeightDtype.BF16
    memory_backend: BackendKind = BackendKind.AUTO
    pull_issue: PullIssue = PullIssue.GRAPH

    def __post_init__(self):
        if self.placement is not None:
            object.__setattr__(self, "placement", tuple(tuple(int(e) for e in r) for r in self.placement))
        self._validate()
        for name, kind in (("weight_dtype", WeightDtype), ("memory_backend", BackendKind), ("pull_issue", PullIssue)):
            object.__setattr__(self, name, kind(getattr(self, name)))  # a string given is its member from here on

    def _validate(self):
        check_fields({f: getattr(self, f) for f in _FIELD_RULES})
        if self.placement is not None:
            self._validate_placement()
            return
        if self.experts_per_rank is not None:
            need = math.ceil(self.num_experts / self.group_size)
            if self.experts_per_rank > self.num_experts:
                raise DwdpConfigError(
                    "experts_per_rank", self.experts_per_rank,
                    f"a rank cannot hold more than the model's {self.num_experts} experts",
                    f"use a value in [{need}, {self.num_experts}]")
            if self.experts_per_rank < need:
                raise DwdpConfigError(
                    "experts_per_rank", self.experts_per_rank,
                    f"expert counts do not add up: {self.group_size} ranks x {self.experts_per_rank} experts "
                    f"cannot hold all {self.num_experts} experts, so some expert has no owner",
                    f"set experts_per_rank >= {need} or group_size >= {math.ceil(self.num_experts / self.experts_per_rank)}")
        if self.num_prefetch_experts is not None:
            if self.experts_per_rank is None:
                raise DwdpConfigError(
                    "num_prefetch_experts", self.num_prefetch_experts,
                    "it cross-checks experts_per_rank, which is unset",
                    "set experts_per_rank too, or drop num_prefetch_experts")
            want = self.num_experts - self.experts_per_rank
            if self.num_prefetch_experts != want:
                raise DwdpConfigError(
                    "num_prefetch_experts", self.num_prefetch_experts,
                    f"expert counts do not add up: experts_per_rank ({self.experts_per_rank}) + "
                    f"num_prefetch_experts must equal num_experts ({self.num_experts})",
                    f"set num_prefetch_experts={want}")

    def _validate_placement(self):
        p = self.placement
        if len(p) != self.group_size:
            raise DwdpConfigError("placement", p, f"it lists {len(p)} ranks but group_size is {self.group_size}",
                                  "give one list of expert ids per rank of the group")
        for r, experts in enumerate(p):
            if not experts:
                raise DwdpConfigError("placement", p, f"rank {r} lists no experts",
                                      "give every rank of the group part of the experts (drop a trailing ';')")
            bad = [e for e in experts if not 0 <= e < self.num_experts]
            if bad:
                raise DwdpConfigError("placement", p, f"rank {r} lists expert ids {bad} outside [0, {self.num_experts})",
                                      "use expert ids of the model")
            if len(set(experts)) != len(experts):
                raise DwdpConfigError("placement", p, f"rank {r} lists an expert twice",
                                      "list each expert at most once per rank")
        owned = set().union(*map(set, p))
        unowned = sorted(set(range(self.num_experts)) - owned)
        if unowned:
            raise DwdpConfigError("placement", p, f"experts {unowned[:8]}{'...' if len(unowned) > 8 else ''} have no owner",
                                  "give every expert to at least one rank")

    # Checks that need facts of the run, still before any allocation.

    def resolved_num_groups(self, world_size: int) -> int:
        """Validate the world against the group layout and return the number of groups."""
        if world_size % self.group_size:
            raise DwdpConfigError(
                "group_size", self.group_size, f"it does not divide the world of {world_size} ranks",
                f"use a divisor of {world_size} (e.g. {_largest_divisor_at_most(world_size, self.group_size)}) "
                "or launch a multiple of group_size ranks")
        groups = world_size // self.group_size
        if self.num_groups is not None and self.num_groups != groups:
            raise DwdpConfigError(
                "num_groups", self.num_groups,
                f"{self.num_groups} groups x group_size {self.group_size} != world size {world_size}",
                f"set num_groups={groups} or leave it unset")
        return groups

    def check_memory(self, required_bytes: int, free_bytes: int, where: str = "device", detail: str = "") -> None:
        """Raise if the shard plus prefetch slots cannot fit the free memory."""
        if required_bytes > free_bytes:
            raise DwdpConfigError(
                "prefetch_depth", self.prefetch_depth,
                f"the local shard and {self.prefetch_depth} prefetch slots need {_fmt_bytes(required_bytes)}"
                f"{f' ({detail})' if detail else ''} but only {_fmt_bytes(free_bytes)} of {where} memory is free",
                "lower prefetch_depth, raise experts_per_rank only if memory allows, use a larger group_size, "
                "or free memory (e.g. a smaller KV cache)")


def _check_depth(value) -> None:
    if not _is_int(value):
        raise DwdpConfigError("prefetch_depth", value, "must be an integer", "set prefetch_depth=2 (ping-pong) or more")
    if value < 2:
        raise DwdpConfigError("prefetch_depth", value,
                              "DWDP needs at least two slots so one layer computes while the next is pulled",
                              "set prefetch_depth=2 (ping-pong) or more")
    if value > MAX_DEPTH:
        raise DwdpConfigError("prefetch_depth", value, f"is more than {MAX_DEPTH} slots",
                              "set prefetch_depth=2 (ping-pong); more slots only help with uneven layers")


def _check_slice(value) -> None:
    if not _is_int(value):
        raise DwdpConfigError("slice_bytes", value, "must be an integer number of bytes",
                              f"write it as an integer, e.g. {DEFAULT_SLICE_BYTES} (32 MiB)")
    if not 4096 <= value <= MAX_SLICE_BYTES:
        raise DwdpConfigError("slice_bytes", value, "a copy slice must be 4 KiB to 1 GiB",
                              f"use the default {DEFAULT_SLICE_BYTES} (32 MiB), or 8 MiB and up")


def _choice(option: str, choices, problem: str):
    def check(value):
        if value not in choices:
            raise DwdpConfigError(option, value, problem, f"use one of {', '.join(choices)}")
    return check


# Rules that need no other field; DwdpConfig applies them all, and a host that knows only some fields
# before the model is loaded (the launch wrapper) applies them to those.
_FIELD_RULES = {
    "group_size": lambda v: _positive_int("group_size", v, "use the number of NVLink peers that share the experts, "
                                                           "e.g. 4 or 8", MAX_GROUP),
    "num_experts": lambda v: _positive_int("num_experts", v, "use the model's number of routed experts"),
    "num_groups": lambda v: _positive_int("num_groups", v, "use world_size // group_size, or leave it unset",
                                          MAX_GROUP),
    "experts_per_rank": lambda v: _positive_int("experts_per_rank", v, "use at least ceil(num_experts / group_size)"),
    "num_prefetch_experts": lambda v: _nonnegative_int("num_prefetch_experts", v,
                                                       "use num_experts - experts_per_rank, or leave it unset"),
    "prefetch_depth": _check_depth,
    "slice_bytes": _check_slice,
    "weight_dtype": _choice("weight_dtype", WEIGHT_DTYPES, "unsupported weight dtype"),
    "memory_backend": _choice("memory_backend", MEMORY_BACKENDS, "unknown memory backend"),
    "pull_issue": _choice("pull_issue", PULL_ISSUE_MODES, "unknown way to issue pulls"),
}


def check_fields(values) -> None:
    """Apply the single-field rules of DwdpConfig to the fields in `values` (None means unset)."""
    for name, value in values.items():
        if name in _FIELD_RULES and value is not None:
            _FIELD_RULES[name](value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Upper bounds that no deployment reaches (an NVLink domain holds 72 GPUs; models have at most a few hundred
# experts per layer): a larger value is a typo, refused before it sizes anything.
MAX_GROUP = 1024
MAX_EXPERTS = 1 << 16
MAX_DEPTH = 64
MAX_SLICE_BYTES = 1 << 30


def _positive_int(option: str, value, fix: str, most: int = MAX_EXPERTS) -> None:
    if not _is_int(value) or value < 1:
        raise DwdpConfigError(option, value, "must be a positive integer", fix)
    if value > most:
        raise DwdpConfigError(option, value, f"is more than {most}", fix)


def _nonnegative_int(option: str, value, fix: str) -> None:
    if not _is_int(value) or not 0 <= value <= MAX_EXPERTS:
        raise DwdpConfigError(option, value, f"must be an integer in [0, {MAX_EXPERTS}]", fix)


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def parse_placement(text: str) -> Tuple[Tuple[int, ...], ...]:
    """Parse "0-3,8;4-7;..." (ranks separated by ';', ranges by ',') into expert id tuples."""
    if not text.strip():
        raise DwdpConfigError("placement", text, "is empty", 'write one list per rank, e.g. "0-7;8-15", or leave it unset')
    ranks = []
    for part in text.split(";"):
        ids = []
        items = [s.strip() for s in part.split(",")]
        if len(items) > 1 and not all(items):
            raise DwdpConfigError("placement", text, f"{part.strip()!r} has an empty item between commas",
                                  'write ids or ranges separated by single commas, e.g. "0-3,8;4-7"')
        for item in filter(None, items):
            lo, _, hi = item.partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                raise DwdpConfigError("placement", text, f"{item!r} is not an expert id or a range such as 0-7",
                                      'write ranks separated by ";" and ids or ranges by ",", e.g. "0-7;8-15"') from None
            if last < first:
                raise DwdpConfigError("placement", text, f"the range {item!r} runs backwards",
                                      f"write {last}-{first}")
            ids.extend(range(first, last + 1))
        ranks.append(tuple(ids))
    return tuple(ranks)

