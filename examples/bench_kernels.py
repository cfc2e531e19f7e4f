"""Same as `trtllm-dwdp bench kernels`: split-weight expert MLP vs contiguous vs dense, copy overlap,
pull issue time. Needs a CUDA GPU.

    python examples/bench_kernels.py --shapes qwen3-30b-a3b --tokens 4096,16384 --json kernels.json
"""

import sys

from tensorrt_llm_dwdp.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
