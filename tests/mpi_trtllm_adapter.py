"""Run under mpirun with the fake `tensorrt_llm` on PYTHONPATH and TRTLLM_DWDP set: an expert-parallel
model (each rank loads its half of the experts, as TensorRT-LLM does) attached through the activation
path must give every rank the full model's output for its own tokens, pulling the other half.

argv: seed [device]. On "cuda" the ranks share GPU 0 (CUDA IPC), experts are BF16 and each layer is
checked against a float32 reference computed from that layer's own input."""

import sys

import torch
from mpi4py import MPI

import trtllm_fakes as fk
from tensorrt_llm_dwdp.integrations.trtllm import activate, adapter

seed, world = int(sys.argv[1]), MPI.COMM_WORLD
device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
dtype, tol = (torch.bfloat16, 5e-2) if device.type == "cuda" else (torch.float32, 1e-5)  # BF16 rounding
if device.type == "cuda":
    torch.cuda.set_device(0)
rank = world.Get_rank()
assert activate.activate()  # what the .pth does at start-up, where TRTLLM_DWDP is set
from tensorrt_llm._torch.pyexecutor.model_engine import PyTorchModelEngine  # noqa: E402 - after activation

experts, hidden, inter, layers = 8, 128, 64, 3
fulls = [fk.full_experts(experts, hidden, inter, seed + layer) for layer in range(layers)]  # same on every rank
blocks = []
for layer in range(layers):
    moe = fk.CutlassFusedMoE(num_experts=experts, hidden=hidden, inter=inter, layer_idx=layer, ep_size=world.size,
                             ep_rank=rank, dtype=dtype)
    moe.load_weights(fulls[layer])  # only this rank's partition
    blocks.append(fk.Block(fk.ConfigurableMoE(moe) if layer % 2 else moe, hidden, seed + 100 + layer))
model = fk.Decoder(blocks).to(device)
fulls = [{k: v.to(device) for k, v in f.items()} for f in fulls]
seen = []
for b in model.layers:  # record each layer's input and output
    b.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
local = {n: p.detach().clone() for n, p in model.named_parameters()}
engine = PyTorchModelEngine(model_path="unused", model=model)  # attach: collective over both ranks
g = torch.Generator().manual_seed(seed + 1 + rank)
err = 0.0
for step in range(3):
    tokens = 0 if (rank == 1 and step == 1) else int(torch.randint(1, 9, (1,), generator=g))  # an idle step
    x = torch.randn(tokens, hidden, generator=g).to(device, dtype)
    seen.clear()
    with torch.no_grad():
        engine.forward(x)
        for mod, inp, out in seen:
            ref = fk.reference_forward(inp.float(), [mod], [fulls[mod.experts.layer_idx]])
            err = max(err, float(((out.float() - ref).abs() / (1 + ref.abs())).max()) if tokens else 0.0)
pulled = sum(m.bytes_pulled for m in adapter.current_hooks().metrics())
freed = all(p.numel() == 0 for n, p in model.named_parameters() if "w3_w1" in n or "w2_weight" in n)
adapter.uninstall()  # collective: restores the partition this rank loaded
restored = all(torch.equal(p, local[n]) for n, p in model.named_parameters())
ok = err < tol and pulled > 0 and freed and restored
results = world.gather((rank, err, pulled, freed, restored, ok), root=0)
if rank == 0:
    for r in results:
        print(f"rank {r[0]} ({device}, {dtype}): max rel err {r[1]:.1e}, pulled {r[2]} B, "
              f"module weights freed {r[3]}, restored {r[4]}")
    print("PASS" if all(r[-1] for r in results) else "FAIL")
sys.exit(0 if ok else 1)
