#!/usr/bin/env bash
# GPU checks and timings of the trellis area (formats/trellis.py, quantize/{viterbi,ldlq,gptq}.py,
# kernels/{trellis_gemm,hadamard}.py), in order of importance so a cut-short run keeps the key figures:
#   1. bench_gemm_trellis at M=1 on 8192x8192 and 28672x8192, trellis2/3/4 x 3inst/1mad/hyb, against
#      fp16 cuBLAS and int4 qmatmul; PTX op counts of the decode kernels; then M=4/16/128 (3inst);
#   2. Viterbi encode time of a 4096x4096 matrix at 3 bits (bar: < 60 s);
#   3. distortion at 2/3/4 bits per code on i.i.d. Gaussian data (256x256) + proxy loss (512x1024);
#   4. pytest -m gpu on the trellis/Hadamard tests;
#   5. a decode-GEMV config sweep at M=1 on 8192x8192 (trellis3, 3inst): static FMA blocks/splits,
#      generic, tensor-core.
# Run from anywhere on the GPU machine: bash gpu/trellis_check.sh  (or `bash gpu/trellis_check.sh speed`:
# M=1 timings with the per-launch breakdown, the static-GEMV sweep, M=2/4/16/128, kernel GPU tests;
# ~4 min; `SWEEP=0 bash gpu/trellis_check.sh speed` skips the sweeps, ~2.5 min; BATCHED=0 skips M > 1;
# CODES=1mad,1mad2 limits the M=1 timings and sweeps to those codes; `bash gpu/trellis_check.sh tc`: the
# tensor-core GEMV's GPU tests, timings and sweep, ~5 min; `bash gpu/trellis_check.sh rot`: code 1mad2r (one LCG
# per pair) against 1mad2 in the same process, ~3 min)
# Writes $OUT/trellis.log (all output, tables included), $OUT/trellis.jsonl (all records) and
# $OUT/trellis_asm/ (PTX + op counts). Exits non-zero if any step failed. Expected device time ~6 min
# (kernel compiles included; each step has a timeout, the worst case is ~12 min).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/trellis_out}"
mkdir -p "$OUT"
LOG="$OUT/trellis.log"
JSONL="$OUT/trellis.jsonl"
: > "$LOG"
: > "$JSONL"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
status=0

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

nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv >> "$LOG" 2>&1
if [ "${1:-all}" = "tc" ]; then
  # the tensor-core GEMV (gemv="tc", 1mad2; auto takes it at M=1 where TC_CONFIGS says so): GPU tests of
  # its PTX first, then M=1 timings on both shapes (the default dispatch with its path, trellis_kernel_tc /
  # trellis_full_tc / trellis_kernel_fma forced, fp16 cuBLAS of the same run), the sweep (tc configs incl.
  # the resident-wave split and prefetch, prefetch 2 and tc_prefetch_x, 1mad2's static ones), M=2/4 with both
  # kernels; ~4 min
  step pytest_gpu_tc 150 python -m pytest -q -m gpu tests/test_trellis_kernels.py -k "tc_gemv or asm_and_portable"
  # which pipe binds the decode: cycles per warp instruction of IDP, IMAD, both 1:1, PRMT, LOP3 (~10 s)
  step pipe_rates 60 python benchmarks/bench_gemm_trellis.py --device cuda --pipe-rates --shapes 256x256 --m 1 \
    --formats trellis2 --codes 1mad2 --no-int4 --repeats 10 -o "$OUT/pipe.jsonl"
  step gemm_tc 150 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192,28672x8192 \
    --m 1 --formats trellis2,trellis3,trellis4 --codes 1mad2 --no-int4 --repeats 30 -o "$OUT/gemm.jsonl"
  step sweep_tc 260 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192,28672x8192 --m 1 \
    --formats trellis2,trellis3,trellis4 --codes 1mad2 --no-int4 --sweep --repeats 15 -o "$OUT/sweep.jsonl"
  step gemm_tc_rows 60 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192 \
    --m 2,4 --formats trellis2,trellis4 --codes 1mad2 --no-int4 --repeats 20 -o "$OUT/gemm_rows.jsonl"
  cat "$OUT"/gemm*.jsonl "$OUT"/sweep*.jsonl > "$WORK/all.jsonl" 2>/dev/null
  python benchmarks/_trellis_summary.py "$WORK/all.jsonl" > "$OUT/summary.txt"
  cat "$OUT/summary.txt"
  exit $status
