// lanes_below(n): the AVX2 mask of a ymm's lanes [0, n) (n clamped to 0..8), as
// _mm256_maskload_ps / _mm256_maskstore_ps take it (cast to __m256 for an AND). Shared by the AVX2
// kernels (stem_conv_avx2.cpp, head_convt.cpp, dot_gemm.cpp); GCC on x86-64 only.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace genkern::cpu {

__attribute__((target("avx2"))) inline __m256i lanes_below(int64_t n) {
  const int k = static_cast<int>(std::clamp<int64_t>(n, 0, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

}  // namespace genkern::cpu
