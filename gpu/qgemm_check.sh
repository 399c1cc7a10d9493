#!/usr/bin/env bash
# Quantized GEMM on the GPU: correctness (tests/test_qgemm.py GPU set, in parallel processes so the
# Triton compiles overlap), the kernel-variant sweep, the selection table, bench_gemm. Logs and JSON
# lines go to $OUT/qgemm/ (packed into $OUT/qgemm.tgz when there are more than 7); a compact table is
# printed last.
# Usage (repository root, on the GPU machine):
#   bash gpu/qgemm_check.sh [check|tune|final|explore|stages|closing|mma|mma2|mma3|overhead|swapab|swapab2|small]
#   check: GPU tests + int4 variant sweep on 8192x8192 and 28672x8192 (M 1,16,64,256,1024) + bench_gemm
#          of int4/fp4/mxfp4/int2/int3/int8 at M=1 on the same shapes (~6 min).
#   tune:  GPU tests of the PTX-unpack formats, bench_kernel_selection for int4 on the issue's shapes
#          (writes src/triton_marlin/kernels/tuned/<gpu>.json, copied to $OUT/qgemm/), then bench_gemm
#          of six formats at M 1..1024 on the two large shapes with that table (~6 min).
#   final: GPU tests + parallel compile warm-up, per-format selection for M 1/16/64 on the two large
#          shapes (merged into the table), then bench_gemm of six formats (~5 min).
#   explore: a parallel compile of every int4 candidate alongside the dequantize-step probe
#          (gpu/qgemm_dequant.py), then the int4 selection sweep on the two large shapes at M 1,16,64,256,
#          merged into the table (~1.5 min).
#   stages: int4 selection sweep at M 1,16,64 and the other formats' at M 1 on the two large shapes,
#          merged into the table (~2 min).
#   closing: GPU tests (alongside the compile warm-up), the stages sweeps again, then bench_gemm: int4 at
#          M 1,16,64,256,1024 and fp4/mxfp4/int2/int3/int8 at M 1 on the two large shapes with the new
#          table, the issue's closing table from one run (~5 min).
#   swapab: the swap-AB tensor-core variant (weights the left wgmma operand, from registers): GPU tests of
#          qgemm (alongside a parallel compile of the swap-AB candidates and the table's configurations),
#          the int4 selection sweep of the swap-AB candidates + the current table's choice on the two large
#          shapes at M 16,32,64,128,256 (merged into a copy of the packaged table in $OUT/qgemm, the package
#          untouched), then bench_gemm int4 at M 1,16,64,256,1024 with that table (~5 min).
#   swapab2: swap-AB with one tl.dot per K tile (dot_k=128: no wgmma wait inside the K loop with per-weight
#          scales, one per tile with fold): the GPU tests of that mode only (alongside a parallel compile of its
#          candidates and the table's configurations), the int4 selection sweep of those candidates + the packaged
#          table's choice on the two large shapes at M 16,64,128,256 (merged into a copy of the packaged table,
#          $OUT/qgemm/table_swapab.json), then bench_gemm int4 at M 1,16,64,256,1024 with that table (~4 min).
#   small: the one-shot gemv for small weights (oneshot=1: K loop unrolled, every load issued before the first
#          decode): its GPU tests (alongside a parallel compile of the small candidates), bench_kernel_selection
#          of --candidates small on the GLM-4.7-Flash expert shapes at M 1,4,16 (merged into a copy of the
#          packaged table, $OUT/qgemm/table_small.json), bench_gemm on those shapes at M 1,16,64 with that table,
#          and int4 + mxfp4 at M=1 on the two large shapes (the mxfp4 gap, packaged table) (~3 min).
#   mma: the register-fragment GEMV (family mma): GPU tests of qgemm and of the mma kernel (alongside a parallel
#          compile of the mma candidates), the per-format selection of --candidates mma (the mma configurations
#          plus what the table runs now) at M=1 on the two large shapes for the formats other than int4 (int4's
#          entries came from its own sweep), merged into the packaged table (copied to $OUT/qgemm), then bench_gemm:
#          int4 at M 1,16,64,256,1024 and the other formats at M=1 on the two large shapes, the GLM expert shapes
#          at M 1,16 (~7 min).
#   mma2: GPU tests of qgemm and the mma GEMV, the zero-point A/B on the table's mma entries (gpu/qgemv_mma_ab.py --knob fold:
#          fold 0 / 1 timed in the same process, the faster written into the packaged table, copied to $OUT/qgemm),
#          then bench_gemm with that table: int4 at M 1,16,64,256,1024 and every other format at M=1 on the two
#          large shapes, int4 on the GLM expert shapes at M 1,16 (~6 min).
#   mma3: the register-cap A/B on the table's mma entries (gpu/qgemv_mma_ab.py --knob maxnreg: no cap, 96, 128
#          registers timed in the same process, the fastest written into the packaged table, copied to $OUT/qgemm),
#          then bench_gemm with that table as in mma2 (~4 min).
#   overhead: host-side cost of a small eager call (gpu/qgemm_overhead.py) and int4 bench_gemm at
#          M 1 and 16 (~1.5 min).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
LOG="$OUT/qgemm"
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
MODE="${1:-check}"
STEP_TAIL=25
source gpu/_steps.sh
log_env
BIG=8192x8192,28672x8192
closing_gemm() {  # the closing table of mma2/mma3: int4 at M 1..1024 and every other format at M=1 on $BIG, the GLM
  # expert shapes at M 1 and 16
  local glm=glm47_expert_gate_up,glm47_expert_down others=fp4,mxfp4,nvfp4,int2,int3,int8,fp8
  step gemm 170 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1,16,64,256,1024 --formats int4,$others \
      --format-m "fp4=1;mxfp4=1;nvfp4=1;int2=1;int3=1;int8=1;fp8=1" --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  step gemm_glm 60 $PY benchmarks/bench_gemm.py --shapes $glm --m 1,16 --formats int4 --warmup 5 --repeats 30 \
      --output "$LOG/gemm_glm.jsonl"
}
case "$MODE" in
check)
  step tests 240 $PY -m pytest -q -x -n 8 -m gpu tests/test_qgemm.py
  step variants 300 $PY benchmarks/bench_kernel_variants.py --shapes $BIG --m 1,16,64,256,1024 \
      --formats int4 --warmup 5 --repeats 20 --output "$LOG/variants.jsonl"
  step gemm 200 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1 --formats int4,fp4,mxfp4,int2,int3,int8 \
      --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  ;;
