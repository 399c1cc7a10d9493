#!/usr/bin/env bash
# MoE GPU check (issue 4): a launch-configuration sweep of the expert kernels (moe/explore.log, 1/16/256
# tokens, per-kernel profile), GPU tests of the MoE kernels and CUDA-graph path, then the done-when figures:
#   1. GLM-4.7-Flash layer, one token, int4 experts: slow_path vs graph-replayed fused path (and 256 tokens
#      against the weight-read floor)                                   -> moe/kernel_dispatch_int4.log
#   2. benchmark_cpp_dispatch --counts 100 1000 5000                    -> moe/cpp_dispatch.log
#   3. fast_mixed vs max_bits_padded at one token, glm4 mixed recipe,
#      and the run_mixed_precision_bench.py --full --model glm4 table   -> moe/mixed_glm4_full.log
# Extras (mode `all`): per-format kernel throughput, multicase, dynamic dispatch, launch-config tuning sweep.
# Logs and JSON lines go to $OUT/moe/. Usage (repository root, on the GPU machine):
#   bash gpu/moe_check.sh [core|all]        core ~5 min (explore ~1.5 of it), all ~9 min
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
LOG="$OUT/moe"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
MODE="${1:-core}"
case "$MODE" in core|all) ;; *) echo "usage: $0 [core|all]" >&2; exit 2 ;; esac
STEP_TAIL=45
source gpu/_steps.sh

log_env

# launch-configuration exploration first (graph-replayed expert kernels per config, per-kernel profile)
step explore 80 "$PY" gpu/moe_explore.py --tokens 256 1 16 --recipes int4
step tests 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_moe_kernels.py tests/test_moe_layer.py
step kernel_dispatch_int4 180 "$PY" benchmarks/bench_moe_kernel_dispatch.py --tokens 1 256 --repeats 30 --warmup 3 \
  --output "$LOG/kernel_dispatch_int4.jsonl"
step cpp_dispatch 150 "$PY" scripts/benchmark_cpp_dispatch.py --counts 100 1000 5000 --repeats 10 --warmup 2 \
  --output "$LOG/cpp_dispatch.jsonl"
step mixed_glm4_full 300 "$PY" scripts/run_mixed_precision_bench.py --full --model glm4 --repeats 20 --warmup 3 \
  --output "$LOG/mixed_glm4_full.jsonl"
if [ "$MODE" = all ]; then
  step kernel_formats 200 "$PY" benchmarks/bench_moe_kernel.py --tokens 1 256 --repeats 20 \
    --formats int2 int3 int4 int8 fp4 mxfp4 nvfp4 fp8 --output "$LOG/kernel_formats.jsonl"
  step kernel_dispatch_glm4_tuned 200 env TRITON_MARLIN_MOE_TUNE=1 "$PY" benchmarks/bench_moe_kernel_dispatch.py \
    --recipe glm4 --tokens 1 16 256 --repeats 20 --output "$LOG/kernel_dispatch_glm4_tuned.jsonl"
  step multicase 240 "$PY" benchmarks/bench_moe_multicase.py --repeats 10 --warmup 3 \
    --output "$LOG/multicase.jsonl"
  step dynamic_dispatch 90 "$PY" benchmarks/bench_dynamic_dispatch.py --repeats 20 \
    --output "$LOG/dynamic_dispatch.jsonl"
  step mixed_synthetic 120 "$PY" scripts/run_mixed_precision_bench.py --full --model synthetic --repeats 20 \
    --output "$LOG/mixed_synthetic.jsonl"
fi
echo "failed steps: ${failed[*]:-none}" | tee -a "$LOG/summary.txt"
