#include "small_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#define GK_GEMM_HAS_AVX2 1
#else
#define GK_GEMM_HAS_AVX2 0
#endif

namespace genkern::cpu {
namespace {

constexpr int kTileCols = 16;  // columns of C per tile and per packed panel of B
constexpr int kChunkRows = 12;  // row chunks are whole tiles of every variant (6 or 12 rows)

#define GK_GEMM_NS gemm_base
#define GK_GEMM_ROWS 6
#include "small_gemm_kernels.h"
#undef GK_GEMM_ROWS
#undef GK_GEMM_NS
#if GK_GEMM_HAS_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define GK_GEMM_NS gemm_avx2
#define GK_GEMM_AVX2 1
#define GK_GEMM_ROWS 6
#include "small_gemm_kernels.h"
#undef GK_GEMM_ROWS
#undef GK_GEMM_AVX2
#undef GK_GEMM_NS
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#define GK_GEMM_NS gemm_avx512
#define GK_GEMM_AVX512 1
#define GK_GEMM_ROWS 12
#include "small_gemm_kernels.h"
#undef GK_GEMM_ROWS
#undef GK_GEMM_AVX512
#undef GK_GEMM_NS
#pragma GCC pop_options

// GENKERN_CPU_NO_AVX2=1 forces the baseline code, GENKERN_CPU_NO_AVX512=1 the AVX2 code (tests of
// each on machines that have more).
bool env_off(const char* name) {
  const char* off = std::getenv(name);
  return off && *off && std::strcmp(off, "0") != 0;
}
bool use_avx2() {
  static const bool yes = [] {
    if (env_off("GENKERN_CPU_NO_AVX2")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}
bool use_avx512() {
  static const bool yes = use_avx2() && !env_off("GENKERN_CPU_NO_AVX512") && cpu_has_avx512() &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}
#else
namespace gemm_avx2 = gemm_base;
namespace gemm_avx512 = gemm_base;
bool use_avx2() { return false; }
bool use_avx512() { return false; }
#endif

// Below this many multiply-adds one thread does it all: a parallel region costs more than it saves.
constexpr int64_t kSerialMacs = 256 * 1024;

// The packed B, reused from call to call by the calling thread.
float* packed_buffer(size_t floats) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

template <Activation A, bool HasBias>
void run(const GemmArgs& g) {
  const int64_t panels = (g.N + kTileCols - 1) / kTileCols;
  const int64_t floats = std::max<int64_t>(g.K, 1) * panels * kTileCols;
  float* packed = packed_buffer(static_cast<size_t>(floats));
  const bool serial = g.M * g.N * g.K < kSerialMacs;
  const bool avx512 = use_avx512(), avx2 = use_avx2();
  at::parallel_for(0, panels, serial ? panels : 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (avx512)
        gemm_avx512::pack_task(g, p, packed);
      else if (avx2)
        gemm_avx2::pack_task(g, p, packed);
      else
        gemm_base::pack_task(g, p, packed);
    }
  });
  // Few panels: rows are split too (whole tiles), so that two threads find work.
  const int64_t row_chunks = panels >= 4 ? 1 : std::min<int64_t>(4, (g.M + 23) / 24);
  const int64_t chunk_rows =
      ((g.M + row_chunks - 1) / row_chunks + kChunkRows - 1) / kChunkRows * kChunkRows;
  const int64_t tasks = panels * row_chunks;
  at::parallel_for(0, tasks, serial ? tasks : 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t panel = t / row_chunks, r0 = (t % row_chunks) * chunk_rows;
      const int64_t r1 = std::min(g.M, r0 + chunk_rows);
      if (r0 >= r1) continue;
      if (avx512)
        gemm_avx512::gemm_task<A, HasBias>(g, panel, r0, r1, packed);
      else if (avx2)
        gemm_avx2::gemm_task<A, HasBias>(g, panel, r0, r1, packed);
      else
        gemm_base::gemm_task<A, HasBias>(g, panel, r0, r1, packed);
    }
  });
}

}  // namespace

void small_gemm_f32(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  dispatch_epilogue(g, [&](auto act, auto bias) {
    run<decltype(act)::value, decltype(bias)::value>(g);
  });
}

bool small_gemm_wins(int64_t M, int64_t N, int64_t K) {
  // Measured (2-core AMD EPYC, AVX2): 2-3x faster than MKL at ~0.1M multiply-adds (MKL's setup
  // dominates), ~1.1-1.3x at ~1M, a tie at ~6M, 0.85-0.95x at 40M (MKL's kernel is faster).
  return M * N * K <= (int64_t(1) << 21);
}

bool avx2_kernels_enabled() { return use_avx2(); }
bool avx512_kernels_enabled() { return use_avx512(); }

bool cpu_has_avx512() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f") != 0;
  return avx512;
#else
  return false;
#endif
}

bool cpu_is_intel() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool intel = (__builtin_cpu_init(), __builtin_cpu_is("intel") != 0);
  return intel;
#else
  return false;
#endif
}

bool blas_runs_avx512() { return cpu_has_avx512() && cpu_is_intel(); }

bool blas_as_wide_as_onednn() { return !cpu_has_avx512() || blas_runs_avx512(); }

}  // namespace genkern::cpu
