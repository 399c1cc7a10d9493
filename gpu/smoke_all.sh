#!/usr/bin/env bash
# Foundation ceilings + every area's GPU-marked tests, one call. Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 300 bash gpu/foundation_check.sh core > "$OUT/foundation_core.log" 2>&1
echo "foundation core rc=$?"
grep -E "exit|failed" "$OUT/foundation/summary.txt"
timeout 220 python -m pytest -q -p no:cacheprovider -m gpu tests/test_moe_kernels.py tests/test_moe_layer.py \
  tests/test_trellis_kernels.py tests/test_attention.py tests/test_kvcache.py > "$OUT/pytest_gpu.log" 2>&1
echo "pytest gpu rc=$?"
tail -30 "$OUT/pytest_gpu.log"
grep -hE "copy|matmul|TFLOP|GB/s" "$OUT/foundation/baseline.log" | tail -20
# at most 8 files come back: pack everything into one archive
(cd "$OUT" && tar czf /tmp/smoke_all.tgz . && find . -mindepth 1 -delete && mv /tmp/smoke_all.tgz .)
