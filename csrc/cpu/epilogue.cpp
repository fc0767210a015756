#include "epilogue.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tanh.h>

#include <algorithm>
#include <vector>

#include "cpu_clones.h"
#include "layout_copy.h"
#include "genkern/activation.h"
#include "genkern/channel_view.h"

namespace genkern::cpu {
namespace {

// Elements handed to one task; fixed, so reductions do not depend on the thread count.
constexpr int64_t kChunk = 16384;

// The grain of a parallel_for over `tasks` tasks sharing `elements`: all of them on one thread
// below kSerialElements (waking the other threads costs more than they save), else 1.
constexpr int64_t kSerialElements = 65536;
int64_t serial_grain(int64_t elements, int64_t tasks) {
  return elements < kSerialElements ? std::max<int64_t>(tasks, 1) : 1;
}

// dst[i] = act(src[i]) over [i0, i1); dst may be src. The activation is a compile-time constant
// and the loop has no other control flow, so it vectorizes (compiled for AVX-512 and AVX2 too:
// float32 tanh, sigmoid and silu run here on exp_math.h).
template <Activation A, typename scalar_t, typename opmath_t>
GK_CPU_CLONES void act_run(const scalar_t* src, scalar_t* dst, int64_t i0, int64_t i1,
                           opmath_t slope) {
  for (int64_t i = i0; i < i1; ++i) {
    dst[i] = static_cast<scalar_t>(act_forward<A, opmath_t>(static_cast<opmath_t>(src[i]), slope));
  }
}

// The activation's backward, g = act'(grad_y, saved), fused with the bias gradient's sums. Each
// loop writes g (not for identity: g is grad_y) and sums the values it wrote, the rounded ones the
// weight and input gradients will read. Sums run in float64 over kLanes independent lanes, added
// in a fixed order at the end: vectorizable (one add chain would be latency-bound, and the
// compiler may not reorder it itself) and independent of the thread count.
constexpr int kLanes = 16;

template <typename scalar_t>
using opmath = at::opmath_type<scalar_t>;

// p + offset, or null for null (saved is absent for identity, g for identity too).
template <typename T>
T* offset_by(T* p, int64_t offset) {
  return p != nullptr ? p + offset : p;
}

template <Activation A, typename scalar_t>
inline scalar_t grad_at(const scalar_t* gy, const scalar_t* s, int64_t i, opmath<scalar_t> slope) {
  if constexpr (A == Activation::kIdentity) {
    return gy[i];
  } else {
    using opmath_t = opmath<scalar_t>;
    return static_cast<scalar_t>(act_backward<A, opmath_t>(opmath_t(gy[i]), opmath_t(s[i]), slope));
  }
}

// g[i] for i < n.
template <Activation A, typename scalar_t>
GK_CPU_CLONES void act_grad(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ s,
                            scalar_t* __restrict__ g, int64_t n, opmath<scalar_t> slope) {
  for (int64_t i = 0; i < n; ++i) g[i] = grad_at<A>(gy, s, i, slope);
}

// g[i] = act'(g[i], s[i]) in place, for i < n.
template <Activation A, typename scalar_t>
GK_CPU_CLONES void act_grad_in_place(scalar_t* g, const scalar_t* __restrict__ s, int64_t n,
                                     opmath<scalar_t> slope) {
  for (int64_t i = 0; i < n; ++i) g[i] = grad_at<A>(g, s, i, slope);
}

// g[i] for i < n, and their sum. InPlace: grad_y is read from g itself (gy unused).
template <Activation A, typename scalar_t, bool InPlace>
GK_CPU_CLONES double act_grad_sum(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ s,
                                  scalar_t* __restrict__ g, int64_t n, opmath<scalar_t> slope) {
  const scalar_t* in = InPlace ? g : gy;
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const scalar_t v = grad_at<A>(in, s, i + k, slope);
      if constexpr (A != Activation::kIdentity) g[i + k] = v;
      lanes[k] += double(v);
    }
  }
  for (; i < n; ++i) {
    const scalar_t v = grad_at<A>(in, s, i, slope);
    if constexpr (A != Activation::kIdentity) g[i] = v;
    lanes[0] += double(v);
  }
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) lanes[k] += lanes[k + w];
  return lanes[0];
}

// g over rows x channels (rows contiguous), acc[c] += the column sums: blocks of kBlockRows rows
// summed in opmath (float but for double: one vector add per 16 floats, the pass stays
// memory-bound), each block's sums added to acc in float64. block: channels of scratch. InPlace:
// grad_y is read from g itself (gy unused).
constexpr int64_t kBlockRows = 32;

