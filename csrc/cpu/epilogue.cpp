#include "epilogue.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "genkern/activation.h"
#include "genkern/channel_view.h"

namespace genkern::cpu {
namespace {

// Elements handed to one task; fixed, so reductions do not depend on the thread count.
constexpr int64_t kChunk = 16384;

// dst[i] = act(src[i]) over [i0, i1); dst may be src. The activation is a compile-time constant
// and the loop has no other control flow, so it vectorizes.
template <Activation A, typename scalar_t, typename opmath_t>
inline void act_run(const scalar_t* src, scalar_t* dst, int64_t i0, int64_t i1, opmath_t slope) {
  for (int64_t i = i0; i < i1; ++i) {
    dst[i] = static_cast<scalar_t>(act_forward<A, opmath_t>(static_cast<opmath_t>(src[i]), slope));
  }
}

}  // namespace

void activation_(at::Tensor& z, int64_t activation, double negative_slope, at::Tensor* act_out) {
  if (z.numel() == 0) return;
  const auto act = static_cast<Activation>(activation);
  at::Tensor& y = act_out ? *act_out : z;
  if (act == Activation::kTanh || act == Activation::kSigmoid || act == Activation::kSilu) {
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

std::tuple<at::Tensor, at::Tensor> act_backward_bias_grad(const at::Tensor& grad_y,
                                                          const std::optional<at::Tensor>& saved,
                                                          int64_t activation, double negative_slope,
                                                          bool need_bias_grad) {
  const auto act = static_cast<Activation>(activation);
  const bool has_saved = saved.has_value() && saved->defined() && saved->numel() > 0;
  TORCH_CHECK(has_saved || act == Activation::kIdentity,
              "genkern: activation backward needs the saved tensor");
  // The pass runs in the saved tensor's layout (our own output's); grad_y follows it.
  const auto format = has_saved ? saved->suggest_memory_format() : grad_y.suggest_memory_format();
  const at::Tensor gy = grad_y.contiguous(format);
  const int64_t channels = gy.dim() >= 2 ? gy.size(1) : gy.numel();
  at::Tensor bias_grad = need_bias_grad ? at::empty({channels}, gy.options()) : at::Tensor();
  const bool identity = act == Activation::kIdentity;
  at::Tensor g = identity ? gy : at::empty_like(gy, format);
  if (gy.numel() == 0) {
    if (need_bias_grad) bias_grad.zero_();
    return {g, bias_grad};
  }
  if (identity && !need_bias_grad) return {g, bias_grad};
  const at::Tensor s = has_saved ? saved->contiguous(format) : at::Tensor();
  const ChannelView v = channel_view(gy);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "act_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using acc_t = double;  // bias sums in double: cheap in a memory-bound pass, and accurate
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    const scalar_t* sp = has_saved ? s.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = g.data_ptr<scalar_t>();
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      // g over [i0, i1) (unless identity: g is grad_y); returns nothing, sums done by callers
      auto grad_run = [&](int64_t i0, int64_t i1) {
        if constexpr (A != Activation::kIdentity) {
          for (int64_t i = i0; i < i1; ++i) {
            gp[i] = static_cast<scalar_t>(
                act_backward<A, opmath_t>(opmath_t(gyp[i]), opmath_t(sp[i]), slope));
          }
        }
      };
      const scalar_t* gsrc = identity ? gyp : gp;  // the bias gradient sums what dx/dw will see
      if (v.inner == 1) {  // rows of C: fixed row chunks with partial sums, then ordered sums
        const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(v.channels, 1));
        const int64_t tasks = (v.outer + rows - 1) / rows;
        std::vector<acc_t> partial(need_bias_grad ? tasks * v.channels : 0, acc_t(0));
        at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t r0 = t * rows, r1 = std::min(v.outer, r0 + rows);
            grad_run(r0 * v.channels, r1 * v.channels);
            if (!need_bias_grad) continue;
            acc_t* acc = partial.data() + t * v.channels;
            for (int64_t r = r0; r < r1; ++r) {
              const scalar_t* row = gsrc + r * v.channels;
              for (int64_t c = 0; c < v.channels; ++c) acc[c] += acc_t(row[c]);
            }
          }
        });
        if (need_bias_grad) {
          scalar_t* bg = bias_grad.data_ptr<scalar_t>();
          for (int64_t c = 0; c < v.channels; ++c) {
            acc_t sum = 0;
            for (int64_t t = 0; t < tasks; ++t) sum += partial[t * v.channels + c];
            bg[c] = static_cast<scalar_t>(sum);
          }
        }
      } else if (!need_bias_grad) {  // planes, no reduction: a flat elementwise pass
        at::parallel_for(0, gy.numel(), kChunk, grad_run);
      } else {  // planes: one task per channel walks every plane of it, in order
        scalar_t* bg = bias_grad.data_ptr<scalar_t>();
        at::parallel_for(0, v.channels, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            acc_t sum = 0;
            for (int64_t o = 0; o < v.outer; ++o) {
              const int64_t base = (o * v.channels + c) * v.inner;
              grad_run(base, base + v.inner);
              const scalar_t* plane = gsrc + base;
              acc_t part = 0;
              for (int64_t i = 0; i < v.inner; ++i) part += acc_t(plane[i]);
              sum += part;
            }
            bg[c] = static_cast<scalar_t>(sum);
          }
        });
      }
    });
  });
  return {g, bias_grad};
}

}  // namespace genkern::cpu
