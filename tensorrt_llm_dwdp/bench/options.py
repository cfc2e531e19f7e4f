"""The bench job's options: their definitions (`build_parser`, which `trtllm-dwdp bench` extends), every check
that needs no memory (`validate`, run by the launcher before mpirun and by each rank), and what they mean for a
run (the model, the DwdpConfig, each rank's requests, mode auto's prediction). `bench/job.py` runs them.
"""

from __future__ import annotations

import argparse
import os
from typing import List, Optional

from ..commands.usage import Parser, UsageError, check_output_path, options_named, positive
from ..config import (DEFAULT_SLICE_BYTES, MEMORY_BACKENDS, BackendKind, DepDispatch, DepRows, DwdpConfig, Mode,
                      WeightDtype, is_fp8)
from ..runtime.model_config import PRESETS, ModelConfig, cut, preset
from ..runtime.schedule import least_loaded
from ..workloads.popularity import TARGET_IMBALANCE, TARGET_RANKS, default_skew
from ..workloads.requests import MAX_ISL, load_trace, make_requests, parse_isl
from .capacity import check_fits

# NOTE: no torch here: the launcher imports this module to check the options, and answers bad input without
# paying for torch.

MODES = (Mode.LOCAL.value, Mode.DWDP.value, Mode.DEP.value, Mode.AUTO.value)  # --modes (dep+eplb: --eplb)
MAX_REQUESTS = 100_000  # per rank: the shared stream is held on every rank
MAX_WARMUP = 100
# DwdpConfig fields the job sets from its flags
JOB_FLAGS = {"group_size": "--group-size", "prefetch_depth": "--depth", "slice_bytes": "--slice-mib",
             "memory_backend": "--backend"}


