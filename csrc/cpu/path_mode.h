// The never (0) / auto (1) / always (2) switch of a CPU path (GENKERN_CPU_COL2IM, _CONV_GEMM,
// _DOT_GEMM, _STEM_CONV, _ONEDNN_LAYOUT), set from genkern/ops/_modes.py.
#pragma once

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>

namespace genkern::cpu {

// mode_of_path <- mode, or "<path> mode must be 0 (never), 1 (auto) or 2 (always)".
template <typename T>
void set_path_mode(std::atomic<T>& mode_of_path, int64_t mode, const char* path) {
  TORCH_CHECK(mode >= 0 && mode <= 2, path, " mode must be 0 (never), 1 (auto) or 2 (always)");
  mode_of_path.store(static_cast<T>(mode));
}

}  // namespace genkern::cpu
