#!/usr/bin/env bash
# DWDP vs DEP across the GPUs of one host (one rank per GPU), in steps:
#   build    the extension (CUTLASS kernels where the nvidia-cutlass package is installed)
#   link     peer-link bandwidth: one peer, all pulling at once, slice sizes (benchmarks/link_bench.py)
#   profile  where one step's GPU time goes, on GPU 0 (benchmarks/profile_step.py)
#   kernels  `bench kernels`, one rank per GPU: rank 0's expert MLP alone vs while its next layer is pulled from
#            the other GPUs over NVLink, composite vs ordinary GEMMs, and the hook calls' host time
#   bench    `trtllm-dwdp bench` DWDP vs DEP per preset, max_num_tokens and ISL CV (32 MiB slices)
#   slices   the same with 2 MiB slices (not in the default STEPS)
#   sim      `trtllm-dwdp sim compare`: predicted vs measured, default and calibrated from link + kernels
# Usage: bash benchmarks/multi_gpu_check.sh [OUT_DIR]
# Env: STEPS (build,link,profile,kernels,bench,sim), PRESETS (qwen3-30b-a3b deepseek-v3-layers), CVS (0,0.2,0.4),
#      MNTS (8192 16384 32768), ISL_MEAN (8192; at most max_num_tokens / 2), ITERS (iterations per rank to aim
#      for, 10; sets the requests),
#      LAYERS (default: 4 for Qwen3; 6 = 3 dense + 3 MoE for DeepSeek-V3, as measured on 2 GPUs; a rank
#      holds its expert shard, 11.3 GB per MoE layer on 2 GPUs, plus DWDP's two slots of one layer),
#      BUDGET_S (stop starting benches after this many seconds, 0 = no limit).
set -uo pipefail
out=${1:-out/multi_gpu_check}  # ignored by git; copy results into benchmarks/results once recorded
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "multi_gpu_check.sh: no NVIDIA GPU visible (nvidia-smi -L failed); nothing was built or run. Fix: run it on a host with several GPUs." >&2
  exit 2
fi
mkdir -p "$out"
# NVLink multicast stays off: the measurement is about copy-engine pulls and NCCL all-to-all.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
steps=",${STEPS:-build,link,profile,kernels,bench,sim},"
has() { [[ $steps == *",$1,"* ]]; }
n=$(nvidia-smi -L | wc -l)
isl=${ISL_MEAN:-8192}
rc=0
if has build; then
  DWDP_BUILD_EXT=1 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
  nvidia-smi topo -m
  trtllm-dwdp doctor
fi
if has link; then
  echo "== link bench ($n GPUs)"
  python3 benchmarks/link_bench.py --mib 512 --slice-mib 2,8,32 --json "$out/link_bench.json" || rc=1
fi
layers_of() { if [ -n "${LAYERS:-}" ]; then echo "$LAYERS"; elif [ "$1" = deepseek-v3-layers ]; then echo 6; else echo 4; fi; }
if has profile; then
  for preset in ${PRESETS:-qwen3-30b-a3b deepseek-v3-layers}; do
    echo "== profile_step $preset"
    python3 benchmarks/profile_step.py --preset "$preset" --layers "$(layers_of "$preset")" --tokens 16384 \
      --isl "$isl" || rc=1
  done
fi
if has kernels; then
  echo "== bench kernels, one rank per GPU, pulls over NVLink"
  trtllm-dwdp bench kernels --ranks "$n" --sections gemm,overlap,hooks --tokens 8192,16384 \
    --json "$out/kernels_nvlink.json" || rc=1
fi
bench() {  # preset mnt slice_mib json_suffix: one `trtllm-dwdp bench` over the CVs
  local preset=$1 mnt=$2 slice=$3 tag=$4
  if [ "${BUDGET_S:-0}" -gt 0 ] && [ "$SECONDS" -gt "$BUDGET_S" ]; then
    echo "== budget of ${BUDGET_S}s spent: $preset max_num_tokens $mnt ($tag) not run"; rc=1; return
  fi
  # requests up to 2x the mean (the normal ISL is clipped there) must fit one iteration: no chunked prefill
  local mean=$(( isl < mnt / 2 ? isl : mnt / 2 ))
  local req=$(( ${ITERS:-10} * mnt / mean )); [ "$req" -lt 4 ] && req=4
  echo "== trtllm-dwdp bench --ranks $n --preset $preset --isl $mean --max-num-tokens $mnt --requests $req" \
       "--slice-mib $slice (t=${SECONDS}s)"
  trtllm-dwdp bench --ranks "$n" --preset "$preset" --layers "$(layers_of "$preset")" --vocab 32000 \
    --modes dwdp,dep --isl "$mean" --cv-sweep "${CVS:-0,0.2,0.4}" --max-num-tokens "$mnt" --requests "$req" \
    --slice-mib "$slice" --timeout 300 --json "$out/bench_${preset}_${n}gpu_mnt${mnt}${tag}.json" \
    --plot-dir "$out/plots_${preset}_mnt${mnt}${tag}" || rc=1
}
if has bench; then
  for preset in ${PRESETS:-qwen3-30b-a3b deepseek-v3-layers}; do
    for mnt in ${MNTS:-8192 16384 32768}; do bench "$preset" "$mnt" 32 ""; done
  done
fi
if has slices; then  # the same runs with the old 2 MiB slices, for comparison
  for preset in ${PRESETS:-qwen3-30b-a3b deepseek-v3-layers}; do
    for mnt in ${MNTS:-8192 16384 32768}; do bench "$preset" "$mnt" 2 _slice2; done
  done
fi
if has sim; then
  echo "== trtllm-dwdp sim compare"
  cal=$(ls "$out"/kernels_nvlink.json "$out"/link_bench.json 2>/dev/null | paste -sd,)
  trtllm-dwdp sim compare "$out"/bench_*gpu_mnt*.json --machine h200 ${cal:+--calibration "$cal"} \
    --json "$out/sim_compare.json" || rc=1
fi
exit $rc
