#!/usr/bin/env bash
# Compiles every torch-free CUDA source (csrc/cuda/*.cu) with plain nvcc for sm_80 and sm_90: no
# GPU, no torch needed. One line per file; exits non-zero on the first error. CI runs it.
#
# The __CUDA_NO_*_CONVERSIONS__/OPERATORS__ macros are the ones torch's extension build defines
# for nvcc; compiling with them here catches reliance on implicit half/bfloat16 conversions.
# NVCC (default: nvcc on PATH) and NVCC_FLAGS (extra flags) can be set from the environment.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_nvcc: nvcc not found (set NVCC or put the CUDA toolkit on PATH)" >&2
  exit 1
fi

OUT="$(mktemp -d "${TMPDIR:-/tmp}/genkern-nvcc.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

shopt -s nullglob
files=(csrc/cuda/*.cu)
if [ "${#files[@]}" -eq 0 ]; then
  echo "check_nvcc: no csrc/cuda/*.cu files" >&2
  exit 1
fi

echo "check_nvcc: $("$NVCC" --version | tail -n 1)"
for f in "${files[@]}"; do
  start=$SECONDS
  # shellcheck disable=SC2086
  if ! "$NVCC" -std=c++17 -O3 -Icsrc/include \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
      ${NVCC_FLAGS:-} -c "$f" -o "$OUT/$(basename "$f").o"; then
    echo "FAIL $f (sm_80, sm_90)"
    exit 1
  fi
  echo "ok   $f (sm_80, sm_90, $((SECONDS - start)) s)"
done
