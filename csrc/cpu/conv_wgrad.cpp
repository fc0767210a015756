#include "conv_wgrad.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>

#include "conv_geometry.h"
#include "path_mode.h"
#include "small_gemm.h"

// GCC on x86-64: where the AVX2 kernels are built (chosen at run time)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GK_WGRAD_X86 1
#include <immintrin.h>
#else
#define GK_WGRAD_X86 0
#endif

namespace genkern::cpu {
namespace {

std::atomic<int64_t> g_mode{1};  // genkern/ops/_conv_wgrad.py sets it from GENKERN_CPU_CONV_WGRAD

// The AVX2 tile (the AVX-512 one: 12 x 32): output channels (broadcast from g) x input channels
constexpr int64_t kTileRows = 6;
constexpr int64_t kTileCols = 16;
constexpr int64_t kBlockPixels = 128;  // output pixels per block: x and g rows stay in L2

// The conv's geometry, channels innermost: element (n, h, w, c) of x at n xs0 + h xs2 + w xs3 + c.
struct Wgrad {
  int64_t n, c, h, w, k, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t xs0, xs2, xs3, gs0, gs2, gs3;
  int64_t taps() const { return kh * kw; }
};

#if GK_WGRAD_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define GK_WT_NS wgrad_avx2
#define GK_WT_VEC __m256
#define GK_WT_LANES 8
#define GK_WT_ZERO _mm256_setzero_ps
#define GK_WT_LOAD _mm256_loadu_ps
#define GK_WT_STORE _mm256_storeu_ps
#define GK_WT_SET1 _mm256_set1_ps
#define GK_WT_FMA _mm256_fmadd_ps
#define GK_WT_ADD _mm256_add_ps
#include "conv_wgrad_tile.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#undef GK_WT_NS
#undef GK_WT_VEC
#undef GK_WT_LANES
#undef GK_WT_ZERO
#undef GK_WT_LOAD
#undef GK_WT_STORE
#undef GK_WT_SET1
#undef GK_WT_FMA
#undef GK_WT_ADD
#define GK_WT_NS wgrad_avx512
#define GK_WT_VEC __m512
#define GK_WT_LANES 16
#define GK_WT_ZERO _mm512_setzero_ps
#define GK_WT_LOAD _mm512_loadu_ps
#define GK_WT_STORE _mm512_storeu_ps
#define GK_WT_SET1 _mm512_set1_ps
#define GK_WT_FMA _mm512_fmadd_ps
#define GK_WT_ADD _mm512_add_ps
#include "conv_wgrad_tile.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")

using TileFn = void (*)(const float*, const float*, const int64_t*, const int64_t*, int64_t,
                        float*, int64_t, bool);

// A kernel's tile: rows (output channels) x cols (input channels), tiles[r - 1] for r rows.
struct Kernel {
  int64_t rows, cols;
  const TileFn* tiles;
};
namespace a2 = wgrad_avx2;
namespace a5 = wgrad_avx512;
constexpr TileFn kTiles256[] = {a2::tile<1>, a2::tile<2>, a2::tile<3>,
                                a2::tile<4>, a2::tile<5>, a2::tile<6>};
constexpr TileFn kTiles512[] = {a5::tile<1>, a5::tile<2>, a5::tile<3>,  a5::tile<4>,
                                a5::tile<5>, a5::tile<6>, a5::tile<7>,  a5::tile<8>,
                                a5::tile<9>, a5::tile<10>, a5::tile<11>, a5::tile<12>};
constexpr Kernel kAvx2{kTileRows, kTileCols, kTiles256};
constexpr Kernel kAvx512{12, 32, kTiles512};

int64_t tile_count(const Wgrad& s, const Kernel& kn) {
  return (s.k + kn.rows - 1) / kn.rows * s.taps() * (s.c / kn.cols);
}

// For the output rows [r0, r1) (row = n * oh + y), the offsets in g and x of each tap's valid
// (output pixel, input pixel) pairs, in pixel order: goff/xoff[tap * cap + i], i < count[tap].
void list_pairs(const Wgrad& s, int64_t r0, int64_t r1, int64_t cap, int64_t* goff,
                int64_t* xoff, int64_t* count) {
  for (int64_t tap = 0; tap < s.taps(); ++tap) {
    const int64_t ty = tap / s.kw, tx = tap % s.kw;
    int64_t m = 0;
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t n = row / s.oh, y = row % s.oh;
      const int64_t iy = y * s.sh - s.ph + ty * s.dh;
      if (iy < 0 || iy >= s.h) continue;
      for (int64_t x = 0; x < s.ow; ++x) {
        const int64_t ix = x * s.sw - s.pw + tx * s.dw;
        if (ix < 0 || ix >= s.w) continue;
        goff[tap * cap + m] = n * s.gs0 + y * s.gs2 + x * s.gs3;
        xoff[tap * cap + m] = n * s.xs0 + iy * s.xs2 + ix * s.xs3;
        ++m;
      }
    }
    count[tap] = m;
  }
}

// dW [k, taps, c] for tiles [t0, t1): tile t = (t / (taps * cb)) row block of kn.rows channels,
// then tap, then column block of kn.cols. Every block of output rows in order, its pair lists
// made once.
void weight_grad_tiles(const Wgrad& s, const Kernel& kn, const float* g, const float* x,
                       float* grad_w, int64_t t0, int64_t t1) {
  const int64_t rows = s.n * s.oh, block = std::max<int64_t>(1, kBlockPixels / s.ow);
  const int64_t cap = block * s.ow, taps = s.taps(), cblocks = s.c / kn.cols;
  std::vector<int64_t> goff(taps * cap), xoff(taps * cap), count(taps);
  const int64_t ldd = taps * s.c;
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    list_pairs(s, r0, std::min(rows, r0 + block), cap, goff.data(), xoff.data(), count.data());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k0 = t / (taps * cblocks) * kn.rows, tap = t / cblocks % taps;
      const int64_t c0 = t % cblocks * kn.cols;
      kn.tiles[std::min(kn.rows, s.k - k0) - 1](g + k0, x + c0, goff.data() + tap * cap,
                                                 xoff.data() + tap * cap, count[tap],
                                                 grad_w + k0 * ldd + tap * s.c + c0, ldd, r0 == 0);
    }
  }
}

