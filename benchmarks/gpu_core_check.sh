#!/usr/bin/env bash
# On a GPU machine with no network: build against the local torch, then one of
#   test   the GPU tests and the multi-rank CUDA VMM / CUDA IPC checks (BF16 and FP8, 2 and 4 ranks);
#   bench  `trtllm-dwdp bench kernels` (BENCH_ARGS), its JSON and table under OUT_DIR.
# Usage: bash benchmarks/gpu_core_check.sh test|bench|all [OUT_DIR]
# OUT_DIR defaults to out/gpu_check (ignored by git): results are copied into benchmarks/results by hand,
# with their date and device, once they are recorded in BENCHMARKS.md.
# Env: TESTS (pytest targets for `test`, default: the GPU-marked tests of the whole suite), BENCH_ARGS.
set -uo pipefail
what=${1:-all}
out=${2:-out/gpu_check}
case "$what" in test|bench|all) ;; *) echo "gpu_core_check.sh: unknown step '$what'. Fix: test, bench or all." >&2; exit 2 ;; esac
# Before the build (minutes of CUDA compiles): a machine without a GPU can run none of this.
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_core_check.sh: no NVIDIA GPU visible (nvidia-smi -L failed); nothing was built or run. Fix: run it on a GPU machine." >&2
  exit 2
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DWDP_CUDA_ARCHS=${DWDP_CUDA_ARCHS:-90a}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Wheels a machine without network cannot fetch, from the checkout's wheels/ (ignored by git), fetched beforehand:
#   pip download nvidia-cutlass==4.2.0.0 sgl-deep-gemm==0.1.5.post1 apache-tvm-ffi==0.1.11 --no-deps -d wheels \
#     --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
# nvidia-cutlass: the headers our CUTLASS kernels build with; the other two: the `deepgemm` extra (built for torch
# 2.11; its kernels JIT-compile with nvcc, at setup, into DWDP_DEEPGEMM_CACHE).
shopt -s nullglob
wheels=(wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps "${wheels[@]}" 2>&1 | tail -3
fi
export DWDP_DEEPGEMM_CACHE=${DWDP_DEEPGEMM_CACHE:-$(cd "$out" && pwd)/deepgemm_cache}
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
trtllm-dwdp doctor | tee "$out/doctor.log" | grep -E "GPUs|cuda:|DeepGEMM|extension"
rc=0
if [ "$what" = test ] || [ "$what" = all ]; then
  python3 -m pytest -q -rs -p no:cacheprovider -m gpu ${TESTS:-tests} 2>&1 | tee "$out/pytest_gpu.log" | tail -25
  rc=${PIPESTATUS[0]}
  for backend in cuda_vmm cuda_ipc; do
    for n in 2 4; do
      for dtype in bfloat16 float8_e4m3fn; do
        echo "== trtllm-dwdp verify --ranks $n --backend $backend --dtype $dtype"
        trtllm-dwdp verify --ranks "$n" --backend "$backend" --dtype "$dtype" --hidden 256 --inter 128 --steps 4 \
          --tokens 5,40,0,17 --zero-rank $((n - 1)) --json "$out/verify_${backend}_${n}_${dtype}.json" | tail -8 || rc=1
      done
    done
  done
  trtllm-dwdp verify --ranks 4 --backend cuda_vmm --placement redundant --experts-per-rank 6 --steps 8 \
    --stall-rank 1 --stall-seconds 3 --json "$out/verify_cuda_vmm_stall.json" | tail -8 || rc=1
  trtllm-dwdp verify --ranks 2 --backend cuda_vmm --placement "0-4;5-15" --pull-issue batched --steps 3 | tail -4 || rc=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  echo "== trtllm-dwdp bench kernels ${BENCH_ARGS:-}"
  trtllm-dwdp bench kernels ${BENCH_ARGS:-} --json "$out/bench_kernels.json" 2>&1 | tee "$out/bench_kernels.log" || rc=1
fi
exit $rc