fi
if [ "${1:-all}" = "rot" ]; then
  # code 1mad2r (component 1 from the same LCG word rotated right by 6) against 1mad2: (a) the GPU tests of the
  # PTX decodes (tc GEMV, static GEMV with and without inline PTX) for both pair codes; (b) M=1 on both shapes,
  # trellis2/3/4, both codes in one process (kernel as dispatched, tc and FMA GEMV forced, the default full
  # path, fp16 cuBLAS of the same run); (c) the tc configs around TC_CONFIGS for 1mad2r (tn 1/2, 16/32
  # programs per SM, resident split, prefetch). Writes trellis.log, gemm.jsonl, sweep.jsonl, trellis.jsonl
  # and summary.txt under $OUT; ~2.5-3 min expected, 5 min at most (the step timeouts: 80 + 120 + 100 s)
  step pytest_gpu_rot 80 python -m pytest -q -m gpu tests/test_trellis_kernels.py \
    -k "(gpu_tc_gemv or asm_and_portable) and 1mad2"
  step gemm_rot 120 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192,28672x8192 \
    --m 1 --formats trellis2,trellis3,trellis4 --codes 1mad2,1mad2r --no-int4 --repeats 30 -o "$OUT/gemm.jsonl"
  step sweep_rot 100 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192,28672x8192 --m 1 \
    --formats trellis2,trellis3,trellis4 --codes 1mad2r --no-int4 --sweep --sweep-gemv tc --repeats 15 \
    -o "$OUT/sweep.jsonl"
  cat "$OUT"/gemm.jsonl "$OUT"/sweep.jsonl > "$JSONL" 2>/dev/null
  python benchmarks/_trellis_summary.py "$JSONL" > "$OUT/summary.txt"
  cat "$OUT/summary.txt"
  exit $status
fi
if [ "${1:-all}" = "speed" ]; then
  # the kernel-speed subset (issue 5 follow-up), most important first: M=1 timings with the
  # per-launch breakdown, the static GEMV sweep on both shapes (one call per shape), M=2/4/16/128
  # with their block sweeps, then the GPU tests of the kernels; records go straight to $OUT so a
  # cut-short run keeps every finished step; ~5 min
  # CODES (default all four) picks the codes of the M=1 timings and sweeps, e.g. CODES=1mad,1mad2
  CODES="${CODES:-3inst,1mad,hyb,1mad2}"
  NC=$(echo "$CODES" | tr ',' '\n' | wc -l)
  step gemm_trellis $((25 + 22 * NC)) python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192,28672x8192 \
    --m 1 --formats trellis2,trellis3,trellis4 --codes "$CODES" --repeats 30 -o "$OUT/gemm.jsonl"
  if [ "${SWEEP:-1}" = "1" ]; then
  step sweep_8192 $((15 + 18 * NC)) python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192 --m 1 \
    --formats trellis2,trellis3,trellis4 --codes "$CODES" --no-int4 --sweep --repeats 15 -o "$OUT/sweep_8192.jsonl"
  step sweep_28672 $((15 + 14 * NC)) python benchmarks/bench_gemm_trellis.py --device cuda --shapes 28672x8192 --m 1 \
    --formats trellis2,trellis3,trellis4 --codes "$CODES" --no-int4 --sweep --repeats 15 -o "$OUT/sweep_28672.jsonl"
  fi
  if [ "${BATCHED:-1}" = "1" ]; then
  step gemm_trellis_batched 45 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192 \
    --m 2,4,16,128 --formats trellis2,trellis3,trellis4 --codes 3inst --no-int4 --repeats 20 \
    $( [ "${SWEEP:-1}" = "1" ] && echo --sweep ) \
    -o "$OUT/gemm_batched.jsonl"
  step gemm_trellis_bf16 30 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192 \
    --m 1,16 --formats trellis3 --codes 3inst --dtype bfloat16 --no-int4 --repeats 20 -o "$OUT/gemm_bf16.jsonl"
  fi
  cat "$OUT"/gemm*.jsonl "$OUT"/sweep*.jsonl > "$WORK/all.jsonl" 2>/dev/null
  python benchmarks/_trellis_summary.py "$WORK/all.jsonl" > "$OUT/summary.txt"
  step pytest_gpu_kernels 60 python -m pytest -q -x -m gpu tests/test_trellis_kernels.py tests/test_hadamard.py \
    -k "qgemm or asm_and_portable or gpu_kernel_matches or inside_the_gemv"
  cat "$OUT/summary.txt"
  exit $status
fi
step gemm_trellis 240 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192,28672x8192 \
  --m 1 --formats trellis2,trellis3,trellis4 --codes 3inst,1mad,hyb,1mad2 --repeats 30 \
  --asm-dir "$OUT/trellis_asm" -o "$WORK/gemm.jsonl"
step gemm_trellis_batched 90 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192 \
  --m 4,16,128 --formats trellis2,trellis3,trellis4 --codes 3inst --repeats 30 -o "$WORK/gemm_batched.jsonl"
step encode_4096 90 python benchmarks/bench_trellis_performance.py --device cuda --sections encode \
  --encode-shape 4096x4096 --encode-bits 3 -o "$WORK/encode.jsonl"
step quality 100 python benchmarks/bench_trellis_performance.py --device cuda --sections distortion,proxy,decode \
  --distortion-shape 256x256 --proxy-shape 512x1024 --decode-shape 8192x8192 -o "$WORK/quality.jsonl"
step pytest_gpu 150 python -m pytest -q -m gpu tests/test_trellis_kernels.py tests/test_hadamard.py \
  tests/test_trellis.py tests/test_gptq.py
step gemv_sweep 120 python benchmarks/bench_gemm_trellis.py --device cuda --shapes 8192x8192 --m 1 \
  --formats trellis3 --codes 3inst --no-int4 --sweep --repeats 20 -o "$WORK/sweep.jsonl"

cat "$WORK"/*.jsonl > "$JSONL" 2>/dev/null
python benchmarks/_trellis_summary.py "$JSONL" | tee "$OUT/summary.txt"
echo "records: $(wc -l < "$JSONL")" | tee -a "$LOG"
exit $status
