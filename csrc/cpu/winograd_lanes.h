// What the Winograd paths (winograd_s2.h, winograd_3x3.h) share: vectors of one AVX2 register
// (GCC's vector extension; the AVX-512 clones run them as they are), their loads and stores of a
// channel run with a tail, the test that every value a transform wrote was finite, the weight
// range the transforms' rounding allows (within_range), and the 2-D input and output transforms
// of one tile, over the 1-D rows of an algorithm F(m, r):
//   struct F { static constexpr int kAlpha (input samples per dim), kTile (outputs per dim);
//              template <V, T> static void input_row(const V* d, int ds, V* o, int os);  // BT d
//              template <V, T> static void output_row(const V* m, int ms, V* o, int os); }; // AT m
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_clones.h"

namespace genkern::cpu::winograd {

typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = f32x8;
};
template <>
struct VecOf<double> {
  using type = f64x4;
};

// v <- n <= lanes values from p (the rest zero), and their store back. A full vector is one
// fixed-size copy (a vector move); only a tail of channels pays for a variable-length one.
template <typename V, typename T>
inline __attribute__((always_inline)) void load(V& v, const T* p, int n) {
  if (n == static_cast<int>(sizeof(V) / sizeof(T))) {
    std::memcpy(&v, p, sizeof(V));
  } else {
    v = V{};
    std::memcpy(&v, p, n * sizeof(T));
  }
}
template <typename V, typename T>
inline __attribute__((always_inline)) void store(T* p, const V& v, int n) {
  if (n == static_cast<int>(sizeof(V) / sizeof(T)))
    std::memcpy(p, &v, sizeof(V));
  else
    std::memcpy(p, &v, n * sizeof(T));
}

// v <- channels [c, c + n) of a pixel, or zeros where the pixel is null (outside the tensor)
template <typename V, typename T>
inline __attribute__((always_inline)) void load_pixel(V& v, const T* pixel, int64_t c, int n) {
  if (pixel)
    load(v, pixel + c, n);
  else
    v = V{};
}

// Whether every lane of acc, a sum of (v - v) over values v, is zero: all those v were finite
// (inf - inf and NaN - NaN are NaN).
template <typename V>
inline __attribute__((always_inline)) bool all_zero(const V& acc) {
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(acc[0])); ++l)
    if (acc[l] != 0) return false;
  return true;
}

// Images per chunk of the batch when each image's transformed tiles take `per_image` floats: a
// chunk's buffer holds at most half the input's floats, or 512K floats (winograd_s2.cpp has the
// measurements behind the bound: a training step's memory peak within issue 8's 0.8x of stock's).
inline int64_t chunk_images(const at::Tensor& x, int64_t per_image) {
  constexpr int64_t kMinChunkFloats = int64_t(1) << 19;
  const int64_t budget = std::max(kMinChunkFloats, x.numel() / 2);
  return std::clamp<int64_t>(budget / std::max<int64_t>(per_image, 1), 1, x.size(0));
}

// Whether a conv argument (stride, padding, dilation) is `value` along both spatial dims.
inline bool is_pair(const std::vector<int64_t>& v, int64_t value) {
  return v.size() == 2 && v[0] == value && v[1] == value;
}

// Runs tile(t, n, ty, tx) for the tiles t < tiles of a chunk of the batch starting at image n0
// (image n, tile row ty and column tx; per_image tiles an image, tw across) on the intra-op
// threads, at least `grain` tiles a task; whether every call returned true (wrote only finite
// values).
template <typename Fn>
bool for_each_tile(int64_t per_image, int64_t tw, int64_t n0, int64_t tiles, int64_t grain,
                   const Fn& tile) {
  std::atomic<bool> finite{true};
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      if (!tile(t, n0 + t / per_image, t % per_image / tw, t % tw)) finite = false;
  });
  return finite;
}

