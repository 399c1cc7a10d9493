#!/usr/bin/env bash
# GPU checks and timings of the attention area (kernels/attention.py, kvcache.py):
#   1. pytest -m gpu on tests/test_attention.py and tests/test_kvcache.py (larger shapes, CUDA-graph capture);
#   2. the four attention benchmarks at full size.
# Run from anywhere on the GPU machine: bash gpu/attention_check.sh [quick]
#   quick: the benchmarks with --quick (fewer, smaller cases; ~1 minute) and no split sweep.
# Writes two files: $OUT/attention.log (every command's output, tables included) and $OUT/attention.jsonl
# (all benchmark records). Exits non-zero if any step failed. Expected device time: ~3 minutes on one H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/attention_out}"
mkdir -p "$OUT"
LOG="$OUT/attention.log"
JSONL="$OUT/attention.jsonl"
: > "$LOG"
: > "$JSONL"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
status=0
QUICK=()
[ "${1:-}" = "quick" ] && QUICK=(--quick)

step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "===== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "===== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } >> "$LOG" 2>&1

step pytest-gpu 180 python -m pytest -q -p no:cacheprovider -m gpu tests/test_attention.py tests/test_kvcache.py
# NAME:TIMEOUT_S (guards only: the whole script is expected to take ~3 minutes; all limits sum to 9m40s)
for entry in bench_attention:120 bench_attention_variants:100 analyze_attention_bandwidth:60 bench_kv_cache_layout:60; do
  bench=${entry%%:*}
  step "$bench" "${entry##*:}" python "benchmarks/$bench.py" ${QUICK[@]+"${QUICK[@]}"} --output "$WORK/$bench.jsonl"
  [ -f "$WORK/$bench.jsonl" ] && cat "$WORK/$bench.jsonl" >> "$JSONL"
done
# split-K sweep on two decode cases (0 = the kernel's own choice): data for tuning choose_num_splits
if [ ${#QUICK[@]} -eq 0 ]; then
  step split_sweep 60 python benchmarks/analyze_attention_bandwidth.py --contexts 4096 16384 --batches 1 8 \
    --splits 0 4 8 16 32 64 128 --output "$WORK/split_sweep.jsonl"
  [ -f "$WORK/split_sweep.jsonl" ] && cat "$WORK/split_sweep.jsonl" >> "$JSONL"
fi
rm -rf "$WORK"
echo "attention_check: status=$status, records=$(wc -l < "$JSONL")" | tee -a "$LOG"
exit "$status"
