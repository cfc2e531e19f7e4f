"""Calibration from the JSON that `trtllm-dwdp bench kernels --json PATH` writes on a GPU, and from
the JSON of `benchmarks/link_bench.py --json PATH` on a multi-GPU host. `--calibration` takes one
path or a comma list; each file is recognised by its keys.

What is read from bench kernels (the keys of bench/kernels/) and what it replaces in Efficiency:
  peaks.bf16_tflops  -> mma = measured / datasheet BF16 peak of --machine (all precisions)
  peaks.hbm_gbps     -> hbm = measured / datasheet HBM bandwidth (a copy: read + write bytes)
  gemm[]             -> grouped: per BF16 balanced row, roofline(shape, tokens) at the measured peaks /
                        composite_ms (the GEMMs on DWDP's composite tensors; split_ms in files of the
                        retired split-weight path), keyed by tokens per expert,
                        from the bench shape nearest the simulated model's (hidden, inter).
                        NOTE: bench kernels measures BF16; other precisions borrow its curve.
  overlap[].slowdown -> pull_slowdown = mean of the rows (compute slowed by a concurrent pull);
                        only the source "nvlink" rows where there are any (every GPU pulling
                        over NVLink, a multi-GPU run), of the simulated slice size where
                        measured, else all rows
  peaks.h2d_gbps     -> reported only: a PCIe copy rate says nothing about NVLink.
What is read from the link bench:
  rows[case "all pull"].per_gpu_gbps -> link = that rate / the machine's NVLink per direction, from
                        the row of the slicing the simulated pull uses ("round-robin S MiB" for
                        sliced pulls of S MiB, "plain" for --no-slicing). DEP's all-to-all keeps
                        Efficiency.a2a_link (the link bench measures pulls, not the all-to-all).
Everything else keeps its default.

A calibration file carries absolute measured rates and the GPU they were measured on (`device`).
On that machine they apply as they are. On another machine the simulator needs an assumption, and
says which in the notes: rates are carried as the same fraction of the datasheet of the GPU they
were measured on (e.g. 776 of H200's 989.5 TFLOP/s -> 0.78 of GB200's peak), never divided by the
other machine's datasheet. A device that matches no profile is taken as --machine itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from .machines import MACHINES, Efficiency, Machine
from .models import MODELS, MoEModel


@dataclass(frozen=True)
class Calibration:
    """What the JSON files measured; None where no file measured it. Rates in TFLOP/s and GB/s;
    grouped as in Efficiency; link_gbps per GPU with every GPU pulling (link_row names the row)."""

    device: str
    bf16_tflops: Optional[float] = None
    hbm_gbps: Optional[float] = None
    h2d_gbps: Optional[float] = None
    grouped: Dict[str, Tuple[Tuple[float, float], ...]] = field(default_factory=dict)
    pull_slowdown: Optional[float] = None
    pull_source: str = ""
    link_gbps: Optional[float] = None
    link_row: str = ""


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
        name = _need(row, "shape", path)  # bench kernels names its shapes by the model presets
        if name not in MODELS:
            continue
        if row.get("dtype", "bfloat16") not in ("bfloat16", "bf16") or row.get("routing", "balanced") != "balanced":
            continue
        m = MODELS[name]
        h, i, e, k = m.hidden, m.moe_inter, m.experts, m.top_k
        tokens = float(_need(row, "tokens", path))
        ms = float(row["composite_ms"] if "composite_ms" in row else _need(row, "split_ms", path))
        a = tokens * k
        roof_ms = max(6 * a * h * i / (bf16_tflops * 1e9), (3 * e * h * i * 2 + 2 * a * h * 2) / (hbm_gbps * 1e6))
        if ms > 0:
            by_shape.setdefault(name, {}).setdefault(a / e, []).append(min(1.0, roof_ms / ms))
    return {n: tuple(sorted((t, sum(v) / len(v)) for t, v in pts.items())) for n, pts in by_shape.items()}


def nearest_shape(model: MoEModel, names) -> str:
    """The bench shape closest to the model's (hidden, expert inter), in log distance."""
    def dist(n):
        return abs(math.log(MODELS[n].hidden / model.hidden)) + abs(math.log(MODELS[n].moe_inter / model.moe_inter))
    return min(sorted(names), key=dist)


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--calibration {path}: no such file. Fix: run `trtllm-dwdp bench kernels --json {path}` "
                         f"on a GPU first.") from None
    except OSError as e:
        raise ValueError(f"--calibration {path}: cannot be read ({e.strerror}). Fix: pass bench kernels' --json "
                         "output.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--calibration {path}: not JSON ({e}). Fix: pass bench kernels' --json output.") from None


def _kernels(d: dict, path: str, slice_mib: Optional[float]) -> Calibration:
    peaks = _need(d, "peaks", path)
    bf16, hbm = float(_need(peaks, "bf16_tflops", path)), float(_need(peaks, "hbm_gbps", path))
    if bf16 <= 0 or hbm <= 0:
        raise ValueError(f"--calibration {path}: peaks must be positive. Fix: re-run bench kernels.")
    rows = [r for r in d.get("overlap", []) if "slowdown" in r]
    nvlink = [r for r in rows if r.get("source") == "nvlink"]
    sized = [r for r in nvlink if slice_mib is not None and r.get("slice_mib") == slice_mib]
    used = sized or nvlink or rows
    slow = [float(r["slowdown"]) for r in used]
    what = (f"nvlink, {slice_mib:g} MiB slices" if sized else "nvlink" if nvlink else "all" if rows else "")
    return Calibration(str(d.get("device", "unknown")), bf16, hbm, peaks.get("h2d_gbps"),
                       _grouped_points(d.get("gemm", []), bf16, hbm, path),
                       max(0.0, sum(slow) / len(slow)) if slow else None, what)


