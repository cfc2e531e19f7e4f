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
from typing import Dict, Tuple

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
        783 of 989.5 TFLOP/s BF16 on one H100 (DESIGN.md §6). CALIBRATED to peaks.bf16_tflops.
    hbm: achieved / datasheet HBM bandwidth. Default 1.0 (uncalibrated: datasheet).
        CALIBRATED to peaks.hbm_gbps (a device-to-device copy, read + write bytes).
    link: achieved / datasheet NVLink per direction, for DWDP pulls and DEP all-to-all alike.
        Default 380/450 = 0.844 measured on Hopper (DESIGN.md §2; 373/450 with 32 MiB slices on
        2 H200s, BENCHMARKS.md); applied to NVLink5 as an assumption. CALIBRATED to a link-bench
        JSON's all-pull rate of the simulated slicing (peaks.h2d_gbps is a PCIe rate and is
        reported, never applied).
    grouped: (tokens per expert, grouped GEMM time at roofline / measured time) points,
        interpolated in log(tokens per expert); empty means 1.0. CALIBRATED to gemm[].split_ms.
    pull_slowdown: fractional slowdown of compute while a pull runs on the copy engines.
        Default 0.04 (DESIGN.md §2: kernels ~4% slower under concurrent copies, GB200; 2.7-4.7%
        measured on 2 H200s with 32 MiB slices). CALIBRATED to the mean of overlap[].slowdown,
        the NVLink rows of the simulated slice size where a multi-GPU run measured them.
    a2a_latency_us: fixed cost of one all-to-all (dispatch or combine), µs. Default 10:
        an assumed order of magnitude (kernel launch plus NVLink signalling), not a measurement.
    """

    mma: float = 783.0 / 989.5
    hbm: float = 1.0
    link: float = 380.0 / 450.0
    grouped: Tuple[Tuple[float, float], ...] = ()
    pull_slowdown: float = 0.04
    a2a_latency_us: float = 10.0

    def __post_init__(self):
        for name in ("mma", "hbm", "link"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.5:
                raise ValueError(f"Efficiency.{name}={v}: must be in (0, 1.5]")
        if self.pull_slowdown < 0 or self.a2a_latency_us < 0:
            raise ValueError("Efficiency: pull_slowdown and a2a_latency_us must be >= 0")

    @classmethod
    def roofline(cls) -> "Efficiency":
        """Datasheet peaks, no latency, no overlap slowdown: the upstream roofline's assumptions."""
        return cls(mma=1.0, hbm=1.0, link=1.0, grouped=(), pull_slowdown=0.0, a2a_latency_us=0.0)

    def with_(self, **kw) -> "Efficiency":
        return replace(self, **kw)

    def grouped_at(self, tokens_per_expert: float) -> float:
        """Grouped-GEMM efficiency (fraction of roofline) at this many tokens per expert."""
        pts = self.grouped
        if not pts:
            return 1.0
        x = math.log(max(tokens_per_expert, 1e-9))
        xs = [math.log(p[0]) for p in pts]
        if x <= xs[0]:
            return pts[0][1]
        if x >= xs[-1]:
            return pts[-1][1]
        for i in range(1, len(pts)):
            if x <= xs[i]:
                f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
                return pts[i - 1][1] + f * (pts[i][1] - pts[i - 1][1])
        return pts[-1][1]  # unreachable


@dataclass(frozen=True)
class Rates:
    """Effective rates of one GPU after Efficiency: FLOP/s per precision, bytes/s."""

    flops: Dict[str, float]
    hbm: float
    link: float

    @classmethod
    def of(cls, machine: Machine, eff: Efficiency) -> "Rates":
        return cls({p: t * 1e12 * eff.mma for p, t in machine.tflops.items()},
                   machine.hbm_gbps * 1e9 * eff.hbm, machine.nvlink_gbps * 1e9 * eff.link)

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

