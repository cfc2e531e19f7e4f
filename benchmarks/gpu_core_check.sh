#!/usr/bin/env bash
# On a GPU machine with no network: build against the local torch, run the whole test suite
# (GPU tests included), the multi-rank CUDA IPC checks and `trtllm-dwdp bench kernels`;
# their tables go into BENCHMARKS.md.
# Usage: bash benchmarks/gpu_core_check.sh [OUT_DIR]
# Env: TESTS (pytest targets, default tests), SKIP_VERIFY=1, SKIP_BENCH=1, BENCH_ARGS (for bench kernels).
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
trtllm-dwdp doctor
python3 -m pytest -q -rs -p no:cacheprovider ${TESTS:-tests} 2>&1 | tee "$out/pytest.log" | tail -25
rc=${PIPESTATUS[0]}
[ "${SKIP_VERIFY:-0}" = 1 ] || for n in 2 4; do
  echo "== trtllm-dwdp verify --ranks $n --backend cuda_ipc"
  trtllm-dwdp verify --ranks "$n" --backend cuda_ipc --steps 4 --tokens 5,40,0,17 --zero-rank $((n - 1)) \
    --json "$out/verify_cuda_ipc_${n}.json" || rc=1
done
[ "${SKIP_VERIFY:-0}" = 1 ] || trtllm-dwdp verify --ranks 4 --backend cuda_ipc --placement redundant --experts-per-rank 6 --steps 8 \
  --stall-rank 1 --stall-seconds 3 --json "$out/verify_cuda_ipc_stall.json" || rc=1
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "== trtllm-dwdp bench kernels ${BENCH_ARGS:-}"
  trtllm-dwdp bench kernels ${BENCH_ARGS:-} --json "$out/bench_kernels.json" || rc=1
fi
exit $rc
