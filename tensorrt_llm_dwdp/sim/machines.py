"""Machine profiles: per-GPU datasheet rates, and the fractions of them that kernels reach.

Every number in MACHINES is a datasheet figure for ONE GPU, dense (NVIDIA datasheets print
tensor-core rates "with sparsity"; those are halved here). Units: TFLOP/s, GB/s (1e9 B/s),
GB (1e9 B). NVLink bandwidth is per direction per GPU: what one GPU can receive (or send)
at once through the NVSwitch fabric.

The Efficiency fractions are the only knobs between a datasheet and a prediction; each has a
default taken from a measurement we cite, and says whether `--calibration` replaces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple


PRECISIONS = ("bf16", "fp8", "nvfp4")


@dataclass(frozen=True)
class Machine:
    """One NVLink domain of identical GPUs.

    tflops: dense tensor-core peak per GPU by precision ("bf16", "fp8", "nvfp4"); a precision
        missing here has no tensor-core support on this GPU.
    hbm_gbps: HBM bandwidth per GPU, GB/s.  hbm_gb: HBM capacity per GPU, GB.
    nvlink_gbps: NVLink bandwidth per GPU per direction, GB/s (ingress = egress).
    domain: GPUs in one NVLink domain (the largest DWDP/DEP group).
    device_match: substring of torch.cuda.get_device_name() for this GPU (calibration check).
    sources: where the figures come from.
    """

    name: str
    title: str
    tflops: Dict[str, float]
    hbm_gbps: float
    hbm_gb: float
    nvlink_gbps: float
    domain: int
    device_match: str
    sources: Tuple[str, ...] = field(default=())

    def supports(self, precision: str) -> bool:
        return precision in self.tflops


_H100_SRC = ("NVIDIA H100 Tensor Core GPU datasheet, SXM5: BF16 1,979 / FP8 3,958 TFLOPS with sparsity, "
             "HBM3 80 GB at 3.35 TB/s, NVLink 900 GB/s (4th gen, 18 links; 450 GB/s per direction)",)
_H200_SRC = ("NVIDIA H200 Tensor Core GPU datasheet, SXM: BF16 1,979 / FP8 3,958 TFLOPS with sparsity, "
             "HBM3e 141 GB at 4.8 TB/s, NVLink 900 GB/s (450 GB/s per direction)",)
_B200_SRC = ("NVIDIA HGX B200 datasheet (8 GPUs): FP4 144 / FP8 72 / BF16 36 PFLOPS with sparsity, "
             "HBM3e 1.44 TB at 64 TB/s, NVLink 5 1.8 TB/s per GPU (900 GB/s per direction)",)
_GB200_SRC = ("NVIDIA GB200 NVL72 datasheet (72 GPUs): FP4 1,440 / FP8 720 / BF16 360 PFLOPS with sparsity, "
              "HBM3e 13.4 TB at 576 TB/s, NVLink 5 130 TB/s = 1.8 TB/s per GPU (900 GB/s per direction)",)

MACHINES: Dict[str, Machine] = {
    "h100": Machine("h100", "HGX H100 SXM x8 (NVLink4)", {"bf16": 989.5, "fp8": 1979.0}, 3350.0, 80.0,
                    450.0, 8, "H100", _H100_SRC),
    "h200": Machine("h200", "HGX H200 SXM x8 (NVLink4)", {"bf16": 989.5, "fp8": 1979.0}, 4800.0, 141.0,
                    450.0, 8, "H200", _H200_SRC),
    "b200": Machine("b200", "HGX B200 x8 (NVLink5)", {"bf16": 2250.0, "fp8": 4500.0, "nvfp4": 9000.0}, 8000.0,
                    180.0, 900.0, 8, "B200", _B200_SRC),
    "gb200": Machine("gb200", "GB200 NVL72 (NVLink5)", {"bf16": 2500.0, "fp8": 5000.0, "nvfp4": 10000.0}, 8000.0,
                     186.0, 900.0, 72, "GB200", _GB200_SRC),
}


def get_machine(name: str) -> Machine:
    """The profile named `name` (case-insensitive); ValueError naming --machine otherwise."""
    key = name.strip().lower()
    if key not in MACHINES:
        raise ValueError(f"--machine {name!r} is not a known machine. Fix: use one of {', '.join(MACHINES)}.")
    return MACHINES[key]


@dataclass(frozen=True)
class Efficiency:
    """Fractions of datasheet rates reached in practice, and overlap side effects.

    mma: achieved dense GEMM rate / datasheet peak, applied to every precision. Default 0.79:
        783 of 989.5 TFLOP/s BF16 on one H100 (docs/DESIGN.md §6). CALIBRATED to peaks.bf16_tflops.
    hbm: achieved / datasheet HBM bandwidth. Default 1.0 (uncalibrated: datasheet).
        CALIBRATED to peaks.hbm_gbps (a device-to-device copy, read + write bytes).
    link: achieved / datasheet NVLink per direction, for DWDP pulls and DEP all-to-all alike.
        Default 380/450 = 0.844 measured on Hopper (docs/DESIGN.md §2; 373/450 with 32 MiB slices on
        2 H200s, BENCHMARKS.md); applied to NVLink5 as an assumption. CALIBRATED to a link-bench
        JSON's all-pull rate of the simulated slicing (peaks.h2d_gbps is a PCIe rate and is
        reported, never applied).
    a2a_link: achieved / datasheet NVLink per direction of DEP's all-to-all kernels. Default 0.80:
        TensorRT-LLM's NVLink one-sided all-to-all on GB200 NVL72 (tech blog 18, DeepSeek-V3 shapes,
        ep 8, 2048 tokens: BF16 dispatch 753 and combine 728 of 900 GB/s, "~80% of the peak"; NVFP4
        dispatch 649); applied to other machines as an assumption. Not calibrated: the link bench
        measures copy-engine pulls, not the all-to-all.
    grouped: measured (rows per expert, grouped GEMM time at roofline / measured time) points,
        interpolated in log(rows per expert), for the precision `grouped_precision`; they replace
        that precision's default curve. Empty: the defaults below. CALIBRATED to gemm[].split_ms.
    grouped_precision: the precision `grouped` was measured in (bench kernels measures BF16).
    pull_slowdown: fractional slowdown of compute while a LONG pull runs on the copy engines.
        Default 0.05: the DWDP work reports about 5% for long overlaps (docs/DESIGN.md §2: ~4%, GB200;
        2.7-4.7% measured on 2 H200s with 32 MiB slices). CALIBRATED to the mean of
        overlap[].slowdown, the NVLink rows of the simulated slice size where a multi-GPU run
        measured them.
    short_pull_slowdown, short_pull_s: a short overlap slows compute more (clocks drop as the copy
        engines and SMs start together): the slowdown of a pull of isolated duration d is
        pull_slowdown + (short_pull_slowdown - pull_slowdown) * short_pull_s / (short_pull_s + d).
        Default 0.20 (the DWDP work: "over 20%" for short overlaps) and 1 ms (an ASSUMPTION: where
        "short" ends is not published). Not calibrated.
    elementwise: achieved / datasheet HBM bandwidth of elementwise kernels (norms, RoPE,
        activation, routing, permute, quantize, residual adds), which move bytes and do no GEMM.
        Default 4.2/4.8: a device copy on one H200 (docs/DESIGN.md §6), the best an elementwise kernel
        does. CALIBRATED with hbm (same measurement).
    routing_skew: Zipf exponent of expert popularity within one MoE layer (expert of rank i in
        popularity gets a share proportional to 1/i^s; which expert is hot is drawn per layer): the
        runtime's routers' statistics (workloads/popularity.py). None (default): the model's default_skew
        there, set from a stated imbalance target and its source. 0 is uniform routing. DEP's busiest rank sets its expert time; DWDP computes
        every expert its own tokens touch and does not care. `--eplb N` places DEP's experts with the
        runtime's EPLB (replicas of the hot experts), which evens the load out.
    jitter: coefficient of variation of a rank's compute time per layer (kernel clocks, L2, launch).
        Default 0.035: bench kernels' alone_spread (p90/p10 - 1) of the DeepSeek-V3 expert layer was
        0.084-0.101 on H100 (BENCHMARKS.md, tile sweep), CV = spread / 2.56 for a normal spread.
        DEP waits for the slowest rank at every MoE layer; DWDP ranks absorb it on their own.
    """

    mma: float = 783.0 / 989.5
    hbm: float = 1.0
    link: float = 380.0 / 450.0
    a2a_link: float = 0.80
    grouped: Tuple[Tuple[float, float], ...] = ()
    grouped_precision: str = "bf16"
    pull_slowdown: float = 0.05
    a2a_latency_us: float = 10.0
    short_pull_slowdown: float = 0.20
    short_pull_s: float = 1e-3
    elementwise: float = 4.2 / 4.8
    routing_skew: Optional[float] = None
    jitter: float = 0.035

    def __post_init__(self):
        for name in ("mma", "hbm", "link", "a2a_link"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.5:
                raise ValueError(f"Efficiency.{name}={v}: must be in (0, 1.5]")
        if self.pull_slowdown < 0 or self.a2a_latency_us < 0:
            raise ValueError("Efficiency: pull_slowdown and a2a_latency_us must be >= 0")
        if not 0.0 < self.elementwise <= 1.5:
            raise ValueError(f"Efficiency.elementwise={self.elementwise}: must be in (0, 1.5]")
        if self.routing_skew is not None and self.routing_skew < 0:
            raise ValueError(f"--routing-skew {self.routing_skew:g}: must be >= 0. Fix: 0 for uniform routing, e.g. "
                             "0.5, or leave it out (the model's default).")
        if self.jitter < 0 or self.jitter > 0.5:
            raise ValueError(f"--jitter {self.jitter:g}: must be in [0, 0.5]. Fix: e.g. 0.035.")

    @classmethod
    def roofline(cls) -> "Efficiency":
        """Datasheet peaks, no latency, no overlap slowdown: the upstream roofline's assumptions."""
        return cls(mma=1.0, hbm=1.0, link=1.0, a2a_link=1.0, grouped=(), pull_slowdown=0.0, a2a_latency_us=0.0,
                   short_pull_slowdown=0.0, elementwise=1.0, routing_skew=0.0, jitter=0.0,
                   grouped_precision="none")

    @property
    def roofline_like(self) -> bool:
        """True for the upstream roofline's assumptions: grouped GEMMs at the dense rate, no elementwise cost."""
        return self.grouped_precision == "none"

    def slowdown_of_pull(self, pull_s: float) -> float:
        """Fractional compute slowdown under a pull of isolated duration `pull_s` (s); see the class doc."""
        extra = max(0.0, self.short_pull_slowdown - self.pull_slowdown)
        return self.pull_slowdown + extra * self.short_pull_s / (self.short_pull_s + max(pull_s, 0.0))

    def with_(self, **kw) -> "Efficiency":
        return replace(self, **kw)

    def grouped_at(self, rows_per_expert: float, precision: str = "bf16") -> float:
        """Grouped-GEMM efficiency (fraction of the dense rate's roofline) at this many rows per expert."""
        if self.roofline_like:
            return 1.0
        pts = self.grouped if self.grouped and precision == self.grouped_precision else GROUPED_CURVES[precision]
        return interpolate_log(pts, rows_per_expert)


