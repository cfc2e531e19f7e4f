"""The host hook API in a dozen lines: how a serving engine drives DWDP.

    mpirun -n 2 --oversubscribe python examples/hooks_minimal.py

(as root, Open MPI also needs --allow-run-as-root; `trtllm-dwdp verify` adds it itself.)
"""

import torch
from mpi4py import MPI

from tensorrt_llm_dwdp import DwdpConfig, DwdpHooks, MoeShape
from tensorrt_llm_dwdp.moe import SoftmaxTopKRouting, expert_compute

LAYERS, HIDDEN, INTER, EXPERTS = 4, 64, 32, 8
g = torch.Generator().manual_seed(0)  # same weights on every rank
w13 = torch.randn(LAYERS, EXPERTS, 2 * INTER, HIDDEN, generator=g) / 8
w2 = torch.randn(LAYERS, EXPERTS, HIDDEN, INTER, generator=g) / 6
router = torch.randn(LAYERS, EXPERTS, HIDDEN, generator=g) / 8


def load(layer, experts):  # called once per MoE layer with this rank's experts
    return {"w13": w13[layer, experts], "w2": w2[layer, experts]}


config = DwdpConfig(group_size=MPI.COMM_WORLD.size, num_experts=EXPERTS, weight_dtype="float32")
with DwdpHooks.setup(config, MoeShape(LAYERS, HIDDEN, INTER, EXPERTS), load) as hooks:
    dev = hooks.backend.device  # cuda:N with CUDA VMM shards, cpu with shared host memory
    x = torch.randn(3 + MPI.COMM_WORLD.rank, HIDDEN, device=dev)
    route = SoftmaxTopKRouting(top_k=2)
    hooks.begin_step()
    for layer in range(LAYERS):
        r = route(x @ router[layer].to(dev).t())
        x = x + expert_compute(x, r.topk_ids, r.topk_weights, hooks.layer_weights(layer))  # [E, ...] views
        hooks.layer_done(layer)
    hooks.end_step()
    m = hooks.metrics()[0]
    print(f"rank {MPI.COMM_WORLD.rank}: holds experts {hooks.local_experts}, out norm {x.norm():.4f}, "
          f"pulled {m.bytes_pulled / 2**10:.0f} KiB, waited {m.fetch_wait_s * 1e3:.2f} ms")
