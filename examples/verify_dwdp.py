"""Check DWDP on N ranks against a float64 all-local reference.

    mpirun -n 4 --oversubscribe python examples/verify_dwdp.py --placement redundant --experts-per-rank 6

(as root, Open MPI also needs --allow-run-as-root; `trtllm-dwdp verify` adds it itself.)

Each rank holds a shard of the experts, pulls the rest from its peers one layer ahead, and
compares its output with the reference; one rank may stall (--stall-rank 1) to show that
the others never wait for it. Same as `trtllm-dwdp verify --ranks 4 ...`.
"""

import sys

from tensorrt_llm_dwdp.verify.job import main

if __name__ == "__main__":
    sys.exit(main())