tune)
  step tests 120 $PY -m pytest -q -x -n 12 -m gpu tests/test_qgemm.py -k "int4 or int3 or int2 or fp4 or graph or compile or cublas"
  step selection 240 $PY benchmarks/bench_kernel_selection.py \
      --shapes glm47_expert_gate_up,glm47_expert_down,4096x4096,$BIG \
      --m 1,4,16,64,256,1024 --formats int4 --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
  step gemm 150 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1,16,64,256,1024 \
      --formats int4,fp4,mxfp4,int2,int3,int8 --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  ;;
final)
  FMTS=int4,fp4,mxfp4,int2,int3,int8
  # compile in parallel (Triton's disk cache serves the timed runs), GPU tests alongside
  $PY gpu/qgemm_warm.py --formats $FMTS --m 1,16,64 > "$LOG/warm.log" 2>&1 &
  step tests 200 $PY -m pytest -q -n 8 -m gpu tests/test_qgemm.py
  wait; cat "$LOG/warm.log"
  step selection 200 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1,16,64 \
      --formats $FMTS --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
  step gemm 200 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1,16,64,256,1024 \
      --formats $FMTS --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  ;;
explore)
  timeout 110 $PY gpu/qgemm_warm.py --formats int4 --m 1,16,64,256 --procs 14 > "$LOG/warm.log" 2>&1 &
  step dequant 45 $PY gpu/qgemm_dequant.py --shapes $BIG
  cat "$LOG/dequant.log"
  wait; cat "$LOG/warm.log"
  step selection 150 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1,16,64,256 \
      --formats int4 --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
  ;;
