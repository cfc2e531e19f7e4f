"""A layer's expert MLP while the next layer's pull runs (the hooks' own protocol) vs with no pull in flight."""

from __future__ import annotations

import time
from typing import Dict

import torch

from ...moe import expert_compute
from ...prefetch.engine_cuda import make_issuer
from ...prefetch.native import NativeRing
from .setup import SHAPES, bench_ms, routing


def run(hooks, shape: str, dtype: str, tokens: int, steps: int = 5) -> Dict:
    """Three MoE layers, two slots: releasing layer 0 issues layer 2's pull into slot 0, which runs on the copy
    stream while layer 1 computes. Layer 1's time in a step is compared with the same call alone."""
    hidden, _, experts, k = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    ids, wts = routing(tokens, experts, k, "balanced", gen)
    lids = hooks.shape.ids
    assert len(lids) == 3 and hooks.config.prefetch_depth == 2
    with_pull, layer1 = [], None
    for step in range(steps + 1):
        hooks.begin_step()
        for i, lid in enumerate(lids):
            w = hooks.layer_weights(lid)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            expert_compute(x, ids, wts, w)
            stop.record()
            hooks.layer_done(lid)
            if i == 1:
                layer1 = w
                if step:  # step 0 warms up
                    with_pull.append((start, stop))
        hooks.end_step()
    torch.cuda.synchronize()
    hooks.engine.synchronize()
    with_ms = sorted(a.elapsed_time(b) for a, b in with_pull)[len(with_pull) // 2]
    alone_ms = bench_ms(lambda: expert_compute(x, ids, wts, layer1))
    plan = hooks.layer_plan(hooks.shape.ids[2])
    pull_ms = bench_ms(_pull(hooks, 2))
    peers_elsewhere = torch.cuda.device_count() > 1  # ranks on their own GPUs: the pull crosses NVLink
    return {"shape": shape, "dtype": dtype, "tokens": tokens, "source": "nvlink" if peers_elsewhere else "same_gpu",
            "slice_mib": hooks.config.slice_bytes / 2**20, "mlp_alone_ms": alone_ms, "mlp_with_pull_ms": with_ms,
            "slowdown": with_ms / alone_ms - 1.0, "pull_mib": plan.nbytes / 2**20, "pull_ms": pull_ms,
            "pull_gbps": plan.nbytes / pull_ms / 1e6}


def _pull(hooks, ordinal: int):
    """One layer's pull alone: its copy plan (the slices the hooks' copy engine issues) queued on the current
    stream into slot 0, after the step ended (nothing reads the slot)."""
    spec = hooks.ring_spec()
    issuer, base = make_issuer(list(spec.slices[ordinal])), spec.slot_bases[0]
    return lambda: issuer.issue(base, torch.cuda.current_stream().cuda_stream, False)


def host_time(hooks, steps: int = 200) -> Dict:
    """Host time of the hook calls alone: per MoE layer (layer_weights + layer_done) and per step."""
    lids = hooks.shape.ids
    per_layer, per_step = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        hooks.begin_step()
        for lid in lids:
            a = time.perf_counter()
            hooks.layer_weights(lid)
            hooks.layer_done(lid)
            per_layer.append(time.perf_counter() - a)
        hooks.end_step()
        per_step.append(time.perf_counter() - t0)
        if len(per_step) % 50 == 0:
            hooks.engine.synchronize()  # keep the copy queue bounded
            hooks.metrics()  # as a host reading its steps' waits does: the native ring reuses their timing events
    hooks.engine.synchronize()
    per_layer.sort()
    per_step.sort()
    return {"layers": len(lids), "layer_us_p50": per_layer[len(per_layer) // 2] * 1e6,
            "layer_us_p90": per_layer[int(len(per_layer) * 0.9)] * 1e6,
            "step_us_p50": per_step[len(per_step) // 2] * 1e6, "pull_issue": hooks.config.pull_issue,
            "ring": "native" if isinstance(hooks.engine, NativeRing) else "python"}