#pragma GCC pop_options
#endif

// What the kernels can take, whatever the mode
bool supported(const at::Tensor& input, const at::Tensor& grad, int64_t groups) {
  return GK_WGRAD_X86 && avx2_kernels_enabled() && groups == 1 && input.dim() == 4 &&
         grad.dim() == 4 && input.device().is_cpu() && grad.device().is_cpu() &&
         input.scalar_type() == at::kFloat && grad.scalar_type() == at::kFloat &&
         input.numel() != 0 && grad.numel() != 0 && input.size(1) % kTileCols == 0 &&
         input.stride(1) == 1 && grad.stride(1) == 1;
}

}  // namespace

void set_conv_wgrad_mode(int64_t mode) { set_path_mode(g_mode, mode, "conv weight-gradient"); }

int64_t conv_wgrad_mode() { return g_mode.load(); }

bool use_conv_wgrad(const at::Tensor& input, const at::Tensor& grad, int64_t groups) {
  const int64_t mode = g_mode.load(std::memory_order_relaxed);
  if (mode == 0 || !supported(input, grad, groups)) return false;
  if (mode == 2 || !avx512_kernels_enabled()) return true;
  // AVX-512 (the 12 x 32 tile), measured on AMD's (2-core Zen 5, 2 threads, ms, oneDNN ->
  // genkern): 4x4 stride 2, batch 64, 64 -> 128 channels 32x32 12.0 -> 10.9, 128 -> 256 12.4 ->
  // 9.3, 256 -> 512 13.7 -> 7.8, 128 -> 64 3.6 -> 2.5; 3x3 stride 1, batch 128, 64 -> 128 at 8x8
  // 2.65 -> 2.43 but 32 -> 64 at 16x16 3.29 -> 3.47. Intel's, unmeasured, keep oneDNN's.
  return !cpu_is_intel() && input.size(1) % 32 == 0 && input.size(1) >= 64;
}

at::Tensor conv2d_weight_grad_avx2(const at::Tensor& input, const at::Tensor& grad, int64_t kh,
                                   int64_t kw, const std::vector<int64_t>& stride,
                                   const std::vector<int64_t>& padding,
                                   const std::vector<int64_t>& dilation) {
  TORCH_CHECK(supported(input, grad, 1), "genkern: conv2d_weight_grad_avx2 takes float32 tensors ",
              "with channels innermost and a multiple of 16 input channels on an AVX2 CPU");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 && kh > 0 &&
                  kw > 0 && stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 &&
                  dilation[1] > 0 && padding[0] >= 0 && padding[1] >= 0,
              "genkern: conv2d_weight_grad_avx2 expects a positive kernel size, stride and ",
              "dilation and a non-negative padding, two of each");
  for (int i = 0; i < 2; ++i) {
    const int64_t out = conv_output_size(input.size(i + 2), i ? kw : kh, stride[i], padding[i],
                                         dilation[i]);
    TORCH_CHECK(grad.size(0) == input.size(0) && grad.size(i + 2) == out,
                "genkern: conv2d_weight_grad_avx2: grad of size ", grad.sizes(),
                " is not the output size of this conv of an input of size ", input.sizes());
  }
  const Wgrad s{input.size(0), input.size(1), input.size(2),  input.size(3), grad.size(1),
                grad.size(2),  grad.size(3),  kh,             kw,            stride[0],
                stride[1],     padding[0],    padding[1],     dilation[0],   dilation[1],
                input.stride(0), input.stride(2), input.stride(3), grad.stride(0),
                grad.stride(2), grad.stride(3)};
  // [K, kH, kW, C] in memory: the channels_last weight
  at::Tensor dw = at::empty({s.k, s.c, kh, kw}, input.options(), at::MemoryFormat::ChannelsLast);
#if GK_WGRAD_X86
  const float* g = grad.const_data_ptr<float>();
  const float* x = input.const_data_ptr<float>();
  float* d = dw.data_ptr<float>();
  const Kernel& kn = avx512_kernels_enabled() && s.c % kAvx512.cols == 0 ? kAvx512 : kAvx2;
  at::parallel_for(0, tile_count(s, kn), 1, [&](int64_t t0, int64_t t1) {
    weight_grad_tiles(s, kn, g, x, d, t0, t1);
  });
#endif
  return dw;
}

}  // namespace genkern::cpu
