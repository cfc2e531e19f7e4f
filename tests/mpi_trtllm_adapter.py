"""Run under mpirun with the fake `tensorrt_llm` on PYTHONPATH and TRTLLM_DWDP set: an expert-parallel
model (each rank loads its part of the experts, as TensorRT-LLM does) attached through the activation
path must give every rank the full model's output for its own tokens, pulling the rest; a step that
fails inside a MoE layer is handed to the executor, and the next step is right again.

argv: seed device dtype split [wrap]. wrap: none | 1.2 | main: each layer a ConfigurableMoE of that shape built
along its construction path after the adapter was installed (so without a token exchange). device: cpu | cuda (the ranks share GPU 0). dtype: float32 | bfloat16 |
fp8 (e4m3 weights with 128x128 fp32 block scales, as DeepSeek-V3 stores them). split: even | uneven
(7 experts over 2 ranks, ceil/floor as main splits them). Each layer is checked against a float32
reference computed from that layer's own input and the full (dequantized) experts, and the whole step
against the full model: the same fake modules built all-local on one rank (ep_size 1) with every expert
loaded, running their own forward. The DWDP model's modules must run their own kernels (kernel_calls)
while believing every expert local, and get their partition back at uninstall."""

import os
import sys

import torch
from mpi4py import MPI

import trtllm_fakes as fk
from tensorrt_llm_dwdp.integrations.trtllm import activate, adapter
from tensorrt_llm_dwdp.integrations.trtllm.partition import PARTITION

seed, world = int(sys.argv[1]), MPI.COMM_WORLD
device = torch.device(sys.argv[2])
kind, split = sys.argv[3], sys.argv[4]
wrap = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "none" else None
if device.type == "cuda":
    torch.cuda.set_device(0)
rank = world.Get_rank()
assert activate.activate()  # what the .pth does at start-up, where TRTLLM_DWDP is set
from tensorrt_llm._torch.pyexecutor.model_engine import PyTorchModelEngine  # noqa: E402 - after activation
import tensorrt_llm._torch.modules.fused_moe.configurable_moe  # noqa: E402,F401 - patched as TensorRT-LLM imports it

