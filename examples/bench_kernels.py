"""Same as `trtllm-dwdp bench kernels`: expert GEMMs on DWDP's composite tensors vs an ordinary allocation vs
dense cuBLAS, the MLP with the next layer's pull in flight, the hook calls' host time. Needs a CUDA GPU.

    python examples/bench_kernels.py --shapes qwen3-30b-a3b --tokens 4096,16384 --json kernels.json
"""

import sys

from tensorrt_llm_dwdp.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
