#!/usr/bin/env bash
# Several areas' GPU checks in one call on one machine (device time is scarce: one start, one log set).
# Parts run in the order given; each is a step with its own log under $OUT/combined/ and a time limit.
#   baseline   the card's ceilings (copy bandwidth, dense matmul), written to the baseline file the other
#              benchmarks read for their roofline fractions (~40 s)
#   moe1       GLM-4.7-Flash MoE layer, int4: 1 and 256 tokens (graph, in-graph per layer, slow_path), and
#              benchmark_cpp_dispatch at 100/1000/5000 (~2 min)
#   moetests   the MoE GPU tests (kernels, layer / CUDA graph)
#   moemixed   run_mixed_precision_bench.py --full --model glm4 (~2.5 min)
#   moeexplore MoE expert-kernel configurations at 256 and 16 tokens, int4, including the swap-AB tiles, with a
#              per-kernel profile (gpu/moe_explore.py --candidates swap, ~2 min)
#   align      the alignment kernels alone, old single program vs multi-program (gpu/moe_align_time.py)
#   glmgemm    int4 selection sweep on the GLM-4.7-Flash expert shapes (M 1, 4, 16, 64), merged into the
#              packaged table, then bench_gemm on those shapes against fp16 cuBLAS and torch's int4 kernel
# Usage (repository root, on the GPU machine): bash gpu/combined_check.sh PART...
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
LOG="$OUT/combined"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
STEP_TAIL=40
source gpu/_steps.sh
log_env
GLM=glm47_expert_gate_up,glm47_expert_down
for part in "$@"; do
  case "$part" in
  baseline)
    step baseline 120 "$PY" benchmarks/baseline_benchmark.py --copy-mib 256 1024 --mm-size 8192 \
      --output "$LOG/baseline.jsonl" ;;
  moe1)
    step kernel_dispatch_int4 200 "$PY" benchmarks/bench_moe_kernel_dispatch.py --tokens 1 256 --repeats 30 \
      --warmup 3 --output "$LOG/kernel_dispatch_int4.jsonl"
    step cpp_dispatch 150 "$PY" scripts/benchmark_cpp_dispatch.py --counts 100 1000 5000 --repeats 10 --warmup 2 \
      --output "$LOG/cpp_dispatch.jsonl" ;;
  moetests)
    step moe_tests 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_moe_kernels.py \
      tests/test_moe_layer.py tests/test_moe_align.py ;;
  moemixed)
    step mixed_glm4_full 300 "$PY" scripts/run_mixed_precision_bench.py --full --model glm4 --repeats 20 \
      --warmup 3 --output "$LOG/mixed_glm4_full.jsonl" ;;
  moeexplore)
    step moe_explore 200 "$PY" gpu/moe_explore.py --tokens 256 16 --recipes int4 --candidates swap ;;
  align)
    step align_time 120 "$PY" gpu/moe_align_time.py --output "$LOG/align_time.jsonl" ;;
  glmgemm)
    step glm_selection 300 "$PY" benchmarks/bench_kernel_selection.py --shapes $GLM --m 1,4,16,64 \
      --formats int4 --warmup 3 --repeats 15 --merge --output "$LOG/glm_selection.jsonl"
    cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
    step glm_gemm 150 "$PY" benchmarks/bench_gemm.py --shapes $GLM --m 1,16,64,256 --formats int4 \
      --warmup 5 --repeats 20 --output "$LOG/glm_gemm.jsonl" ;;
  *) echo "unknown part $part" >&2; failed+=("$part") ;;
  esac
done
echo "failed steps: ${failed[*]:-none}" | tee -a "$LOG/summary.txt"