stages)
  OTHERS=fp4,mxfp4,int2,int3,int8
  timeout 140 $PY gpu/qgemm_warm.py --formats int4 --m 1,16,64 --procs 6 > "$LOG/warm.log" 2>&1 &
  timeout 140 $PY gpu/qgemm_warm.py --formats $OTHERS --m 1 --procs 10 > "$LOG/warm_others.log" 2>&1 &
  wait; cat "$LOG/warm.log" "$LOG/warm_others.log"
  step selection 100 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1,16,64 \
      --formats int4 --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  step selection_others 110 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1 \
      --formats $OTHERS --merge --warmup 3 --repeats 15 --output "$LOG/variants_others.jsonl"
  cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
  $PY gpu/qgemm_summary.py variants="$LOG/variants_others.jsonl"
  ;;
closing)
  OTHERS=fp4,mxfp4,int2,int3,int8
  # compile in parallel with the GPU tests; timed steps run alone afterwards
  timeout 110 $PY gpu/qgemm_warm.py --formats int4 --m 1,16,64,256,1024 --procs 5 > "$LOG/warm.log" 2>&1 &
  timeout 110 $PY gpu/qgemm_warm.py --formats $OTHERS --m 1 --procs 5 > "$LOG/warm_others.log" 2>&1 &
  step tests 120 $PY -m pytest -q -n 6 -m gpu tests/test_qgemm.py
  wait; cat "$LOG/warm.log" "$LOG/warm_others.log"
  step selection 60 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1,16,64 \
      --formats int4 --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  step selection_others 90 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1 \
      --formats $OTHERS --merge --warmup 3 --repeats 15 --output "$LOG/variants_others.jsonl"
  cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
  step gemm 80 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1,16,64,256,1024 --formats int4,$OTHERS \
      --format-m "fp4=1;mxfp4=1;int2=1;int3=1;int8=1" --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  $PY gpu/qgemm_summary.py variants="$LOG/variants_others.jsonl"
  ;;
