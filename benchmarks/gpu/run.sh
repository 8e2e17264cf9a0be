#!/usr/bin/env bash
# On the GPU machine, from the repo root, with .gpu_carry/ carried (made by prepare.py here):
#   bash benchmarks/gpu/run.sh
# Stages (each logged, each bounded by a timeout, 5 min 20 s in all; a failed stage does not
# stop the others):
#   env -> install (carried TVM runtime into $IVIT_TVM_SITE) -> check (bit-exact logits of
#   reduced DeiT/Swin and DeiT-S at batch 1/3/32, Swin-T at 1/3; each DeiT-S GEMM vs
#   torch._int_mm) -> bench (DeiT-S and Swin-T at batch 1/8/32/64: ivit-tvm int8 vs torch
#   FP16/BF16; the GEMMs vs cuBLASLt int8) -> report.
# Writes into $OUT (default ./out/gpu): run.log env.json check.json bench.json
# results.json results.md. Exit status 1 when any stage failed.
# DRY_RUN=1 (a machine without a GPU, this repo's venv): every stage up to its first CUDA call,
# with the CUDA driver stub as libcuda.so.1 and the venv's TVM instead of the carried runtime.
set -euo pipefail
cd "$(dirname "$0")/../.."

export OUT="${OUT:-$PWD/out/gpu}" PY="${PYTHON:-python3}"
export IVIT_TVM_SITE="${IVIT_TVM_SITE:-/tmp/ivit_tvm_site}"
DRY=()
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  DRY=(--dry-run)
  PY="${PYTHON:-.venv/bin/python}"
  IVIT_TVM_SITE=/nonexistent  # the venv's TVM; the carried one is for Python 3.12
  stub=$(mktemp -d)
  "$PY" -c "import sys; from pathlib import Path; \
from ivit_tvm.schedules.cuda.export import build_driver_stub; build_driver_stub(Path(sys.argv[1]))" "$stub"
  export LD_LIBRARY_PATH="$stub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
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
  if [[ "${DRY_RUN:-0}" == 1 ]]; then  # the 3.12 runtime cannot be imported here: list it
    tar -tzf .gpu_carry/tvm_runtime.tar.gz | grep -E "lib(tvm_runtime|tvm_runtime_cuda|cudart)\.so" \
      && return 0
    echo "runtime libraries missing from the tarball"; return 1
  fi
  rm -rf "$IVIT_TVM_SITE" && mkdir -p "$IVIT_TVM_SITE"
  tar -xzf .gpu_carry/tvm_runtime.tar.gz -C "$IVIT_TVM_SITE"
  du -sh "$IVIT_TVM_SITE"
  "$PY" -c "from benchmarks.gpu.tvm_runtime import import_tvm; tvm = import_tvm(); \
d = tvm.cuda(0); print('tvm', tvm.__version__, 'runtime-only:', tvm.base._RUNTIME_ONLY, \
'cuda device:', d.exist and (d.device_name, d.compute_version))"
}

stage env 20 "$PY" -m benchmarks.gpu.env --out "$OUT/env.json"
nvidia-smi >>"$LOG" 2>&1 || true
export -f install_runtime
export DRY_RUN
stage install 40 bash -c install_runtime
stage check 90 "$PY" -m benchmarks.gpu.check --out "$OUT/check.json" "${DRY[@]}"
stage bench 150 "$PY" -m benchmarks.gpu.bench --out "$OUT/bench.json" "${DRY[@]}"
stage report 20 "$PY" -m benchmarks.gpu.report "$OUT"

cat "$OUT/results.md" 2>/dev/null || true
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed stages: ${failed[*]} (details in $LOG)"
  exit 1
fi
echo "all stages ok"