template <Activation A, typename scalar_t, bool InPlace>
GK_CPU_CLONES void act_grad_column_sums(const scalar_t* __restrict__ gy,
                                        const scalar_t* __restrict__ s, scalar_t* __restrict__ g,
                                        int64_t rows, int64_t channels, double* __restrict__ acc,
                                        opmath<scalar_t>* __restrict__ block,
                                        opmath<scalar_t> slope) {
  const scalar_t* in = InPlace ? g : gy;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
    for (int64_t c = 0; c < channels; ++c) block[c] = 0;
    const int64_t r1 = std::min(rows, r0 + kBlockRows);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t v = grad_at<A>(in, s, base + c, slope);
        if constexpr (A != Activation::kIdentity) g[base + c] = v;
        block[c] += opmath<scalar_t>(v);
      }
    }
    for (int64_t c = 0; c < channels; ++c) acc[c] += double(block[c]);
  }
}

// One row of bias_activation_: v = z[c] + b[c]; y[c] = act(v), and z[c] = v when y is another
// tensor (the pre-activation kept).
template <Activation A, typename scalar_t>
GK_CPU_CLONES void bias_act_row(scalar_t* __restrict__ z, const scalar_t* __restrict__ b,
                                scalar_t* __restrict__ y, bool keep_z, int64_t n,
                                opmath<scalar_t> slope) {
  using opmath_t = opmath<scalar_t>;
  for (int64_t c = 0; c < n; ++c) {
    const opmath_t v = opmath_t(z[c]) + opmath_t(b[c]);
    if (keep_z) z[c] = static_cast<scalar_t>(v);
    y[c] = static_cast<scalar_t>(act_forward<A, opmath_t>(v, slope));
  }
}

}  // namespace

void bias_activation_(at::Tensor& z, const at::Tensor& bias, int64_t activation,
                      double negative_slope, at::Tensor* act_out) {
  const auto act = static_cast<Activation>(activation);
  if (act == Activation::kTanh || z.dim() != 2 || !z.is_contiguous() || !bias.is_contiguous() ||
      bias.scalar_type() != z.scalar_type()) {
    z.add_(bias);  // ATen's vectorized exp / tanh after it (see activation_)
    activation_(z, activation, negative_slope, act_out);
    return;
  }
  const int64_t rows = z.size(0), n = z.size(1);
  if (z.numel() == 0) return;
  at::Tensor& y = act_out ? *act_out : z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "bias_act", [&] {
    scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    const auto slope = static_cast<opmath<scalar_t>>(negative_slope);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      at::parallel_for(0, rows, serial_grain(z.numel(), rows), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          bias_act_row<A, scalar_t>(zp + r * n, bp, yp + r * n, yp != zp, n, slope);
      });
    });
  });
}

void activation_(at::Tensor& z, int64_t activation, double negative_slope, at::Tensor* act_out) {
  if (z.numel() == 0) return;
  const auto act = static_cast<Activation>(activation);
  at::Tensor& y = act_out ? *act_out : z;
  // float32 tanh, sigmoid and silu run in the loop below, on exp_math.h: ATen's CPU tanh runs
  // several times slower than its sigmoid (786K floats, Zen 5, 2 threads: 0.76 ms against 0.09
  // ms), and its sigmoid's and silu's scalar tails round differently from their vector bodies,
  // so their bits depended on the thread count (found by the fuzz); this loop's do not.
  const bool exp_based = act == Activation::kTanh || act == Activation::kSigmoid ||
                         act == Activation::kSilu;
  const bool own = exp_based && z.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat &&
                   z.is_non_overlapping_and_dense() && y.strides() == z.strides();
  if (exp_based && !own) {
    // exp/tanh: ATen's SLEEF-vectorized kernels are several times faster than scalar libm.
    if (act == Activation::kTanh) at::tanh_out(y, z);
    if (act == Activation::kSigmoid) at::sigmoid_out(y, z);
    if (act == Activation::kSilu) at::silu_out(y, z);
    return;
  }
  TORCH_INTERNAL_ASSERT(z.is_non_overlapping_and_dense() && y.strides() == z.strides());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "activation_", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* src = z.data_ptr<scalar_t>();
    scalar_t* dst = y.data_ptr<scalar_t>();
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      if constexpr (A != Activation::kIdentity) {
        at::parallel_for(0, z.numel(), kChunk, [&](int64_t i0, int64_t i1) {
          act_run<A, scalar_t, opmath_t>(src, dst, i0, i1, slope);
        });
      } else if (dst != src) {
        y.copy_(z);
      }
    });
  });
}

