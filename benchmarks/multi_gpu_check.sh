#!/usr/bin/env bash
# DWDP vs DEP across the GPUs of one host (one rank per GPU): build, peer-link bandwidth, the runtime
# benchmark at several ISL CVs, and the simulator's prediction for the same settings.
# Usage: bash benchmarks/multi_gpu_check.sh [OUT_DIR]
# Env: PRESETS (default qwen3-30b-a3b), CVS (0,0.2,0.4), MNT (max_num_tokens, 16384), REQ (requests/rank, 4),
#      LAYERS (4), ISL_MEAN (8192).
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
# NVLink multicast stays off: the measurement is about copy-engine pulls and NCCL all-to-all.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
n=$(nvidia-smi -L | wc -l)
DWDP_BUILD_EXT=1 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
nvidia-smi topo -m
trtllm-dwdp doctor
rc=0
echo "== link bench ($n GPUs)"
python3 benchmarks/link_bench.py --json "$out/link_bench.json" || rc=1
for preset in ${PRESETS:-qwen3-30b-a3b}; do
  echo "== trtllm-dwdp bench --ranks $n --preset $preset"
  trtllm-dwdp bench --ranks "$n" --preset "$preset" --layers "${LAYERS:-4}" --vocab 32000 --modes dwdp,dep \
    --isl "${ISL_MEAN:-8192}" --cv-sweep "${CVS:-0,0.2,0.4}" --max-num-tokens "${MNT:-16384}" \
    --requests "${REQ:-4}" --json "$out/bench_${preset}_${n}gpu.json" --plot-dir "$out" || rc=1
  model=$preset; [ "$preset" = deepseek-v3-layers ] && model=deepseek-v3
  for cv in $(echo "${CVS:-0,0.2,0.4}" | tr , ' '); do
    echo "== trtllm-dwdp sim --model $model --ranks $n --isl normal:${ISL_MEAN:-8192}:$cv"
    trtllm-dwdp sim --machine h200 --model "$model" --precision bf16 --ranks "$n" \
      --isl "normal:${ISL_MEAN:-8192}:$cv" --max-num-tokens "${MNT:-16384}" | tail -8 || rc=1
  done
done
exit $rc