def interpolate_log(pts, x: float) -> float:
    """Piecewise-linear in log(x) through (x, y) points sorted by x; flat beyond the ends."""
    lx = math.log(max(x, 1e-9))
    xs = [math.log(p[0]) for p in pts]
    if lx <= xs[0]:
        return pts[0][1]
    for i in range(1, len(pts)):
        if lx <= xs[i]:
            f = (lx - xs[i - 1]) / (xs[i] - xs[i - 1])
            return pts[i - 1][1] + f * (pts[i][1] - pts[i - 1][1])
    return pts[-1][1]


def _scaled(shape, anchor_rows: float, level: float) -> Tuple[Tuple[float, float], ...]:
    """`shape` (rows, efficiency) rescaled so that it reads `level` at `anchor_rows`; capped at 1."""
    at = interpolate_log(shape, anchor_rows)
    return tuple((r, min(1.0, e * level / at)) for r, e in shape)


# Grouped GEMM efficiency per precision: time at roofline (max of FLOPs at the dense rate, bytes at HBM)
# over the grouped GEMM's time, by rows per expert.
# Shape: the H100 tile sweep of bench kernels (benchmarks/results/bench_kernels_h100_tile_sweep_2026-11-24.json),
# DeepSeek-V3 shapes, grouped GEMMs alone in their best tile: BF16 single_gemm_of_roofline 0.877 / 0.569 / 0.620 /
# 0.684 and FP8 gemm_split_of_roofline 0.738 / 0.557 / 0.549 / 0.615 at 64 / 256 / 512 / 1024 rows per expert.
# Level, at 512 rows per expert (16K tokens x top-8 over 256 experts):
#   bf16: torch._grouped_mm on H200, w13 711 and w2 664 TFLOP/s (docs/DESIGN.md §6) = 695 TFLOP/s over both,
#         0.89 of the default dense rate (989.5 x mma);
#   fp8:  our block-scaled kernels on H200, 9.3 + 5.3 ms (docs/DESIGN.md §6) = 790 TFLOP/s, 0.50 of 1979 x mma;
#   nvfp4: the DWDP tech blog's context-only breakdown puts the GB200 grouped GEMM at about 35% of the NVFP4
#         dense peak, 0.44 of 10000 x mma (the FP8 shape is borrowed: no NVFP4 sweep of ours exists).
_BF16_SHAPE = ((64.0, 0.877), (256.0, 0.569), (512.0, 0.620), (1024.0, 0.684))
_FP8_SHAPE = ((64.0, 0.738), (256.0, 0.557), (512.0, 0.549), (1024.0, 0.615))
_MMA = 783.0 / 989.5
GROUPED_CURVES: Dict[str, Tuple[Tuple[float, float], ...]] = {
    "bf16": _scaled(_BF16_SHAPE, 512.0, 695.0 / (989.5 * _MMA)),
    "fp8": _scaled(_FP8_SHAPE, 512.0, 790.0 / (1979.0 * _MMA)),
    "nvfp4": _scaled(_FP8_SHAPE, 512.0, 0.35 / _MMA),
}


