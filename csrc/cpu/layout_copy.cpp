#include "layout_copy.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <c10/util/strides.h>

#include <algorithm>

#include "small_gemm.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define GK_LAYOUT_AVX2 1
#else
#define GK_LAYOUT_AVX2 0
#endif

namespace genkern::cpu {
namespace {

constexpr int64_t kTile = 8;          // the register tile: 8 x 8 floats
constexpr int64_t kBlock = 64;  // a task's block: 64 x 64 floats

// dst[c][r] = src[r][c] for r < rows, c < cols (row strides ld_src, ld_dst).
void transpose_scalar(const float* src, int64_t ld_src, float* dst, int64_t ld_dst,
                      int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

#if GK_LAYOUT_AVX2
__attribute__((target("avx2"))) void transpose_8x8(const float* src, int64_t ld_src, float* dst,
                                                   int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: four-element columns of each 128-bit lane
    r[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// A 16 x 16 tile in zmm registers: pairs of rows interleaved by 32 and 64 bits give each 128-bit
// lane a 4 x 4 block transposed; the lanes are then gathered by two rounds of shuffle_f32x4.
// 64 shuffles per 256 floats (the 8 x 8 AVX2 tile: 24 per 64).
__attribute__((target("avx512f"))) inline __m512 unpack_lo64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
__attribute__((target("avx512f"))) inline __m512 unpack_hi64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// kStream: a non-temporal store (p 64-byte aligned), which writes the line without reading it
// first and leaves the cache alone
template <bool kStream>
__attribute__((target("avx512f"))) inline void store(float* p, __m512 v) {
  if constexpr (kStream) _mm512_stream_ps(p, v); else _mm512_storeu_ps(p, v);
}

template <bool kStream>
__attribute__((target("avx512f"))) void transpose_16x16(const float* src, int64_t ld_src,
                                                         float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4 b + k], lane L: column 4 L + k of rows 4 b .. 4 b + 3
  for (int b = 0; b < 16; b += 4) {
    r[b] = unpack_lo64(t[b], t[b + 2]);
    r[b + 1] = unpack_hi64(t[b], t[b + 2]);
    r[b + 2] = unpack_lo64(t[b + 1], t[b + 3]);
    r[b + 3] = unpack_hi64(t[b + 1], t[b + 3]);
  }
  // output row 4 L + k: lane L of r[k], r[4 + k], r[8 + k], r[12 + k]
  for (int k = 0; k < 4; ++k) {
    const __m512 a_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 a_hi = _mm512_shuffle_f32x4(r[k], r[4 + k], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 b_lo = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 b_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], _MM_SHUFFLE(3, 2, 3, 2));
    store<kStream>(dst + k * ld_dst, _mm512_shuffle_f32x4(a_lo, b_lo, _MM_SHUFFLE(2, 0, 2, 0)));
    store<kStream>(dst + (4 + k) * ld_dst,
                   _mm512_shuffle_f32x4(a_lo, b_lo, _MM_SHUFFLE(3, 1, 3, 1)));
    store<kStream>(dst + (8 + k) * ld_dst,
                   _mm512_shuffle_f32x4(a_hi, b_hi, _MM_SHUFFLE(2, 0, 2, 0)));
    store<kStream>(dst + (12 + k) * ld_dst,
                   _mm512_shuffle_f32x4(a_hi, b_hi, _MM_SHUFFLE(3, 1, 3, 1)));
  }
}
#endif

// The tiles of `tile` x `tile` floats of a rows x cols block, in the order the caller wants:
// along the side with the longer row stride (a whole 64-float run of each of its rows before the
// next tile's rows): rows 4 KB apart would otherwise evict each other from the cache's set between
// the two halves of a line.
template <typename Tile>
void for_each_tile(int64_t rows, int64_t cols, int64_t tile_size, bool along_rows, Tile&& tile) {
  if (along_rows) {
    for (int64_t r = 0; r + tile_size <= rows; r += tile_size)
      for (int64_t c = 0; c + tile_size <= cols; c += tile_size) tile(r, c);
  } else {
    for (int64_t c = 0; c + tile_size <= cols; c += tile_size)
      for (int64_t r = 0; r + tile_size <= rows; r += tile_size) tile(r, c);
  }
}

// The same as transpose_scalar for a block of at most kBlock x kBlock: 16 x 16 AVX-512 tiles
// where the AVX-512 kernels run, 8 x 8 AVX2 ones for what is left (or all) where AVX2 runs,
// scalar for the rest. stream: the AVX-512 tiles' whole aligned lines with non-temporal stores
// (the caller fences before anyone reads dst).
void transpose_block(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows,
                     int64_t cols, bool stream) {
#if GK_LAYOUT_AVX2
  if (avx2_kernels_enabled()) {
    const bool along_rows = ld_src >= ld_dst;
    int64_t rows_done = 0, cols_done = 0;  // the top-left block the 16 x 16 tiles covered
    if (avx512_kernels_enabled()) {
      rows_done = rows / 16 * 16, cols_done = cols / 16 * 16;
      for_each_tile(rows, cols, 16, along_rows, [&](int64_t r, int64_t c) {
        float* d = dst + c * ld_dst + r;
        if (stream && reinterpret_cast<uintptr_t>(d) % 64 == 0 && ld_dst % 16 == 0)
          transpose_16x16<true>(src + r * ld_src + c, ld_src, d, ld_dst);
        else
          transpose_16x16<false>(src + r * ld_src + c, ld_src, d, ld_dst);
      });
    }
    // the 8 x 8 tiles of the right strip (rows_done rows) and the bottom strip (all columns)
    const auto eights = [&](int64_t r0, int64_t c0, int64_t nr, int64_t nc) {
      const float* s = src + r0 * ld_src + c0;
      float* d = dst + c0 * ld_dst + r0;
      const int64_t rows8 = nr / kTile * kTile, cols8 = nc / kTile * kTile;
      for_each_tile(nr, nc, kTile, along_rows, [&](int64_t r, int64_t c) {
        transpose_8x8(s + r * ld_src + c, ld_src, d + c * ld_dst + r, ld_dst);
      });
      transpose_scalar(s + cols8, ld_src, d + cols8 * ld_dst, ld_dst, nr, nc - cols8);
      transpose_scalar(s + rows8 * ld_src, ld_src, d + rows8, ld_dst, nr - rows8, cols8);
    };
    eights(0, cols_done, rows_done, cols - cols_done);
    eights(rows_done, 0, rows - rows_done, cols);
    return;
  }
#endif
  transpose_scalar(src, ld_src, dst, ld_dst, rows, cols);
}

// Orders a thread's non-temporal stores before what follows (a no-op without them).
void fence_streamed(bool stream) {
#if GK_LAYOUT_AVX2
  if (stream) _mm_sfence();
#endif
}

// Each of `batch` [rows, cols] matrices of src (contiguous) transposed into dst's [cols, rows],
// a task per block; large copies are streamed (stream_output).
void transpose_batched(const float* src, float* dst, int64_t batch, int64_t rows, int64_t cols) {
  const bool stream = stream_output(batch * rows * cols * int64_t{sizeof(float)});
  const int64_t row_blocks = (rows + kBlock - 1) / kBlock;
  const int64_t col_blocks = (cols + kBlock - 1) / kBlock;
  const int64_t per_matrix = row_blocks * col_blocks;
  at::parallel_for(0, batch * per_matrix, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per_matrix;
      const int64_t r0 = t % per_matrix / col_blocks * kBlock, c0 = t % col_blocks * kBlock;
      const float* s = src + b * rows * cols + r0 * cols + c0;
      float* d = dst + b * rows * cols + c0 * rows + r0;
      transpose_block(s, cols, d, rows, std::min(kBlock, rows - r0), std::min(kBlock, cols - c0),
                      stream);
    }
    fence_streamed(stream);
  });
}

}  // namespace