def build_parser(prog: str = "python -m tensorrt_llm_dwdp.bench.job") -> Parser:
    """The job's options in groups (model, workload, modes, output); `trtllm-dwdp bench` adds its own to them."""
    p = Parser(prog=prog, description="One benchmark run under mpirun: every mode (local, dwdp, dep) on the same "
               "model and requests.")
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)} (default tiny)")
    g.add_argument("--checkpoint", default=None, help="Hugging Face checkpoint directory (config.json + "
                   "*.safetensors) of a DeepSeek-V2/V3 or Qwen3-MoE model; overrides --preset")
    g.add_argument("--layers", type=int, default=None, help="keep this many decoder layers of the model")
    g.add_argument("--vocab", type=int, default=None, help="shrink the vocabulary (embedding and LM head)")
    g.add_argument("--weight-dtype", default=WeightDtype.BF16.value,
                   choices=[WeightDtype.BF16.value, WeightDtype.FP8.value],
                   help=f"routed experts in every mode: {WeightDtype.BF16}, or {WeightDtype.FP8} with DeepSeek-V3 "
                        "128x128 block scales (random presets are quantized per block; hidden and moe_inter "
                        "multiples of 128)")
    g.add_argument("--routing-skew", type=float, default=None,
                   help="random presets: expert popularity Zipf(S) per MoE layer, the simulator's routing model "
                        f"(default: per model, DEP's busiest rank {TARGET_IMBALANCE}x the mean expert load at "
                        f"{TARGET_RANKS} ranks, as the simulator assumes: workloads/popularity.py); 0 is uniform")
    g = p.add_argument_group("workload")
    g.add_argument("--isl", default="normal:128:0.2", help="8192, or normal|lognormal|uniform:MEAN:CV")
    g.add_argument("--requests", type=int, default=24, help="requests per rank (the shared stream has ranks x this)")
    g.add_argument("--balance", default="least-loaded", choices=("least-loaded", "per-rank"),
                   help="least-loaded: one shared stream, each request to the rank with the fewest tokens "
                        "(attention-DP balancing); per-rank: each rank its own stream")
    g.add_argument("--chunked-prefill", action="store_true",
                   help="split a request longer than the room left in a batch across iterations (every mode)")
    g.add_argument("--request-rate", type=float, default=None, help="requests/s per rank (default: closed loop)")
    g.add_argument("--trace", default=None, help="JSONL trace (--balance per-rank: rank r takes lines r, r+N, ...; replaces --isl, "
                   "--requests and --request-rate)")
    g.add_argument("--max-num-tokens", type=int, default=512, help="token budget per rank per iteration")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("modes")
    g.add_argument("--modes", default="dwdp,dep,local", help=f"comma list of {', '.join(MODES)}")
    g.add_argument("--group-size", type=int, default=None, help="DWDP group size (default: all ranks)")
    g.add_argument("--depth", type=int, default=2, help="DWDP prefetch slots")
    g.add_argument("--slice-mib", type=float, default=DEFAULT_SLICE_BYTES / 2**20,
                   help="DWDP pull slice size, MiB (default: DwdpConfig's)")
    g.add_argument("--backend", default="auto", help=f"DWDP memory backend: {', '.join(MEMORY_BACKENDS)}")
    g.add_argument("--dep-exchange", default="auto", choices=("auto", "nccl", "symm_mem", "gloo"),
                   help="DEP token exchange backend (GPUs, one rank each; auto: nccl). CPU ranks use gloo with split "
                        "sizes (occupied rows only), or with gloo its fixed-capacity fallback; ranks sharing a GPU "
                        "use fixed-capacity gloo")
    g.add_argument("--dep-dispatch", type=_choice(DepDispatch), default=DepDispatch.AUTO, metavar="{auto,bf16,fp8}",
                   help="what DEP's dispatch rows carry: bf16, or fp8 (FP8 experts only: 1x128-quantized rows with "
                        "their fp32 scales, about half the bytes; the experts take them as they are). auto (default): "
                        "fp8 where the experts are FP8 and their kernel quantizes activations 1x128, else bf16. "
                        "The combine stays in the activations' dtype")
    g.add_argument("--dep-rows", type=_choice(DepRows), default=DepRows.AUTO, metavar="{auto,bound,exact}",
                   help="how a GPU rank sizes DEP's expert step: bound (the receive buffer's static shape: no host "
                        "sync, capturable; tens of GB of temporaries at DeepSeek-V3 scale on 8 ranks) or exact (one "
                        "host read of the received counts per layer, buffers of exactly those rows, as DeepEP's "
                        "normal mode). auto (default): bound where its temporaries take at most a quarter of the "
                        "free GPU memory, else exact; the run says which and why. CPU ranks are always exact")
    g.add_argument("--eplb", type=int, default=0, metavar="N",
                   help="also run DEP with EPLB (mode dep+eplb): N redundant expert slots per rank, filled with "
                        "replicas of the experts an untimed step of plain DEP measured hottest (default 0: off)")
    g.add_argument("--warmup", type=int, default=1,
                   help="untimed forward steps per mode before the run (first-use costs are not the mode's)")
    g.add_argument("--sim-machine", default=None,
                   help="machine profile that mode auto predicts for, with the run's --weight-dtype (default: this "
                        "GPU's, else h200)")
    g = p.add_argument_group("output")
    g.add_argument("--json", default=None, help="write the results here")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    validate(args)
    return args


def model_config(args) -> ModelConfig:
    """The model the ranks will build (from the preset or the checkpoint's config.json), cut to --layers."""
    if args.checkpoint:
        from ..runtime.checkpoint import config_from_hf
        return cut(config_from_hf(args.checkpoint), args.layers, args.vocab)
    return preset(args.preset, args.layers, args.vocab)


def routing_skew(args, num_experts: int) -> Optional[float]:
    """The Zipf exponent of a random preset's routers (None for a checkpoint's own router)."""
    if args.checkpoint:
        return None
    return default_skew(num_experts) if args.routing_skew is None else args.routing_skew


def model_name(args) -> str:
    return f"checkpoint {args.checkpoint}" if args.checkpoint else f"preset {args.preset}"


def workload_name(args) -> str:
    return f"trace {os.path.basename(args.trace)}" if args.trace else f"ISL {args.isl}"


