"""Calibration from the JSON that `trtllm-dwdp bench kernels --json PATH` writes on a GPU.

What is read (bench/kernels.py's keys) and what it replaces in Efficiency:
  peaks.bf16_tflops  -> mma = measured / datasheet BF16 peak of --machine (all precisions)
  peaks.hbm_gbps     -> hbm = measured / datasheet HBM bandwidth (a copy: read + write bytes)
  gemm[]             -> grouped: per row, roofline(shape, tokens) at the measured peaks /
                        split_ms, keyed by tokens per expert (the split-weight path DWDP runs),
                        from the bench shape nearest the simulated model's (hidden, inter).
                        NOTE: bench kernels measures BF16; other precisions borrow its curve.
  overlap[].slowdown -> pull_slowdown = mean of the rows (compute slowed by a concurrent pull)
  peaks.h2d_gbps     -> reported only: a PCIe copy rate says nothing about NVLink.
Everything else keeps its default. A calibration from another GPU than --machine is applied
but flagged in the notes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .machines import Efficiency, Machine
from .models import MoEModel

# bench/kernels.py's SHAPES names -> (hidden, expert inter, experts, top-k)
BENCH_SHAPES: Dict[str, Tuple[int, int, int, int]] = {
    "deepseek-v3": (7168, 2048, 256, 8),
    "qwen3-30b-a3b": (2048, 768, 128, 8),
}


@dataclass(frozen=True)
class Calibration:
    """What a bench-kernels JSON measured. Rates in TFLOP/s and GB/s; grouped as in Efficiency."""

    device: str
    bf16_tflops: float
    hbm_gbps: float
    h2d_gbps: Optional[float]
    grouped: Dict[str, Tuple[Tuple[float, float], ...]]  # bench shape -> (tokens/expert, efficiency)
    pull_slowdown: Optional[float]


@dataclass(frozen=True)
class Calibrated:
    """Efficiency after calibration, with one note per replaced or flagged value."""

    efficiency: Efficiency
    notes: Tuple[str, ...]


def _need(d: dict, key: str, path: str):
    if key not in d:
        raise ValueError(f"--calibration {path}: key {key!r} missing. Fix: pass the file that "
                         f"`trtllm-dwdp bench kernels --json PATH` wrote.")
    return d[key]


def _grouped_points(rows: List[dict], bf16_tflops: float, hbm_gbps: float,
                    path: str) -> Dict[str, Tuple[Tuple[float, float], ...]]:
    by_shape: Dict[str, Dict[float, List[float]]] = {}
    for row in rows:
        name = _need(row, "shape", path)
        if name not in BENCH_SHAPES:
            continue
        h, i, e, k = BENCH_SHAPES[name]
        tokens, ms = float(_need(row, "tokens", path)), float(_need(row, "split_ms", path))
        a = tokens * k
        roof_ms = max(6 * a * h * i / (bf16_tflops * 1e9), (3 * e * h * i * 2 + 2 * a * h * 2) / (hbm_gbps * 1e6))
        if ms > 0:
            by_shape.setdefault(name, {}).setdefault(a / e, []).append(min(1.0, roof_ms / ms))
    return {n: tuple(sorted((t, sum(v) / len(v)) for t, v in pts.items())) for n, pts in by_shape.items()}


def nearest_shape(model: MoEModel, names) -> str:
    """The bench shape closest to the model's (hidden, expert inter), in log distance."""
    def dist(n):
        h, i, _, _ = BENCH_SHAPES[n]
        return abs(math.log(h / model.hidden)) + abs(math.log(i / model.moe_inter))
    return min(sorted(names), key=dist)


def load_calibration(path: str) -> Calibration:
    """Parse and check the JSON; ValueError naming --calibration on anything missing."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--calibration {path}: no such file. Fix: run `trtllm-dwdp bench kernels --json {path}` "
                         f"on a GPU first.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--calibration {path}: not JSON ({e}). Fix: pass bench kernels' --json output.") from None
    peaks = _need(d, "peaks", path)
    bf16, hbm = float(_need(peaks, "bf16_tflops", path)), float(_need(peaks, "hbm_gbps", path))
    if bf16 <= 0 or hbm <= 0:
        raise ValueError(f"--calibration {path}: peaks must be positive. Fix: re-run bench kernels.")
    slow = [float(r["slowdown"]) for r in d.get("overlap", []) if "slowdown" in r]
    return Calibration(str(d.get("device", "unknown")), bf16, hbm, peaks.get("h2d_gbps"),
                       _grouped_points(d.get("gemm", []), bf16, hbm, path),
                       max(0.0, sum(slow) / len(slow)) if slow else None)


def apply_calibration(machine: Machine, model: MoEModel, base: Efficiency, cal: Calibration) -> Calibrated:
    """Efficiency with the measured values of `cal` in place of the defaults of `base`."""
    mma = cal.bf16_tflops / machine.tflops["bf16"]
    hbm = cal.hbm_gbps / machine.hbm_gbps
    notes = [f"mma {base.mma:.3f} -> {mma:.3f} ({cal.bf16_tflops:.0f} of {machine.tflops['bf16']:.0f} TFLOP/s BF16)",
             f"hbm {base.hbm:.3f} -> {hbm:.3f} ({cal.hbm_gbps:.0f} of {machine.hbm_gbps:.0f} GB/s)"]
    kw = dict(mma=min(mma, 1.5), hbm=min(hbm, 1.5))
    if cal.grouped:
        shape = nearest_shape(model, cal.grouped)
        kw["grouped"] = cal.grouped[shape]
        notes.append(f"grouped GEMM of roofline ({shape} shapes): "
                     + ", ".join(f"{e:.2f} at {t:.0f} tok/expert" for t, e in cal.grouped[shape]))
    if cal.pull_slowdown is not None:
        kw["pull_slowdown"] = cal.pull_slowdown
        notes.append(f"pull_slowdown {base.pull_slowdown:.3f} -> {cal.pull_slowdown:.3f} (mean of overlap rows)")
    if cal.h2d_gbps is not None:
        notes.append(f"h2d {float(cal.h2d_gbps):.1f} GB/s reported, not applied (PCIe, not NVLink)")
    if machine.device_match.lower() not in cal.device.lower():
        notes.append(f"NOTE: measured on {cal.device!r}, applied to {machine.name}: fractions carried across GPUs")
    return Calibrated(base.with_(**kw), tuple(notes))