void transpose_floats(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows,
                      int64_t cols, bool stream) {
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      transpose_block(src + r0 * ld_src + c0, ld_src, dst + c0 * ld_dst + r0, ld_dst,
                      std::min(kBlock, rows - r0), std::min(kBlock, cols - c0), stream);
  fence_streamed(stream);
}

namespace {

bool plain_float(const at::Tensor& t) {
  return t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.numel() > 0;
}

// A channels_last tensor of t's sizes and dtype in `buffer`'s storage (grown when too small), or
// in fresh memory when a tensor made from it earlier is still alive.
at::Tensor scratch_like(const at::Tensor& t, at::Tensor& buffer) {
  if (!buffer.defined() || buffer.numel() < t.numel() || buffer.storage().use_count() != 1 ||
      buffer.scalar_type() != t.scalar_type())
    buffer = at::empty({t.numel()}, t.options());
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  return buffer.as_strided(t.sizes(), {C * H * W, 1, W * C, C});
}

void transpose_to_channels_last(const at::Tensor& t, at::Tensor& out) {
  // per sample: [C, H * W] -> [H * W, C]
  transpose_batched(t.data_ptr<float>(), out.data_ptr<float>(), t.size(0), t.size(1),
                    t.size(2) * t.size(3));
}

bool needs_transpose(const at::Tensor& t) {
  return plain_float(t) && t.is_contiguous() && !t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

at::Tensor to_channels_last(const at::Tensor& t) {
  if (!needs_transpose(t)) return t.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast));
  transpose_to_channels_last(t, out);
  return out;
}

at::Tensor to_channels_last_scratch(const at::Tensor& t, int slot) {
  TORCH_CHECK(slot == 0 || slot == 1, "genkern: scratch slot must be 0 or 1");
  if (!needs_transpose(t)) return t.contiguous(at::MemoryFormat::ChannelsLast);
  thread_local at::Tensor buffers[2];
  at::Tensor out = scratch_like(t, buffers[slot]);
  transpose_to_channels_last(t, out);
  return out;
}

at::Tensor to_contiguous(const at::Tensor& t) {
  if (t.is_contiguous()) {  // with the strides at::empty gives (a size-1 dim's may differ)
    const auto strides = c10::contiguous_strides(t.sizes());
    return t.strides() == at::IntArrayRef(strides) ? t
                                                   : t.as_strided(t.sizes(), strides,
                                                                  t.storage_offset());
  }
  if (!plain_float(t) || !t.is_contiguous(at::MemoryFormat::ChannelsLast)) return t.contiguous();
  at::Tensor out = at::empty(t.sizes(), t.options());
  // per sample: [H * W, C] -> [C, H * W]
  transpose_batched(t.data_ptr<float>(), out.data_ptr<float>(), t.size(0), t.size(2) * t.size(3),
                    t.size(1));
  return out;
}

at::Tensor contiguous_as(const at::Tensor& t, at::MemoryFormat fmt) {
  if (t.is_contiguous(fmt)) return t;
  if (fmt == at::MemoryFormat::ChannelsLast) return to_channels_last(t);
  if (fmt == at::MemoryFormat::Contiguous) return to_contiguous(t);
  return t.contiguous(fmt);
}

}  // namespace genkern::cpu
