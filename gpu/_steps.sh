# Sourced by the gpu/*_check.sh scripts that keep one log per step under $LOG (set LOG first).
#   step NAME TIMEOUT_S COMMAND...  run with a time limit, stdout+stderr to $LOG/NAME.log, the exit code to
#                                   $LOG/summary.txt, print the log's last $STEP_TAIL lines; on failure
#                                   append NAME to the array `failed` and keep going
#   log_env                         GPU name, memory and clocks, torch/triton versions -> $LOG/env.txt
failed=()
STEP_TAIL="${STEP_TAIL:-40}"

step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name: $*" | tee -a "$LOG/summary.txt"
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "    exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG/summary.txt"
  tail -n "$STEP_TAIL" "$LOG/$name.log"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

log_env() {
  { nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.max.mem --format=csv; \
    "${PY:-python}" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    >"$LOG/env.txt" 2>&1
  cat "$LOG/env.txt" | tee -a "$LOG/summary.txt"
}
