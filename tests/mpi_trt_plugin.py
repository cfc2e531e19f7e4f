"""Run under mpirun (ranks may share one GPU): each rank sets up DwdpHooks over real shards of random experts,
registers the C++ DWDP context for the TensorRT plugin, and drives DwdpMoe through the harness's IPluginV3 calls
(createPlugin, attachToContext, onShapeChange, getWorkspaceSize, enqueue) for every layer of several steps, with
each routing mode, against a float64 reference on the loaded weights. Prints PASS on rank 0.

    mpirun -n 4 python tests/mpi_trt_plugin.py HARNESS_SO BACKEND DTYPE SEED
"""

import ctypes
import sys

import torch
from mpi4py import MPI

import trt_harness
from tensorrt_llm_dwdp import DwdpConfig, DwdpHooks, MoeShape
from tensorrt_llm_dwdp.hooks import RingLentError
from tensorrt_llm_dwdp.integrations.trt_engine.context import register_plugin_context
from tensorrt_llm_dwdp.integrations.trt_engine.build import ExpertDtype, Routing
from tensorrt_llm_dwdp.moe import ops

harness_so, backend, dtype, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
dev = torch.device("cuda", rank % torch.cuda.device_count())
torch.cuda.set_device(dev)
fp8 = dtype == "float8_e4m3fn"
L, E, H, I, K, T, STEPS, CTX = 3, 12, 256, (256 if fp8 else 128), 3, 57, 3, 11
g = torch.Generator().manual_seed(seed)  # the same weights on every rank
truth = []
for _ in range(L):
    w13, w2 = torch.randn(E, 2 * I, H, generator=g) / H ** 0.5, torch.randn(E, H, I, generator=g) / I ** 0.5
    if fp8:
        (q13, s13), (q2, s2) = ops.quantize_weight_blocks(w13), ops.quantize_weight_blocks(w2)
        truth.append({"w13": q13, "w2": q2, "w13_scale": s13, "w2_scale": s2})
    else:
        truth.append({"w13": w13.bfloat16(), "w2": w2.bfloat16()})
dense = [{n: (ops.dequantize_blocks(t[n], t[n + "_scale"]) if fp8 else t[n]).double() for n in ("w13", "w2")}
         for t in truth]


def act_fp8(a: torch.Tensor) -> torch.Tensor:
    """What the FP8 kernels feed a GEMM: a [m, k] quantized per 1x128 block, in float64."""
    q, s = ops.quantize_fp8(a.float())
    return q.double() * s.double().repeat_interleave(128, dim=1)


def reference(layer, x, ids, weights):
    """float64 SwiGLU experts on the loaded weights; an id equal to E contributes nothing. FP8 follows the kernels'
    data path: the first GEMM's output is stored in BF16 before SwiGLU and its 1x128 quantization (computed in
    float64 and quantized, a value near an FP8 rounding boundary would land one FP8 step away from the kernel's)."""
    w13, w2 = dense[layer]["w13"], dense[layer]["w2"]
    xs = act_fp8(x) if fp8 else x.double()
    out = torch.zeros(T, H, dtype=torch.float64)
    for e in range(E):
        rows, slots = (ids == e).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        h = xs[rows] @ w13[e].T
        if fp8:
            h = h.bfloat16().double()
        a = torch.nn.functional.silu(h[:, :I]) * h[:, I:]
        if fp8:
            a = act_fp8(a)
        out.index_add_(0, rows, weights[rows, slots].double()[:, None] * (a @ w2[e].T))
    return out


cfg = DwdpConfig(group_size=world, num_experts=E, weight_dtype=dtype, memory_backend=backend, slice_bytes=16384,
                 prefetch_depth=2)
harness = trt_harness.load(harness_so)
plugin = str(trt_harness.PLUGIN).encode()
mine = torch.Generator().manual_seed(seed * 31 + rank + 1)  # each rank serves its own tokens
worst = 0.0
with DwdpHooks.setup(cfg, MoeShape(L, H, I, E), lambda l, ex: {k: v[list(ex)] for k, v in truth[l].items()},
                     device=dev) as hooks:
    ctx = register_plugin_context(hooks, CTX)
    try:
        assert ctx.dtype is (ExpertDtype.FP8_BLOCK if fp8 else ExpertDtype.BF16)
        try:
            hooks.begin_step()
            raise AssertionError("the Python prefetcher pulled while the plugin owns the slots")
        except RingLentError:
            pass
        stream = torch.cuda.Stream(dev)
        for step in range(STEPS):
            for layer in range(L):
                routing = Routing((step + layer) % 3)
                x = torch.randn(T, H, generator=mine).bfloat16()
                logits = torch.randn(T, E, generator=mine)
                if routing is Routing.PRECOMPUTED:
                    ids = torch.stack([torch.randperm(E, generator=mine)[:K] for _ in range(T)])
                    ids[::5, -1] = E  # "no expert" rows
                    weights = torch.rand(T, K, generator=mine)
                    ra, rb = ids.to(torch.int32).to(dev), weights.to(dev)
                else:
                    vals, ids = torch.topk(logits, K, dim=-1)
                    weights = (torch.softmax(vals, -1) if routing is Routing.RENORMALIZE
                               else torch.softmax(logits, -1).gather(1, ids))
                    ra, rb = logits.to(dev), None
                xd, out = x.to(dev), torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=dev)
                values = [layer, E, H, I, K, int(routing), int(ctx.dtype), CTX]
                rc = harness.harness_enqueue(plugin, trt_harness.fields(values), ctypes.c_int64(T),
                                             ctypes.c_void_p(xd.data_ptr()), ctypes.c_void_p(ra.data_ptr()),
                                             ctypes.c_void_p(rb.data_ptr() if rb is not None else 0),
                                             ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(stream.cuda_stream))
                assert rc == 0, f"rank {rank} step {step} layer {layer}: enqueue returned {rc}"
                ref = reference(layer, x, ids, weights)
                err = float((out.double().cpu() - ref).norm() / ref.norm())
                worst = max(worst, err)
                assert err < 2e-2, f"rank {rank} step {step} layer {layer} {routing.name}: relative L2 error {err:.3g}"
        # The C++ ring pulls layers 0..D-1 at the first step's layer 0 and refills each slot on release (L > D).
        want = cfg.prefetch_depth + STEPS * L
        assert ctx.pulls_issued == want, (rank, ctx.pulls_issued, want)
    finally:
        ctx.close()
    # After close the Python hooks own the slots again and serve the same weights.
    hooks.begin_step()
    for layer in range(L):
        w = hooks.layer_weights(layer)
        assert torch.equal(w.w13.cpu().view(torch.uint8), truth[layer]["w13"].view(torch.uint8)), (rank, layer)
        hooks.layer_done(layer)
    hooks.end_step()
worst = comm.allreduce(worst, op=MPI.MAX)
if rank == 0:
    print(f"PASS {world} ranks {backend} {dtype}: worst relative L2 error {worst:.3g}")
