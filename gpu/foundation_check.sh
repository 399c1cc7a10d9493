#!/usr/bin/env bash
# Foundation GPU check: device ceilings (writes results/baseline-<gpu>.json, which later benchmarks of the same
# call read: run this first), the Triton bf16 conversion kernel vs torch, memory access patterns, host<->device
# transfers, and the harness/kernel tests on CUDA. Logs and JSON lines go to $OUT/foundation/.
# Usage (repository root, on the GPU machine): bash gpu/foundation_check.sh [core|extras|all]
#   core (default, ~5 min): the above.  extras (~5 min): bench_clean, bench_dtype_perf, bench_buffer_ops,
#   bench_fp4_metal, ab_test_kernels (attention, moe, gemm plain and by CUDA graph), bench_quantization (rtn).
#   extras read the baseline file core writes: run core first (same call, or `all`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
LOG="$OUT/foundation"
mkdir -p "$LOG" results
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
MODE="${1:-core}"
case "$MODE" in core|extras|all) ;; *) echo "usage: $0 [core|extras|all]" >&2; exit 2 ;; esac
STEP_TAIL=40
source gpu/_steps.sh

log_env

if [ "$MODE" != extras ]; then
  step baseline 200 "$PY" benchmarks/baseline_benchmark.py --output "$LOG/baseline_benchmark.jsonl"
  cp results/baseline-*.json "$LOG/" 2>/dev/null
  step bf16_optimized 200 "$PY" benchmarks/bench_bf16_optimized.py --blocks 1024 2048 4096 8192 16384 --warps 4 8 16 --plot-dir "$LOG/plots" \
    --output "$LOG/bench_bf16_optimized.jsonl"
  step bf16_optimized_graph 90 "$PY" benchmarks/bench_bf16_optimized.py --graph --sizes 65536 1048576 \
    --output "$LOG/bench_bf16_optimized_graph.jsonl"
  step memory_access 120 "$PY" benchmarks/bench_memory_access.py --plot-dir "$LOG/plots" --output "$LOG/bench_memory_access.jsonl"
  step unified_memory 120 "$PY" benchmarks/bench_unified_memory.py --output "$LOG/bench_unified_memory.jsonl"
  step tests 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_bench_harness.py tests/test_bf16_convert.py \
    tests/test_ab_stats.py
fi
if [ "$MODE" != core ]; then
  step clean 60 "$PY" benchmarks/bench_clean.py --output "$LOG/bench_clean.jsonl"
  step dtype_perf 120 "$PY" benchmarks/bench_dtype_perf.py --output "$LOG/bench_dtype_perf.jsonl"
  step buffer_ops 90 "$PY" benchmarks/bench_buffer_ops.py --output "$LOG/bench_buffer_ops.jsonl"
  step fp4_metal 90 "$PY" benchmarks/bench_fp4_metal.py --output "$LOG/bench_fp4_metal.jsonl"
  step ab_attention_moe 150 "$PY" benchmarks/ab_test_kernels.py --pair attention moe \
    --output "$LOG/ab_attention_moe.jsonl"
  step ab_gemm 150 "$PY" benchmarks/ab_test_kernels.py --pair gemm --output "$LOG/ab_gemm.jsonl"
  step ab_gemm_graph 150 "$PY" benchmarks/ab_test_kernels.py --pair gemm --graph --output "$LOG/ab_gemm_graph.jsonl"
  step quantization_rtn 120 "$PY" benchmarks/bench_quantization.py --methods rtn \
    --output "$LOG/bench_quantization_rtn.jsonl"
fi
echo "failed steps: ${failed[*]:-none}" | tee -a "$LOG/summary.txt"
[ ${#failed[@]} -eq 0 ]