mma)
  OTHERS="${OTHERS:-fp4,mxfp4,int2,int3}"
  GLM=glm47_expert_gate_up,glm47_expert_down
  timeout 120 $PY gpu/qgemm_warm.py --formats $OTHERS --m 1 --candidates mma --procs 6 > "$LOG/warm.log" 2>&1 &
  step tests 150 $PY -m pytest -q -n 8 -m gpu tests/test_qgemm.py tests/test_qgemv_mma.py
  wait; tail -3 "$LOG/warm.log"
  step selection_others 150 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 1 --formats $OTHERS \
      --candidates mma --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  cp src/triton_marlin/kernels/tuned/*.json "$LOG/" 2>/dev/null
  step gemm 120 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1,16,64,256,1024 --formats int4,$OTHERS \
      --format-m "fp4=1;mxfp4=1;nvfp4=1;int2=1;int3=1;int8=1" --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  step gemm_glm 60 $PY benchmarks/bench_gemm.py --shapes $GLM --m 1,16 --formats int4 --warmup 5 --repeats 30 \
      --output "$LOG/gemm_glm.jsonl"
  ;;
mma2)
  step tests 170 $PY -m pytest -q -n 8 -m gpu tests/test_qgemv_mma.py tests/test_qgemm.py
  step zsum 120 $PY gpu/qgemv_mma_ab.py --knob fold --out "$LOG"
  closing_gemm
  ;;
mma3)
  step regcap 200 $PY gpu/qgemv_mma_ab.py --knob maxnreg --out "$LOG"
  closing_gemm
  ;;
overhead)
  step overhead 120 $PY gpu/qgemm_overhead.py
  step gemm 150 $PY benchmarks/bench_gemm.py --shapes glm47_expert_gate_up,glm47_expert_down,$BIG \
      --m 1,16 --formats int4 --warmup 5 --repeats 30 --output "$LOG/gemm.jsonl"
  step fused 120 $PY benchmarks/bench_fused_vs_pytorch.py --shapes 4096x4096 --m 1,16,256 --formats int4 \
      --warmup 3 --repeats 10 --output "$LOG/fused.jsonl"
  ;;
swapab)
  TABLE="$LOG/table_swapab.json"
  cp src/triton_marlin/kernels/tuned/nvidia-h200.json "$TABLE"
  timeout 130 $PY gpu/qgemm_warm.py --formats int4 --m 1,16,32,64,128,256,1024 --candidates swapab --procs 8 \
      > "$LOG/warm.log" 2>&1 &
  step tests 130 $PY -m pytest -q -n 6 -m gpu tests/test_qgemm.py
  wait; cat "$LOG/warm.log"
  step selection 100 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 16,32,64,128,256 --formats int4 \
      --candidates swapab --table "$TABLE" --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  step gemm 70 env TRITON_MARLIN_QGEMM_TABLE="$TABLE" $PY benchmarks/bench_gemm.py --shapes $BIG \
      --m 1,16,64,256,1024 --formats int4 --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  ;;
swapab2)
  TABLE="$LOG/table_swapab.json"
  cp src/triton_marlin/kernels/tuned/nvidia-h200.json "$TABLE"
  timeout 120 $PY gpu/qgemm_warm.py --formats int4 --m 1,16,64,128,256,1024 --candidates swapab2 --procs 8 \
      > "$LOG/warm.log" 2>&1 &
  step tests 150 $PY -m pytest -q -n 6 -m gpu tests/test_qgemm.py -k swapk
  wait; cat "$LOG/warm.log"
  step selection 90 $PY benchmarks/bench_kernel_selection.py --shapes $BIG --m 16,64,128,256 --formats int4 \
      --candidates swapab2 --table "$TABLE" --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  step gemm 70 env TRITON_MARLIN_QGEMM_TABLE="$TABLE" $PY benchmarks/bench_gemm.py --shapes $BIG \
      --m 1,16,64,256,1024 --formats int4 --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  ;;
small)
  GLM=glm47_expert_gate_up,glm47_expert_down
  TABLE="$LOG/table_small.json"
  cp src/triton_marlin/kernels/tuned/nvidia-h200.json "$TABLE"
  timeout 100 $PY gpu/qgemm_warm.py --formats int4 --m 1,4,16 --candidates small --procs 8 > "$LOG/warm.log" 2>&1 &
  step tests 100 $PY -m pytest -q -n 8 -m gpu tests/test_qgemm.py -k oneshot
  wait; cat "$LOG/warm.log"
  step selection 60 $PY benchmarks/bench_kernel_selection.py --shapes $GLM --m 1,4,16 --formats int4 \
      --candidates small --table "$TABLE" --merge --warmup 3 --repeats 15 --output "$LOG/variants.jsonl"
  step gemm 40 env TRITON_MARLIN_QGEMM_TABLE="$TABLE" $PY benchmarks/bench_gemm.py --shapes $GLM \
      --m 1,16,64 --formats int4 --warmup 5 --repeats 20 --output "$LOG/gemm.jsonl"
  step gemm_big 40 $PY benchmarks/bench_gemm.py --shapes $BIG --m 1 --formats int4,mxfp4 \
      --warmup 5 --repeats 20 --output "$LOG/gemm_big.jsonl"
  ;;
*) echo "usage: $0 [check|tune|final|explore|stages|closing|mma|mma2|mma3|overhead|swapab|swapab2|small]" >&2; exit 2 ;;
esac
$PY gpu/qgemm_summary.py variants="$LOG/variants.jsonl" gemm="$LOG/gemm.jsonl"
echo "failed steps: ${failed[*]:-none}" | tee -a "$LOG/summary.txt"
# at most 8 files come back from the GPU machine: pack the folder when it holds more
if [ "$(ls "$LOG" | wc -l)" -gt 7 ]; then
  tar -czf "$OUT/qgemm.tgz" -C "$OUT" qgemm && rm -rf "$LOG"
fi
