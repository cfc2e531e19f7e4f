"""Run under mpirun, one rank per GPU: DEP's MoE layer (NCCL exchange, bound rows: static shapes, no host sync)
with the BF16 grouped kernel, (1) against all-local experts on the same tokens, computed in float64, and (2)
captured in a CUDA graph and replayed on new routing and activations copied into the captured inputs, against
eager. Prints PASS on rank 0.

    mpirun -n 2 python tests/mpi_dep_graph.py SEED
"""

import sys

import torch
from mpi4py import MPI

from tensorrt_llm_dwdp.config import DepRows
from tensorrt_llm_dwdp.moe import ExpertKernel, ExpertWeights, expert_compute, moe_experts
from tensorrt_llm_dwdp.moe.exchange import AllToAllExchange, CommClock, ExchangeBackend
from tensorrt_llm_dwdp.placement import even_placement
from tensorrt_llm_dwdp.runtime.dep import init_torch_distributed, shutdown_torch_distributed

comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
assert torch.cuda.device_count() >= world, "one GPU per rank"
dev = torch.device("cuda", rank)
torch.cuda.set_device(dev)
assert not init_torch_distributed(comm, dev)  # NCCL: no staging through the host
E, H, I, K, T = 16, 256, 128, 4, 96
g = torch.Generator().manual_seed(int(sys.argv[1]))  # the same experts on every rank
w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5)
w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5)
placement = even_placement(E, world)
owner, local_index = torch.empty(E, dtype=torch.long), torch.empty(E, dtype=torch.long)
for r, mine in enumerate(placement.ranks):
    owner[list(mine)] = r
    local_index[list(mine)] = torch.arange(len(mine))
mine = list(placement.local_experts(rank))
local = ExpertWeights(w13[mine].bfloat16().to(dev), w2[mine].bfloat16().to(dev))
ex = AllToAllExchange(owner, local_index, [len(m) for m in placement.ranks], T, ExchangeBackend.NCCL, dev,
                      CommClock(dev), rows=DepRows.BOUND)


def compute(x, ids, wts, rows=None, assignments=None, exact=None):
    return expert_compute(x, ids, wts, local, kernel=ExpertKernel.GROUPED_MM, rows=rows, assignments=assignments,
                          exact=exact)


def inputs(seed):
    gi = torch.Generator().manual_seed(seed * 1000 + rank)
    x = torch.randn(T, H, generator=gi)
    ids = torch.stack([torch.randperm(E, generator=gi)[:K] for _ in range(T)])
    return x, ids, torch.rand(T, K, generator=gi)


def check_local(y, x, ids, wts, what):
    want = moe_experts(x.double(), ids, wts.double(), ExpertWeights(w13.bfloat16().double(), w2.bfloat16().double()))
    err = float((y.double().cpu() - want).norm() / want.norm())
    assert err < 2e-2 and float(want.abs().max()) > 0.05, (rank, what, err)  # bf16 operands and intermediates


x, ids, wts = inputs(1)
sx, sids, swts = x.bfloat16().to(dev), ids.to(dev), wts.to(dev)
eager = ex.run(sx, sids, swts, compute)
check_local(eager, x.bfloat16().float(), ids, wts, "eager")
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):  # warm-up off the capture stream (allocator, NCCL's first use)
    ex.run(sx, sids, swts, compute)
torch.cuda.current_stream().wait_stream(side)
torch.cuda.synchronize()
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    static = ex.run(sx, sids, swts, compute)
for seed in (2, 3):
    x, ids, wts = inputs(seed)
    sx.copy_(x.bfloat16())
    sids.copy_(ids)
    swts.copy_(wts)
    static.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    again = ex.run(sx, sids, swts, compute)
    assert torch.equal(static, again), (rank, seed)
    check_local(static, x.bfloat16().float(), ids, wts, f"replay {seed}")
shutdown_torch_distributed()
ok = comm.allreduce(1, op=MPI.SUM) == world
if rank == 0 and ok:
    print("PASS")
