"""Where DWDP pays: the model's crossover and predicted speedup for each preset and machine,
and what mode `auto` would pick. CPU only, a few seconds.

    python examples/sim_crossover.py [--isl normal:8192:0.2] [--max-num-tokens 16384]
"""

import argparse

from tensorrt_llm_dwdp.sim.analysis import crossover, roofline_batch1
from tensorrt_llm_dwdp.sim.decide import decide
from tensorrt_llm_dwdp.sim.machines import get_machine
from tensorrt_llm_dwdp.sim.models import MODELS, get_model, get_precision
from tensorrt_llm_dwdp.sim.scenario import Scenario
from tensorrt_llm_dwdp.workloads.requests import parse_isl

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--isl", default="normal:8192:0.2")
p.add_argument("--max-num-tokens", type=int, default=16384)
args = p.parse_args()

print("batch-1 roofline, DeepSeek-R1 NVFP4, DWDP4 vs DEP4 on GB200 (upstream: 0.10 0.73 1.27 1.17):")
r1, gb200, nvfp4 = get_model("deepseek-r1"), get_machine("gb200"), get_precision("nvfp4")
for isl in (1024, 8192, 16384, 32768):
    up = roofline_batch1(gb200, r1, nvfp4, 4, isl, count_scales=False)
    phys = roofline_batch1(gb200, r1, nvfp4, 4, isl)
    print(f"  ISL {isl:6d}: T_DEP/T_DWDP {up.dep_over_dwdp:.3f} (4-bit weights), "
          f"{phys.dep_over_dwdp:.3f} (with scales)")

print(f"\nISL {args.isl}, max_num_tokens {args.max_num_tokens}, 8 ranks:")
print(f"{'machine':8}{'model':18}{'prec':7}{'crossover':>11}{'speedup':>9}  auto")
for machine in ("h100", "h200", "b200", "gb200"):
    m = get_machine(machine)
    prec = "nvfp4" if m.supports("nvfp4") else "fp8"
    for model in MODELS:
        if model == "deepseek-v3":
            continue  # same shapes as deepseek-r1
        s = Scenario(m, get_model(model), get_precision(prec), 8, parse_isl(args.isl), args.max_num_tokens,
                     iterations=8)
        d = decide(s)
        cross = crossover(s).tokens
        speed = f"{d.speedup:.2f}x" if d.speedup else "-"
        print(f"{machine:8}{model:18}{prec:7}{cross or '-':>11}{speed:>9}  {d.mode}: {d.reason}")
