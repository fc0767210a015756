#include "epilogue.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "genkern/activation.h"

namespace genkern::cpu {
namespace {

// A tensor seen as [outer, channels, inner] with channels at stride `inner`, elements dense.
struct ChannelView {
  int64_t outer, channels, inner;
};

ChannelView channel_view(const at::Tensor& t) {
  const int64_t channels = t.dim() >= 2 ? t.size(1) : t.numel();
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return {t.numel() / std::max<int64_t>(channels, 1), channels, 1};
  }
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), "genkern: epilogue expects a dense tensor");
  const int64_t outer = t.dim() >= 2 ? t.size(0) : 1;
  return {outer, channels, t.numel() / std::max<int64_t>(outer * channels, 1)};
}

// Rows of a channels-innermost view handed to one task; fixed, so sums do not depend on threads.
constexpr int64_t kRowsPerChunk = 64;

}  // namespace

void bias_act_(at::Tensor& z, const std::optional<at::Tensor>& bias, int64_t activation,
               double negative_slope, at::Tensor* act_out) {
  if (z.numel() == 0) return;
  const auto act = static_cast<Activation>(activation);
  const ChannelView v = channel_view(z);
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "bias_act_", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* yp = act_out ? act_out->data_ptr<scalar_t>() : zp;
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    const scalar_t* bp = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    auto apply = [&](int64_t i, opmath_t bv) {
      const opmath_t pre = static_cast<opmath_t>(zp[i]) + bv;
      if (act_out) zp[i] = static_cast<scalar_t>(pre);
      yp[i] = static_cast<scalar_t>(act_forward<opmath_t>(act, pre, slope));
    };
    if (v.inner == 1) {  // channels innermost: [rows, C]
      at::parallel_for(0, v.outer, kRowsPerChunk, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t base = r * v.channels;
          for (int64_t c = 0; c < v.channels; ++c) apply(base + c, bp ? opmath_t(bp[c]) : 0);
        }
      });
    } else {  // planes: [outer * C, inner]
      at::parallel_for(0, v.outer * v.channels, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const opmath_t bv = bp ? opmath_t(bp[p % v.channels]) : 0;
          const int64_t base = p * v.inner;
          for (int64_t i = 0; i < v.inner; ++i) apply(base + i, bv);
        }
      });
    }
  });
}

std::tuple<at::Tensor, at::Tensor> act_backward_bias_grad(const at::Tensor& grad_y,
                                                          const std::optional<at::Tensor>& saved,
                                                          int64_t activation, double negative_slope,
                                                          bool need_bias_grad) {
  const auto act = static_cast<Activation>(activation);
  const bool has_saved = saved.has_value() && saved->defined() && saved->numel() > 0;
  TORCH_CHECK(has_saved || act == Activation::kIdentity, "genkern: activation backward needs the saved tensor");
  // The pass runs in the saved tensor's layout (our own output's); grad_y follows it.
  const auto format = has_saved ? saved->suggest_memory_format() : grad_y.suggest_memory_format();
  const at::Tensor gy = grad_y.contiguous(format);
  const int64_t channels = gy.dim() >= 2 ? gy.size(1) : gy.numel();
  at::Tensor bias_grad = need_bias_grad ? at::zeros({channels}, gy.options()) : at::Tensor();
  const bool identity = act == Activation::kIdentity;
  at::Tensor g = identity ? gy : at::empty_like(gy, format);
  if (gy.numel() == 0 || (identity && !need_bias_grad)) return {g, bias_grad};
  const at::Tensor s = has_saved ? saved->contiguous(format) : at::Tensor();
  const ChannelView v = channel_view(gy);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "act_backward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using acc_t = double;  // bias sums in double: cheap in a memory-bound pass, exact enough
    const scalar_t* gyp = gy.data_ptr<scalar_t>();
    const scalar_t* sp = has_saved ? s.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = g.data_ptr<scalar_t>();
    const opmath_t slope = static_cast<opmath_t>(negative_slope);
    auto grad_at = [&](int64_t i) -> opmath_t {
      if (identity) return static_cast<opmath_t>(gyp[i]);
      const opmath_t r = act_backward<opmath_t>(act, opmath_t(gyp[i]), opmath_t(sp[i]), slope);
      gp[i] = static_cast<scalar_t>(r);
      return static_cast<opmath_t>(gp[i]);  // the bias gradient sums what dx/dw will see
    };
    if (v.inner == 1) {  // channels innermost: per-chunk partial sums, then an ordered reduction
      const int64_t chunks = need_bias_grad ? (v.outer + kRowsPerChunk - 1) / kRowsPerChunk : 0;
      std::vector<acc_t> partial(need_bias_grad ? chunks * v.channels : 0, acc_t(0));
      const int64_t n_tasks = (v.outer + kRowsPerChunk - 1) / kRowsPerChunk;
      at::parallel_for(0, n_tasks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          acc_t* acc = need_bias_grad ? partial.data() + t * v.channels : nullptr;
          const int64_t r1 = std::min(v.outer, (t + 1) * kRowsPerChunk);
          for (int64_t r = t * kRowsPerChunk; r < r1; ++r) {
            const int64_t base = r * v.channels;
            for (int64_t c = 0; c < v.channels; ++c) {
              const opmath_t x = grad_at(base + c);
              if (acc) acc[c] += x;
            }
          }
        }
      });
      if (need_bias_grad) {
        scalar_t* bg = bias_grad.data_ptr<scalar_t>();
        for (int64_t c = 0; c < v.channels; ++c) {
          acc_t sum = 0;
          for (int64_t t = 0; t < chunks; ++t) sum += partial[t * v.channels + c];
          bg[c] = static_cast<scalar_t>(sum);
        }
      }
    } else {  // planes: one task per channel walks every plane of it, in order
      scalar_t* bg = need_bias_grad ? bias_grad.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, v.channels, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          acc_t sum = 0;
          for (int64_t o = 0; o < v.outer; ++o) {
            const int64_t base = (o * v.channels + c) * v.inner;
            acc_t plane = 0;
            for (int64_t i = 0; i < v.inner; ++i) plane += grad_at(base + i);
            sum += plane;
          }
          if (bg) bg[c] = static_cast<scalar_t>(sum);
        }
      });
    }
  });
  return {g, bias_grad};
}

}  // namespace genkern::cpu
