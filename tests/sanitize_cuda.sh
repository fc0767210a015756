#!/usr/bin/env bash
# Runs the op tests on a GPU under NVIDIA compute-sanitizer: memcheck (out-of-bounds and
# misaligned accesses, leaks) and racecheck (shared-memory races) of genkern's CUDA kernels.
#
#   bash tests/sanitize_cuda.sh                 # both tools, every op test module
#   TOOLS=memcheck bash tests/sanitize_cuda.sh tests/test_pool.py -k max
#
# PYTORCH_NO_CUDA_MEMORY_CACHING=1 makes every tensor its own cudaMalloc, so an out-of-bounds
# access is caught at the allocation it overruns (the caching allocator would hide it inside a
# larger block). Tests run on the GPU (GENKERN_TEST_DEVICE=cuda); the Triton backend is skipped
# by default (TRITON=1 to include it: Triton's own kernels are then sanitized too, slowly).
# Exit status: non-zero if pytest or the sanitizer reports an error. Logs: $OUT_DIR/*.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not found (CUDA toolkit)"; exit 2; }
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA device visible to torch"; exit 2; }
TOOLS="${TOOLS:-memcheck racecheck}"
OUT_DIR="${OUT_DIR:-sanitize-logs}"
mkdir -p "$OUT_DIR"
if [ "$#" -eq 0 ]; then
  set -- tests/test_conv2d.py tests/test_conv_transpose2d.py tests/test_linear.py \
    tests/test_batch_norm.py tests/test_pool.py tests/test_losses.py tests/test_special_values.py
fi
SELECT=()
[ "${TRITON:-0}" = "1" ] || SELECT=(-k "not triton")
export GENKERN_TEST_DEVICE=cuda PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in $TOOLS; do
  extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check full)
  echo "=== compute-sanitizer --tool $tool: $*"
  compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 99 --log-file "$OUT_DIR/$tool.log" \
    python -m pytest "$@" -q -p no:cacheprovider -x "${SELECT[@]}"
  rc=$?
  echo "--- $tool: exit $rc; summary:"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" "$OUT_DIR/$tool.log" | tail -3
  [ $rc -ne 0 ] && status=$rc
done
exit $status