@dataclass(frozen=True)
class Rates:
    """Effective rates of one GPU after Efficiency: FLOP/s per precision, bytes/s (link: DWDP's pulls;
    a2a: DEP's all-to-all kernels, 0 where not given: the link's rate)."""

    flops: Dict[str, float]
    hbm: float
    link: float
    a2a: float = 0.0

    @property
    def a2a_rate(self) -> float:
        return self.a2a or self.link

    @classmethod
    def of(cls, machine: Machine, eff: Efficiency) -> "Rates":
        return cls({p: t * 1e12 * eff.mma for p, t in machine.tflops.items()},
                   machine.hbm_gbps * 1e9 * eff.hbm, machine.nvlink_gbps * 1e9 * eff.link,
                   machine.nvlink_gbps * 1e9 * eff.a2a_link)

    def flops_of(self, precision: str) -> float:
        return self.flops[precision]


def check_precision(machine: Machine, precision: str, option: str = "--precision") -> None:
    """ValueError naming the option when the GPU has no tensor cores for `precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{option} {precision!r} is not a precision. Fix: use one of {', '.join(PRECISIONS)}.")
    if not machine.supports(precision):
        ok = ", ".join(p for p in PRECISIONS if machine.supports(p))
        raise ValueError(f"{option} {precision}: {machine.name} has no {precision} tensor cores. "
                         f"Fix: use {ok} on {machine.name}, or --machine b200/gb200 for nvfp4.")


def target_machine(name: Optional[str], device_name: Optional[str] = None) -> str:
    """The profile a run predicts for: `name` when given, else the one whose device name matches the GPU this
    process sees (`device_name`, e.g. torch.cuda.get_device_name()), else h200."""
    if name:
        return get_machine(name).name
    for key, m in MACHINES.items():
        if device_name and m.device_match and m.device_match in device_name:
            return key
    return "h200"
