"""Run under mpirun: every rank's DWDP model must give the same logits as the all-local model."""

import sys

import torch
from mpi4py import MPI

from tensorrt_llm_dwdp import DwdpConfig
from tensorrt_llm_dwdp.runtime import Decoder, apply_dwdp, preset

seed = int(sys.argv[1])
world = MPI.COMM_WORLD
c = preset("tiny")
model = Decoder(c).init_random(seed)  # same weights on every rank
g = torch.Generator().manual_seed(seed + 1 + world.rank)
batches = []
for _ in range(3):
    lens = [int(n) for n in torch.randint(1, 12, (1 + world.rank,), generator=g)]
    batches.append((torch.randint(0, c.vocab, (sum(lens),), generator=g), lens))
with torch.no_grad():
    local = [model(ids, lens) for ids, lens in batches]
    hooks = apply_dwdp(model, DwdpConfig(group_size=world.size, num_experts=c.num_experts, weight_dtype="float32",
                                         memory_backend="cpu_shm"), comm=world)
    with hooks:
        dwdp = []
        for ids, lens in batches:
            hooks.begin_step()  # the host's step: a plain model between begin_step and end_step
            dwdp.append(model(ids, lens))
            hooks.end_step()
        pulled = sum(m.bytes_pulled for m in hooks.metrics())
err = max(float((a - b).abs().max()) for a, b in zip(local, dwdp))
ok = err <= 1e-5 and pulled > 0 and all(b.w13.numel() == 0 for b in model.moe_blocks())
results = world.gather((world.rank, err, pulled, ok), root=0)
if world.rank == 0:
    for r in results:
        print(f"rank {r[0]}: max |dwdp - local| = {r[1]:.2e}, pulled {r[2]} B, {'ok' if r[3] else 'FAIL'}")
    print("PASS" if all(r[3] for r in results) else "FAIL")
sys.exit(0 if ok else 1)
