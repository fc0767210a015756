#!/usr/bin/env bash
# Builds and imports the whole CUDA extension on a machine without a GPU (developer check, not run
# by CI; see /work/shared/CUDA_BUILD_CHECK.md). Nothing built can run here: it proves the CUDA
# sources, the torch glue and bindings.cpp compile, link and load against a CUDA build of torch.
#
# The build runs in a copy of the working tree (tracked + untracked, non-ignored files) so the
# checkout's CPU genkern/_C*.so is left alone. Environment:
#   VENV      the CUDA torch environment (default /work/.venv-cuda; created when missing:
#             torch==2.11.0 pybind11 ninja numpy setuptools, about 5 GB)
#   WORKDIR   where the copy is built (default /tmp/cudacheck, wiped first)
#   TORCH_CUDA_ARCH_LIST (default 9.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-/work/.venv-cuda}"
WORKDIR="${WORKDIR:-/tmp/cudacheck}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"

case "$(cd "$(dirname "$VENV")" 2>/dev/null && pwd)/" in
  "$ROOT"/*) echo "check_build: keep VENV outside the repository ($VENV)" >&2; exit 1 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "check_build: creating $VENV (torch==2.11.0, CUDA 13.0; a few minutes)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch==2.11.0 pybind11 ninja numpy setuptools
fi
"$VENV/bin/python" -c 'import torch; assert torch.version.cuda, "VENV torch is a CPU build"
print("check_build: torch", torch.__version__, "CUDA", torch.version.cuda)'

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
  | (cd "$ROOT" && tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$WORKDIR"
rm -f "$WORKDIR"/genkern/_C*.so

cd "$WORKDIR"
start=$SECONDS
GENKERN_BUILD_CUDA=1 "$VENV/bin/python" setup.py build_ext --inplace > build.log 2>&1 || {
  tail -n 60 build.log
  echo "check_build: FAILED after $((SECONDS - start)) s (full log: $WORKDIR/build.log)" >&2
  exit 1
}
echo "check_build: built in $((SECONDS - start)) s (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
"$VENV/bin/python" -c 'import genkern._C as C
assert C.with_cuda, "built without CUDA"
print("check_build: import ok:", C.__file__)
print("check_build:", C.conv2d_act_forward_cuda, C.conv2d_act_backward_cuda)
print("check_build:", C.conv_transpose2d_act_forward_cuda, C.linear_act_forward_cuda)'