std::pair<at::Tensor, at::Tensor> activation_epilogue(at::Tensor z, int64_t activation,
                                                      double negative_slope, bool save_preact) {
  if (!save_preact) {
    activation_(z, activation, negative_slope);
    return {z, at::Tensor()};
  }
  at::Tensor y = at::empty_like(z);
  activation_(z, activation, negative_slope, &y);
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor> act_backward_bias_grad(const at::Tensor& grad_y,
                                                          const std::optional<at::Tensor>& saved,
                                                          int64_t activation, double negative_slope,
                                                          bool need_bias_grad, bool may_overwrite) {
  const auto act = static_cast<Activation>(activation);
  const bool has_saved = saved.has_value() && saved->defined() && saved->numel() > 0;
  TORCH_CHECK(has_saved || act == Activation::kIdentity,
              "genkern: activation backward needs the saved tensor");
  // The pass runs in the saved tensor's layout (our own output's); grad_y follows it.
  const auto format = has_saved ? saved->suggest_memory_format() : grad_y.suggest_memory_format();
  const at::Tensor gy = contiguous_as(grad_y, format);
  const int64_t channels = gy.dim() >= 2 ? gy.size(1) : gy.numel();
  at::Tensor bias_grad = need_bias_grad ? at::empty({channels}, gy.options()) : at::Tensor();
  const bool identity = act == Activation::kIdentity;
  // in place (g written over grad_y): grad_y is ours to overwrite, no copy of it was made above
  const bool in_place = may_overwrite && !identity && gy.is_same(grad_y);
  at::Tensor g = identity || in_place ? gy : at::empty_like(gy, format);
  if (gy.numel() == 0) {
    if (need_bias_grad) bias_grad.zero_();
    return {g, bias_grad};
  }
  if (identity && !need_bias_grad) return {g, bias_grad};
  const at::Tensor s = has_saved ? contiguous_as(*saved, format) : at::Tensor();
  const ChannelView v = channel_view(gy);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "act_backward", [&] {
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    const scalar_t* sp = has_saved ? s.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = identity ? nullptr : g.data_ptr<scalar_t>();
    const auto slope = static_cast<opmath<scalar_t>>(negative_slope);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      if (!need_bias_grad) {  // a flat elementwise pass (not identity: returned above)
        at::parallel_for(0, gy.numel(), kChunk, [&](int64_t i0, int64_t i1) {
          if (in_place)
            act_grad_in_place<A, scalar_t>(gp + i0, offset_by(sp, i0), i1 - i0, slope);
          else
            act_grad<A, scalar_t>(gyp + i0, offset_by(sp, i0), gp + i0, i1 - i0, slope);
        });
        return;
      }
      scalar_t* bg = bias_grad.data_ptr<scalar_t>();
      if (v.inner == 1) {  // rows of C: fixed chunks of rows with partial sums, then ordered sums
        const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(v.channels, 1));
        const int64_t tasks = (v.outer + rows - 1) / rows;
        std::vector<double> partial(tasks * v.channels, 0.0);
        const auto sums = in_place ? act_grad_column_sums<A, scalar_t, true>
                                   : act_grad_column_sums<A, scalar_t, false>;
        at::parallel_for(0, tasks, serial_grain(gy.numel(), tasks), [&](int64_t t0, int64_t t1) {
          std::vector<opmath<scalar_t>> block(v.channels);
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t r0 = t * rows, r1 = std::min(v.outer, r0 + rows);
            const int64_t off = r0 * v.channels;
            sums(gyp + off, offset_by(sp, off), offset_by(gp, off), r1 - r0, v.channels,
                 partial.data() + t * v.channels, block.data(), slope);
          }
        });
        for (int64_t c = 0; c < v.channels; ++c) {
          double sum = 0;
          for (int64_t t = 0; t < tasks; ++t) sum += partial[t * v.channels + c];
          bg[c] = static_cast<scalar_t>(sum);
        }
      } else {  // planes: one task per channel walks every plane of it, in order
        const int64_t grain = serial_grain(gy.numel(), v.channels);
        const auto grad_sum =
            in_place ? act_grad_sum<A, scalar_t, true> : act_grad_sum<A, scalar_t, false>;
        at::parallel_for(0, v.channels, grain, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            double sum = 0;
            for (int64_t o = 0; o < v.outer; ++o) {
              const int64_t off = (o * v.channels + c) * v.inner;
              sum += grad_sum(gyp + off, offset_by(sp, off), offset_by(gp, off), v.inner, slope);
            }
            bg[c] = static_cast<scalar_t>(sum);
          }
        });
      }
    });
  });
  return {g, bias_grad};
}

bool sole_owner(const at::Tensor& t) {
  return t.defined() && t.use_count() == 1 && !t.is_view() && !t.requires_grad() &&
         t.storage().use_count() == 1;
}

}  // namespace genkern::cpu