def _link(d: dict, path: str, slice_mib: Optional[float]) -> Calibration:
    want = "plain" if slice_mib is None else f"round-robin {slice_mib:g} MiB"
    rows = [r for r in d["rows"] if r.get("case") == "all pull"]
    hit = [r for r in rows if r.get("slicing") == want]
    if not hit:
        have = ", ".join(repr(r.get("slicing")) for r in rows) or "none"
        raise ValueError(f"--calibration {path}: no 'all pull' row with slicing {want!r} (has {have}). Fix: run "
                         f"benchmarks/link_bench.py with that slice size in --slice-mib, or simulate a slicing "
                         f"it measured (--slice-mib / --no-slicing).")
    return Calibration(str(d.get("device", "unknown")), link_gbps=float(hit[0]["per_gpu_gbps"]),
                       link_row=f"all pull, {want}, {d.get('gpus', '?')} GPUs")


def load_calibration(paths, slice_mib: Optional[float] = 2.0) -> Calibration:
    """Parse and check one path or several (list, or a comma list); ValueError naming --calibration on
    anything missing. slice_mib: the slicing whose link-bench row calibrates the link (None: plain)."""
    if isinstance(paths, str):
        paths = [p for p in paths.split(",") if p]
    merged: Optional[Calibration] = None
    for path in paths:
        d = _read(path)
        if isinstance(d, dict) and "rows" in d and "peak_gbps" in d:
            cal = _link(d, path, slice_mib)
        else:
            cal = _kernels(d, path, slice_mib)
        if merged is None:
            merged = cal
            continue
        kw = {k: v for k, v in vars(cal).items() if v not in (None, "", {}) and k != "device"}
        merged = replace(merged, **kw)
        if "bf16_tflops" in kw and merged.device != cal.device:
            merged = replace(merged, device=cal.device)
    if merged is None:
        raise ValueError("--calibration: no path given. Fix: pass bench kernels' or link_bench's --json output.")
    return merged


def measured_on(device: str) -> Optional[Machine]:
    """The machine profile whose GPU name `device` contains (None if none matches)."""
    hits = [m for m in MACHINES.values() if m.device_match.lower() in device.lower()]
    return max(hits, key=lambda m: len(m.device_match)) if hits else None


def apply_calibration(machine: Machine, model: MoEModel, base: Efficiency, cal: Calibration) -> Calibrated:
    """Efficiency with the measured values of `cal` in place of the defaults of `base`: each measured
    rate over the datasheet of the machine it was measured on (the fraction `machine` is assumed to reach)."""
    notes, kw = [], {}
    src = measured_on(cal.device) or machine
    same = src.name == machine.name
    if cal.bf16_tflops is not None:
        mma = cal.bf16_tflops / src.tflops["bf16"]
        notes.append(f"mma {base.mma:.3f} -> {mma:.3f} ({cal.bf16_tflops:.0f} of {src.tflops['bf16']:.0f} "
                     f"TFLOP/s BF16 on {src.name})")
        kw["mma"] = min(mma, 1.5)
    if cal.hbm_gbps is not None:
        hbm = cal.hbm_gbps / src.hbm_gbps
        notes.append(f"hbm {base.hbm:.3f} -> {hbm:.3f} ({cal.hbm_gbps:.0f} of {src.hbm_gbps:.0f} GB/s on {src.name});"
                     f" elementwise kernels take the same fraction")
        kw["hbm"] = min(hbm, 1.5)
        kw["elementwise"] = min(hbm, 1.5)
    if cal.grouped:
        shape = nearest_shape(model, cal.grouped)
        kw["grouped"] = cal.grouped[shape]
        kw["grouped_precision"] = "bf16"
        notes.append(f"grouped GEMM of roofline, BF16 ({shape} shapes): "
                     + ", ".join(f"{e:.2f} at {t:.0f} rows/expert" for t, e in cal.grouped[shape])
                     + "; FP8 and NVFP4 keep their default curves")
    if cal.pull_slowdown is not None:
        kw["pull_slowdown"] = cal.pull_slowdown
        notes.append(f"pull_slowdown {base.pull_slowdown:.3f} -> {cal.pull_slowdown:.3f} "
                     f"(mean of the {cal.pull_source} overlap rows)")
    if cal.link_gbps is not None:
        link = cal.link_gbps / src.nvlink_gbps
        kw["link"] = min(link, 1.5)
        notes.append(f"link {base.link:.3f} -> {link:.3f} ({cal.link_gbps:.0f} of {src.nvlink_gbps:.0f} GB/s on "
                     f"{src.name}; {cal.link_row}); DEP's all-to-all keeps a2a_link {base.a2a_link:.2f}")
    if cal.h2d_gbps is not None:
        notes.append(f"h2d {float(cal.h2d_gbps):.1f} GB/s reported, not applied (PCIe, not NVLink)")
    if not same:
        notes.append(f"NOTE: measured on {cal.device!r} ({src.name}), applied to {machine.name}: ASSUMES "
                     f"{machine.name} reaches the same fractions of its datasheet as {src.name} did")
    elif measured_on(cal.device) is None:
        notes.append(f"NOTE: {cal.device!r} matches no machine profile: its rates are taken as {machine.name}'s own")
    return Calibrated(base.with_(**kw), tuple(notes))
