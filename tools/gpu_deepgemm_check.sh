#!/usr/bin/env bash
# On a Hopper GPU machine with no network: DeepGEMM as an expert kernel. Installs the two wheels of the
# `deepgemm` extra from wheels/ (ignored by git), builds our extension against the local torch, runs
# tests/test_deepgemm.py (GPU cases included) and `trtllm-dwdp bench kernels` (DeepGEMM, CUTLASS and
# torch._grouped_mm side by side), writing logs and JSON under OUT_DIR.
# Fetch the wheels beforehand, on a machine with network, into the checkout's wheels/:
#   pip download sgl-deep-gemm==0.1.5.post1 apache-tvm-ffi==0.1.11 --no-deps -d wheels \
#     --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
# (sgl-deep-gemm is built for torch 2.11; its kernels JIT-compile with nvcc at first use, into
# DWDP_DEEPGEMM_CACHE, by default OUT_DIR/deepgemm_cache.)
# Usage: bash tools/gpu_deepgemm_check.sh test|bench|all [OUT_DIR]    Env: BENCH_ARGS, TESTS.
set -uo pipefail
what=${1:-all}
out=${2:-out/gpu_deepgemm}
case "$what" in test|bench|all) ;; *) echo "gpu_deepgemm_check.sh: unknown step '$what'. Fix: test, bench or all." >&2; exit 2 ;; esac
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_deepgemm_check.sh: no NVIDIA GPU visible (nvidia-smi -L failed); nothing was installed or run. Fix: run it on a GPU machine." >&2
  exit 2
fi
shopt -s nullglob
wheels=(wheels/sgl_deep_gemm-0.1.5.post1-*.whl wheels/apache_tvm_ffi-0.1.11-*.whl)
if [ ${#wheels[@]} -ne 2 ]; then
  echo "gpu_deepgemm_check.sh: wheels/ lacks sgl_deep_gemm-0.1.5.post1 or apache_tvm_ffi-0.1.11 (found: ${wheels[*]:-none}). Fix: the pip download in this script's header." >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 DWDP_CUDA_ARCHS=${DWDP_CUDA_ARCHS:-90a}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export DWDP_DEEPGEMM_CACHE=${DWDP_DEEPGEMM_CACHE:-$out/deepgemm_cache}
python3 -m pip install -q --no-index --no-deps "${wheels[@]}" 2>&1 | tail -3
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
trtllm-dwdp doctor | tee "$out/doctor.log" | grep -E "GPUs|cuda:|DeepGEMM|extension"
rc=0
if [ "$what" = test ] || [ "$what" = all ]; then
  python3 -m pytest -q -rs -p no:cacheprovider ${TESTS:-tests/test_deepgemm.py tests/test_kernels.py tests/test_fp8.py} \
    2>&1 | tee "$out/pytest_deepgemm.log" | tail -25
  rc=${PIPESTATUS[0]}
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  echo "== trtllm-dwdp bench kernels ${BENCH_ARGS:---sections gemm}"
  trtllm-dwdp bench kernels ${BENCH_ARGS:---sections gemm} --json "$out/bench_kernels.json" 2>&1 \
    | tee "$out/bench_kernels.log" || rc=1
fi
exit $rc
