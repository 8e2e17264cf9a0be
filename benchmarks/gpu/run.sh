#!/usr/bin/env bash
# On the GPU machine, from the repo root, with .gpu_carry/ carried (made by prepare.py here):
#   bash benchmarks/gpu/run.sh
# Stages (each logged, each bounded by a timeout; a failed stage does not stop the others):
#   env -> install (carried TVM runtime into $IVIT_TVM_SITE) -> check (bit-exact logits)
#   -> bench (DeiT-S latency: ivit-tvm int8 vs torch FP32/FP16) -> report.
# Writes into $OUT (default ./out/gpu): run.log env.json check.json bench.json
# results.json results.md. Exit status 1 when any stage failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

export OUT="${OUT:-$PWD/out/gpu}" PY="${PYTHON:-python3}"
export IVIT_TVM_SITE="${IVIT_TVM_SITE:-/tmp/ivit_tvm_site}"
export PYTHONUNBUFFERED=1 TVM_FFI_DISABLE_TORCH_C_DLPACK=1 TVM_USE_RUNTIME_LIB=1
mkdir -p "$OUT"
LOG="$OUT/run.log"
: >"$LOG"
failed=()

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2 started=$SECONDS rc=0
  shift 2
  echo "=== [$(date +%T)] $name: $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "=== [$(date +%T)] $name ok ($((SECONDS - started)) s)" | tee -a "$LOG"
  else
    echo "=== [$(date +%T)] $name FAILED (rc $rc, $((SECONDS - started)) s)" | tee -a "$LOG"
    failed+=("$name")
  fi
}

install_runtime() {
  test -f .gpu_carry/tvm_runtime.tar.gz || { echo "no .gpu_carry/: carry it (prepare.py)"; return 1; }
  rm -rf "$IVIT_TVM_SITE" && mkdir -p "$IVIT_TVM_SITE"
  tar -xzf .gpu_carry/tvm_runtime.tar.gz -C "$IVIT_TVM_SITE"
  du -sh "$IVIT_TVM_SITE"
  "$PY" -c "from benchmarks.gpu.tvm_runtime import import_tvm; tvm = import_tvm(); \
d = tvm.cuda(0); print('tvm', tvm.__version__, 'runtime-only:', tvm.base._RUNTIME_ONLY, \
'cuda device:', d.exist and (d.device_name, d.compute_version))"
}

stage env 30 "$PY" -m benchmarks.gpu.env --out "$OUT/env.json"
nvidia-smi >>"$LOG" 2>&1 || true
export -f install_runtime
stage install 60 bash -c install_runtime
stage check 120 "$PY" -m benchmarks.gpu.check --out "$OUT/check.json"
stage bench 300 "$PY" -m benchmarks.gpu.bench --out "$OUT/bench.json"
stage report 30 "$PY" -m benchmarks.gpu.report "$OUT"

cat "$OUT/results.md" 2>/dev/null || true
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed stages: ${failed[*]} (details in $LOG)"
  exit 1
fi
echo "all stages ok"