experts = 7 if split == "uneven" else 8
# NOTE: on GPUs (and CPU ranks with DWDP_SHM_GRANULARITY=2 MiB) pieces map at 2 MiB; with runs starting at expert 4
# an expert must take a multiple of 512 KiB to need no padding, which TensorRT-LLM's fused kernels cannot read
# (1024 x 1024: w2 takes 1 MiB even in FP8).
gpu_layout = device.type == "cuda" or int(os.environ.get("DWDP_SHM_GRANULARITY", "0")) >= 2 << 20
hidden, inter, layers = (1024, 1024, 3) if gpu_layout else (128, 128, 3)
act = torch.float32 if kind == "float32" else torch.bfloat16
tol = 1e-5 if kind == "float32" else 5e-2  # BF16 activations (FP8 weights are dequantized exactly in the reference)
g0 = torch.Generator().manual_seed(seed)
fulls, blocks, whole = [], [], []
for layer in range(layers):
    kw = dict(num_experts=experts, hidden=hidden, inter=inter, layer_idx=layer, ep_size=world.size, ep_rank=rank)
    one = dict(kw, ep_size=1, ep_rank=0)
    if kind == "fp8":
        q, scales, dense = {}, {}, {}
        for name, (rows, cols) in {"w1": (inter, hidden), "w3": (inter, hidden), "w2": (hidden, inter)}.items():
            s = torch.rand(experts, rows // 128, cols // 128, generator=g0) * 0.01 + 0.002
            q[name] = (torch.randn(experts, rows, cols, generator=g0) * 0.5).to(torch.float8_e4m3fn)
            scales[name] = s
            dense[name] = q[name].float() * s.repeat_interleave(128, 1).repeat_interleave(128, 2)
        moe = fk.ConfigurableMoE(wrap, backend_cls=fk.DeepGemmFusedMoE, **kw) if wrap else fk.DeepGemmFusedMoE(**kw)
        (moe.backend if wrap else moe).load_fp8(q, scales)  # only this rank's partition
        ref_moe = fk.DeepGemmFusedMoE(**one)
        ref_moe.load_fp8(q, scales)
        fulls.append(dense)
    else:
        full = fk.full_experts(experts, hidden, inter, seed + layer)
        moe = (fk.ConfigurableMoE(wrap, backend_cls=fk.CutlassFusedMoE, dtype=act, **kw) if wrap
               else fk.CutlassFusedMoE(dtype=act, **kw))
        (moe.backend if wrap else moe).load_weights(full)  # only this rank's partition
        ref_moe = fk.CutlassFusedMoE(dtype=act, **one)
        ref_moe.load_weights(full)
        fulls.append(full)
    blocks.append(fk.Block(moe, hidden, seed + 100 + layer))
    whole.append(fk.Block(ref_moe, hidden, seed + 100 + layer))
model = fk.Decoder(blocks).to(device)
full_model = fk.Decoder(whole).to(device)  # the full model: all experts local, one rank
holders = [b.experts.backend if wrap else b.experts for b in model.layers]
wrappers = [b.experts for b in model.layers] if wrap else []
for h in holders + [b.experts for b in full_model.layers]:  # the scale arguments follow the move to the device
    if hasattr(getattr(h, "quant_method", None), "setup_quant_scales"):
        h.quant_method.setup_quant_scales(h)
partition = [{n: getattr(h, n) for n in PARTITION} for h in holders]
fulls = [{k: v.to(device) for k, v in f.items()} for f in fulls]
seen = []
for b in model.layers:  # record each layer's input and output
    b.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
local = {n: p.detach().clone() for n, p in model.named_parameters()}
engine = PyTorchModelEngine(model_path="unused", model=model)  # attach: collective over both ranks
executor = fk.PyExecutor(engine)
# the module's own copy is gone until the first step points it at the composite tensors
freed = all(p.numel() == 0 for n, p in model.named_parameters() if "w3_w1" in n or "w2_weight" in n)
g = torch.Generator().manual_seed(seed + 1 + rank)
err, err_full, served, all_local = 0.0, 0.0, 0, True
for step in range(4):
    tokens = 0 if (rank == 1 and step == 1) else int(torch.randint(1, 9, (1,), generator=g))  # an idle step
    x = torch.randn(tokens, hidden, generator=g).to(device, act)
    if step == 2 and rank == 0:  # rank 0's step fails in its second MoE layer; rank 1 runs on
        model.layers[1].experts.routing_method.fail_next = RuntimeError("injected failure")
    seen.clear()
    with torch.no_grad():
        out = executor._forward_step(x)
    if out is None:
        continue
    served += 1
    all_local &= all(h.ep_size == 1 and h.expert_size_per_partition == experts == h.w3_w1_weight.shape[0]
                     and h.initial_local_expert_ids == list(range(experts)) and h.parallel_size == 1 for h in holders)
    all_local &= all(w.comm is None and w.ep_size == 1 for w in wrappers)
    with torch.no_grad():
        want = full_model(x)
    if tokens:
        err_full = max(err_full, float(((out.float() - want.float()).abs() / (1 + want.float().abs())).max()))
    for mod, inp, y in seen:
        ref = fk.reference_forward(inp.float(), [mod], [fulls[mod.experts.layer_idx]])
        err = max(err, float(((y.float() - ref).abs() / (1 + ref.abs())).max()) if tokens else 0.0)
failed = [str(e) for e in executor.errors]
pulled = sum(m.bytes_pulled for m in adapter.current_hooks().metrics())
kernels = [h.kernel_calls for h in holders]
adapter.uninstall()  # collective: restores the partition this rank loaded
restored = all(torch.equal(p.view(torch.uint8) if p.dtype == torch.float8_e4m3fn else p,
                           local[n].view(torch.uint8) if p.dtype == torch.float8_e4m3fn else local[n])
               for n, p in model.named_parameters())
restored &= [{n: getattr(h, n) for n in PARTITION} for h in holders] == partition
want_failed = ["injected failure"] if rank == 0 else []
# the failing step ran layer 0's kernel before layer 1's routing raised
want_kernels = [served + (1 if rank == 0 and i == 0 else 0) for i in range(layers)]
ok = (err < tol and err_full < tol and pulled > 0 and freed and restored and all_local and kernels == want_kernels
      and failed == want_failed and served == 4 - len(want_failed))
results = world.gather((rank, err, err_full, pulled, freed, restored, all_local, kernels, failed, served, ok), root=0)
if rank == 0:
    for r in results:
        print(f"rank {r[0]} ({device}, {kind}, {split}, ConfigurableMoE {wrap or 'none'}): max rel err {r[1]:.1e} (vs the full model {r[2]:.1e}), "
              f"pulled {r[3]} B, module weights freed {r[4]}, restored {r[5]}, all local while served {r[6]}, "
              f"module kernels ran {r[7]}, failed steps {r[8]}, steps served {r[9]}")
    print("PASS" if all(r[-1] for r in results) else "FAIL")
sys.exit(0 if ok else 1)
