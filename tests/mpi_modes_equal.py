"""Run under mpirun: local, DWDP, DEP and DEP+EPLB give the same logits for the same requests on every rank.

With argument `dense-between-moe` the model has a dense layer between MoE layers (MoE layers 1, 2, 4, as
Qwen3-MoE's mlp_only_layers make them), which DWDP and DEP must index by the model's layer.
Rank 1 has no tokens (it runs DEP's zero-token forward); the others have different batches. DEP
runs over gloo with split sizes (occupied rows only, CPU ranks' default) and with the fixed-capacity
exchange (moe/exchange.py); their collectives must have run (the clocks saw them) for the comparison
to mean anything.
"""

import dataclasses
import sys

import torch
from mpi4py import MPI

from tensorrt_llm_dwdp import DwdpConfig
from tensorrt_llm_dwdp.runtime import Decoder, apply_dwdp, preset
from tensorrt_llm_dwdp.runtime.model_config import Yarn
from tensorrt_llm_dwdp.moe.exchange import CommClock, ExchangeBackend
from tensorrt_llm_dwdp.runtime.dep import apply_dep, apply_eplb, init_torch_distributed, shutdown_torch_distributed

seed = int(sys.argv[1])
world = MPI.COMM_WORLD
rank = world.rank
cfg = preset("tiny")
if sys.argv[2:] == ["dense-between-moe"]:
    cfg = dataclasses.replace(cfg, layers=5, mlp_only_layers=(3,), rope_interleave=True,
                              yarn=Yarn(40.0, 64, mscale=1.0, mscale_all_dim=0.8))
    assert cfg.moe_layer_ids == (1, 2, 4)
g = torch.Generator().manual_seed(seed + 1 + rank)
lens = [] if rank == 1 else [int(n) for n in torch.randint(1, 20, (1 + rank % 3,), generator=g)]
ids = torch.randint(0, cfg.vocab, (sum(lens),), generator=g)

with torch.no_grad():
    local = Decoder(cfg).init_random(seed)(ids, lens)
    # DWDP and DEP make only their ranks' experts (lazy_experts); local has every stack made in full
    m = Decoder.build(cfg, seed, lazy_experts=True)
    with apply_dwdp(m, DwdpConfig(group_size=world.size, num_experts=cfg.num_experts, weight_dtype="float32",
                                  memory_backend="cpu_shm"), comm=world) as hooks:
        hooks.begin_step()
        dwdp = m(ids, lens)
        hooks.end_step()
    m = Decoder.build(cfg, seed, lazy_experts=True)
    clock = CommClock(torch.device("cpu"))
    backend = apply_dep(m, clock, max_num_tokens=64, stage_on_host=init_torch_distributed(world, torch.device("cpu")))
    dep = m(ids, lens)
    exchanged = backend is ExchangeBackend.GLOO_SPLITS and clock.host_s > 0
    # the fixed-capacity exchange, the named fallback
    m = Decoder.build(cfg, seed, lazy_experts=True)
    fixed_clock = CommClock(torch.device("cpu"))
    fixed_backend = apply_dep(m, fixed_clock, max_num_tokens=64, backend=ExchangeBackend.GLOO)
    dep_fixed = m(ids, lens)
    exchanged = exchanged and fixed_backend is ExchangeBackend.GLOO and fixed_clock.host_s > 0
    # DEP+EPLB: plain DEP measures the load for one step, then one redundant slot per rank holds a replica
    m = Decoder.build(cfg, seed, lazy_experts=True)
    apply_dep(m, clock, max_num_tokens=64, keep_experts=True)
    for b in m.moe_blocks():
        b.experts.count_load(cfg.num_experts, torch.device("cpu"))
    m(ids, lens)
    eplb = apply_eplb(m, clock, max_num_tokens=64, redundant=1)
    replicated = eplb["slots_per_rank"] == cfg.num_experts // world.size + 1
    dep_eplb = m(ids, lens)
shutdown_torch_distributed()

TOL = 1e-4  # float32; the three modes sum the same expert outputs in different orders
def maxdiff(a, b):
    return float((a - b).abs().max()) if a.numel() else 0.0


errs = (maxdiff(dwdp, local), maxdiff(dep, local), maxdiff(dep_fixed, local), maxdiff(dep_eplb, local))
ok = exchanged and replicated and max(errs) <= TOL and \
    dwdp.shape == dep.shape == dep_fixed.shape == dep_eplb.shape == local.shape == (len(lens), cfg.vocab)
for r, e, o, n in world.gather((rank, errs, ok, len(lens)), root=0) or []:
    print(f"rank {r}: {n} sequences, max |dwdp - local| {e[0]:.2e}, max |dep - local| {e[1]:.2e}, "
          f"max |dep fixed capacity - local| {e[2]:.2e}, max |dep+eplb - local| {e[3]:.2e}, {'ok' if o else 'FAIL'}")
if rank == 0:
    print("modes agree within", TOL)
sys.exit(0 if ok else 1)