def _choice(kind):
    """argparse type for a Choice enum: its member, or the one line naming the values."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(d.value for d in kind)}") from None
    parse.__name__ = kind.__name__
    return parse


def validate(args, world_size: Optional[int] = None) -> ModelConfig:
    """Every check of the options that needs no memory, with the library's rules (model shapes, workload,
    DwdpConfig, the performance model of mode auto). `trtllm-dwdp bench` runs it with the world size before
    mpirun starts; each rank runs it again. Raises ValueError naming the option."""
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UsageError(f"--modes {args.modes!r}: unknown {bad}. Fix: a comma list of {', '.join(MODES)}.")
    for option, value in (("--checkpoint", args.checkpoint), ("--trace", args.trace)):
        if value is not None and not value.strip():  # an empty path would silently mean "not given"
            raise UsageError(f"{option} {value!r}: is empty. Fix: name a {option[2:]}, or leave {option} out.")
    cfg = model_config(args)
    if is_fp8(args.weight_dtype) and (cfg.hidden % 128 or cfg.moe_inter % 128):
        raise UsageError(f"--weight-dtype {WeightDtype.FP8}: {model_name(args)} has hidden {cfg.hidden} and moe_inter "
                         f"{cfg.moe_inter}, not both multiples of the 128x128 scale block. Fix: a larger model, or "
                         "--weight-dtype bfloat16.")
    experts = WeightDtype(args.weight_dtype)
    if args.checkpoint:
        from ..runtime.checkpoint import expert_weight_dtype
        experts = expert_weight_dtype(args.checkpoint)  # reads every file's header: a truncated one fails here
        if args.routing_skew is not None:
            raise UsageError(f"--routing-skew {args.routing_skew:g}: a checkpoint routes with its own router. Fix: "
                             "leave --routing-skew out, or use --preset.")
    if args.dep_dispatch is DepDispatch.FP8 and not experts.is_fp8:
        fix = "an FP8 checkpoint" if args.checkpoint else f"--weight-dtype {WeightDtype.FP8}"
        raise UsageError(f"--dep-dispatch fp8: the experts are {experts}; FP8 dispatch rows are for FP8 experts. "
                         f"Fix: {fix}, or --dep-dispatch auto or bf16.")
    if args.routing_skew is not None and not 0 <= args.routing_skew <= 4:
        raise UsageError(f"--routing-skew {args.routing_skew:g}: must lie in [0, 4] (a Zipf exponent; 0 is uniform). "
                         "Fix: e.g. --routing-skew 0.5, or leave it out (the model's default).")
    parse_isl(args.isl)
    if args.trace:
        if not load_trace(args.trace):
            raise UsageError(f"--trace {args.trace}: holds no requests. Fix: one JSON object per line.")
    else:
        positive("--requests", args.requests, "e.g. --requests 24")
        if args.request_rate is not None and not args.request_rate > 0:
            raise UsageError(f"--request-rate {args.request_rate:g}: must be > 0 requests/s. "
                             "Fix: leave it out for a closed loop.")
    positive("--max-num-tokens", args.max_num_tokens, "e.g. --max-num-tokens 8192")
    positive("--warmup", args.warmup, "e.g. --warmup 1, or 0 to time the first step", allow_zero=True)
    positive("--seed", args.seed, "e.g. --seed 0", allow_zero=True)
    positive("--eplb", args.eplb, "e.g. --eplb 1, or 0 for plain DEP only", allow_zero=True)
    for option, value, most in (("--requests", args.requests, MAX_REQUESTS), ("--warmup", args.warmup, MAX_WARMUP),
                                ("--max-num-tokens", args.max_num_tokens, MAX_ISL), ("--depth", args.depth, 64),
                                ("--eplb", args.eplb, 1 << 16),
                                ("--vocab", args.vocab or 0, 1 << 22), ("--layers", args.layers or 0, 1024),
                                ("--seed", args.seed, 2**32 - 1)):
        if value > most:
            raise UsageError(f"{option} {value}: at most {most}. Fix: {option} {most} or less.")
    if not 0 < args.slice_mib <= 1 << 16:
        raise UsageError(f"--slice-mib {args.slice_mib:g}: must be > 0 and at most {1 << 16}. Fix: e.g. --slice-mib 32.")
    if args.sim_machine is not None:
        from ..sim.machines import get_machine
        try:
            get_machine(args.sim_machine)
        except ValueError as e:
            raise UsageError(str(e).replace("--machine", "--sim-machine")) from None
    check_output_path("--json", args.json)
    if world_size is not None and args.eplb:
        most = cfg.num_experts - -(-cfg.num_experts // world_size)
        if args.eplb > most:
            raise UsageError(f"--eplb {args.eplb}: {world_size} ranks hold {-(-cfg.num_experts // world_size)} of "
                             f"{cfg.num_experts} experts each, so at most {most} more slots can hold distinct "
                             f"replicas. Fix: --eplb {max(most, 0)} or less.")
    if world_size is not None:
        check_requests_fit(args, world_size)
        sized = [m for m in modes if m != Mode.AUTO] + ([Mode.DEP_EPLB.value] if args.eplb else [])
        check_fits(cfg, args, sized or [Mode.LOCAL.value], world_size)
    if world_size is not None and (Mode.DWDP in modes or Mode.AUTO in modes):
        # the weight dtype changes no rule checked here (group layout, depth, slice, backend)
        with options_named(JOB_FLAGS):
            dwdp_config(args, cfg, world_size, "float32").resolved_num_groups(world_size)
        for mode in (Mode.AUTO, Mode.DWDP):
            if mode in modes:
                predict_mode(args, cfg, world_size, mode)
    return cfg


def predict_mode(args, cfg: ModelConfig, ranks: int, mode: str):
    """The performance model's decision for this run's model, workload and weight dtype (mode "auto" or "dwdp");
    a run it cannot judge raises ValueError for mode auto."""
    from .auto import choose
    return choose(cfg, ranks, args.isl, args.max_num_tokens, requested=mode, machine=args.sim_machine,
                  weight_dtype=args.weight_dtype)


def check_requests_fit(args, world: int) -> None:
    """Without chunked prefill every request must fit one iteration: find the longest one the ranks would get
    (the same seeded stream they draw), before they start."""
    if args.chunked_prefill:
        return
    longest = max((r.isl for rank in range(world) for r in rank_requests(args, rank, world)), default=0)
    if longest > args.max_num_tokens:
        source = f"--trace {args.trace}" if args.trace else f"--isl {args.isl}"
        raise UsageError(f"--max-num-tokens {args.max_num_tokens}: {source} makes a request of {longest} tokens, which "
                         f"no iteration can hold. Fix: --max-num-tokens {longest} or more, or --chunked-prefill.")


def dwdp_config(args, cfg: ModelConfig, world_size: int, weight_dtype: str) -> DwdpConfig:
    """The DwdpConfig mode dwdp runs with."""
    if args.backend != BackendKind.AUTO:
        from ..memory import check_backend_available
        with options_named(JOB_FLAGS):
            check_backend_available(args.backend)
    with options_named(JOB_FLAGS):
        return DwdpConfig(group_size=world_size if args.group_size is None else args.group_size, num_experts=cfg.num_experts,
                          prefetch_depth=args.depth, slice_bytes=int(round(args.slice_mib * 2**20)),
                          weight_dtype=weight_dtype, memory_backend=args.backend)


def request_seeds(args, world: int) -> List[int]:
    """Seeds of the request streams: one shared stream, or one per rank."""
    return [args.seed * 7919] if args.balance == "least-loaded" else [args.seed * 7919 + r for r in range(world)]


def rank_requests(args, rank: int, world: int):
    """The requests rank `rank` serves (the same seeded stream on every rank)."""
    if args.balance == "per-rank":
        if args.trace:
            return [r for i, r in enumerate(load_trace(args.trace)) if i % world == rank]
        return make_requests(parse_isl(args.isl), args.requests, args.seed * 7919 + rank, args.request_rate)
    if args.trace:
        stream = load_trace(args.trace)
    else:
        rate = args.request_rate * world if args.request_rate else None
        stream = make_requests(parse_isl(args.isl), args.requests * world, args.seed * 7919, rate)
    return least_loaded(stream, world)[rank]
