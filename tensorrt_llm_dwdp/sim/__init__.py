"""Performance model of DWDP vs DEP (`trtllm-dwdp sim`).

Counts FLOPs and bytes per layer from a model's shapes, turns them into time with a machine's
datasheet rates (optionally calibrated by `trtllm-dwdp bench kernels`), and plays N ranks
layer by layer: DWDP ranks run on their own and pull experts over NVLink; DEP ranks meet at
every MoE layer for an all-to-all. Pure Python and numpy: no CUDA, nothing at import time.

Modules, in the order data flows through them:
  machines   datasheet rates per GPU and the efficiency fractions applied to them
  models     MoE model presets (shapes) and precisions (bytes per weight)
  costs      one layer's roofline times for a rank's batch
  workload   ISL distributions and packing requests into iterations by max_num_tokens
  scenario   one deployment (machine x model x precision x ranks x workload), validated
  engine     the discrete-event model of N ranks (DWDP pulls with contention; DEP barriers)
  analysis   batch-1 roofline, homogeneous per-layer budget and the crossover
  calibrate  reads the JSON of `trtllm-dwdp bench kernels`
  auto       picks "dwdp" or "dep" for a workload, with the reason
  cli, plot  `trtllm-dwdp sim` and its --explain plot
"""