// Internal linkage: each algorithm's instances (with their target clones) stay in their file.
namespace {

// A transform sums a filter's taps (and a tile's pixels) before the products, so an output's
// rounding error scales with the largest of them, not with its own terms: a tap far above the
// others that meets only the padding (an image one pixel high) swamps the outputs the small taps
// make. F(2x2, 3x3): taps of 1e2, 1e4, 1e30 among taps of ~0.1 gave errors of 1e-5, 1.5e-3, 0.32
// at outputs of ~0.7, where stock's were 8e-7; F(4, 2) 36.6 at a tap of 1e8 (found by a fuzz).
// The paths decline a weight whose largest magnitude passes kMaxPeakToMean times the mean
// magnitude of its other values (~2-6 in random inits, ~11 in a Laplace-distributed layer of 70K
// weights).
constexpr double kMaxPeakToMean = 64;

// Whether max |p[i]| <= kMaxPeakToMean * mean |p[j]| over the n - 1 others (true where all are
// zero, or where one is not finite: the transforms' own checks decline those).
template <typename T>
GK_CPU_CLONES bool within_range(const T* p, int64_t n) {
  constexpr int L = 8;  // independent lanes: the loop vectorizes (one read of a training weight)
  double peaks[L] = {}, sums[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) {
      const double v = std::abs(static_cast<double>(p[i + l]));
      peaks[l] = std::max(peaks[l], v);
      sums[l] += v;
    }
  for (int l = 0; i < n; ++i, ++l) {
    const double v = std::abs(static_cast<double>(p[i]));
    peaks[l] = std::max(peaks[l], v);
    sums[l] += v;
  }
  double peak = 0, sum = 0;
  for (int l = 0; l < L; ++l) {
    peak = std::max(peak, peaks[l]);
    sum += sums[l];
  }
  if (!(peak > 0) || !std::isfinite(sum) || n < 2) return true;
  return peak * double(n - 1) <= kMaxPeakToMean * (sum - peak);
}

// dst[i * ld + c] = (BT d BT^T)[i] for c < C, d[q] the C channels at src[q] (q over the
// kAlpha x kAlpha window; null: a pixel outside the input, zero). False where a value written is
// not finite.
template <typename F, typename T>
GK_CPU_CLONES bool input_tile(const T* const* src, int64_t C, T* __restrict__ dst, int64_t ld) {
  using V = typename VecOf<T>::type;
  constexpr int L = sizeof(V) / sizeof(T), A = F::kAlpha;
  V acc = {};
  for (int64_t c = 0; c < C; c += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, C - c));
    V d[A * A], t[A * A];
    for (int i = 0; i < A * A; ++i) load_pixel(d[i], src[i], c, n);
    for (int r = 0; r < A; ++r) F::template input_row<V, T>(d + r, A, t + r, A);
    for (int a = 0; a < A; ++a) F::template input_row<V, T>(t + a * A, 1, d + a * A, 1);
    for (int i = 0; i < A * A; ++i) {
      acc += d[i] - d[i];
      store(dst + i * ld + c, d[i], n);
    }
  }
  return all_zero(acc);
}

// dst[i * kTile + j][c] = bias[c] + (AT m AT^T)[i][j] for c < C, m[p] = src[p * ld + c] (dst[..]
// null: outside the output, skipped; bias null: none). False where a value written is not finite.
template <typename F, typename T>
GK_CPU_CLONES bool output_tile(const T* __restrict__ src, int64_t ld, int64_t C,
                               const T* __restrict__ bias, T* const* dst) {
  using V = typename VecOf<T>::type;
  constexpr int L = sizeof(V) / sizeof(T), A = F::kAlpha, M = F::kTile;
  V acc = {};
  for (int64_t c = 0; c < C; c += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, C - c));
    V m[A * A], t[M * A], y[M * M];
    for (int i = 0; i < A * A; ++i) load(m[i], src + i * ld + c, n);
    for (int b = 0; b < A; ++b) F::template output_row<V, T>(m + b, A, t + b, A);
    for (int i = 0; i < M; ++i) F::template output_row<V, T>(t + i * A, 1, y + i * M, 1);
    V b = {};
    if (bias) load(b, bias + c, n);
    for (int i = 0; i < M * M; ++i)
      if (dst[i]) {
        const V out = y[i] + b;
        acc += out - out;
        store(dst[i] + c, out, n);
      }
  }
  return all_zero(acc);
}

}  // namespace
}  // namespace genkern::cpu::winograd
