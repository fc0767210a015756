// Torch glue of norm_pool_kernels.cu: checks, allocation through torch's caching allocator,
// launches on the current stream, no host synchronization.
#include "norm_pool_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "norm_pool_kernels.cuh"

namespace genkern::cuda {
namespace {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
typename CudaType<scalar_t>::type* ptr(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  return reinterpret_cast<typename CudaType<scalar_t>::type*>(t.data_ptr<scalar_t>());
}

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "genkern: CUDA kernel ", what, " failed: ",
              cudaGetErrorString(err));
}

struct View {
  int64_t outer, channels, inner;
};

bool rows(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

View view_of(const at::Tensor& t) {
  const int64_t c = t.size(1);
  if (rows(t)) return {t.numel() / std::max<int64_t>(c, 1), c, 1};
  TORCH_CHECK(t.is_contiguous(), "genkern: expected a dense tensor");
  const int64_t n = t.size(0);
  return {n, c, t.numel() / std::max<int64_t>(n * c, 1)};
}

at::MemoryFormat format_of(const at::Tensor& t) {
  return rows(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Geometry geometry(const at::Tensor& x, const at::Tensor& y, const std::vector<int64_t>& kernel,
                  const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                  const std::vector<int64_t>& dilation) {
  Geometry g{};
  g.n = x.size(0);
  g.c = x.size(1);
  g.ih = x.size(2);
  g.iw = x.size(3);
  g.oh = y.size(2);
  g.ow = y.size(3);
  for (int d = 0; d < 4; ++d) {
    g.xs[d] = x.stride(d);
    g.ys[d] = y.stride(d);
  }
  g.kh = kernel.empty() ? 1 : kernel[0];
  g.kw = kernel.empty() ? 1 : kernel[1];
  g.sh = stride.empty() ? 1 : stride[0];
  g.sw = stride.empty() ? 1 : stride[1];
  g.ph = padding.empty() ? 0 : padding[0];
  g.pw = padding.empty() ? 0 : padding[1];
  g.dh = dilation.empty() ? 1 : dilation[0];
  g.dw = dilation.empty() ? 1 : dilation[1];
  return g;
}

#define GK_DISPATCH(T, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, T, NAME, __VA_ARGS__)

}  // namespace

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& x) {
  c10::cuda::CUDAGuard guard(x.device());
  const View v = view_of(x);
  at::Tensor mean = at::empty({v.channels}, x.options().dtype(acc_type(x)));
  at::Tensor var = at::empty({v.channels}, x.options().dtype(acc_type(x)));
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "batch_norm_stats_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    check(bn_stats(ptr<scalar_t>(x), mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(), v.outer,
                   v.channels, v.inner, stream),
          "bn_stats");
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_apply_cuda(const at::Tensor& x,
                                                         const at::Tensor& scale,
                                                         const at::Tensor& shift,
                                                         int64_t activation, double negative_slope,
                                                         bool save_preact) {
  c10::cuda::CUDAGuard guard(x.device());
  const View v = view_of(x);
  const auto fmt = format_of(x);
  at::Tensor y = at::empty_like(x, fmt);
  at::Tensor pre = save_preact ? at::empty_like(x, fmt) : at::empty({0}, x.options());
  const at::Tensor a = scale.to(acc_type(x)).contiguous(), b = shift.to(acc_type(x)).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "batch_norm_apply_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    check(bn_apply(ptr<scalar_t>(x), ptr<scalar_t>(y), save_preact ? ptr<scalar_t>(pre) : nullptr,
                   a.data_ptr<acc_t>(), b.data_ptr<acc_t>(), v.outer, v.channels, v.inner,
                   static_cast<Activation>(activation), negative_slope, stream),
          "bn_apply");
  });
  return {y, pre};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& mean, int64_t activation, double negative_slope) {
  c10::cuda::CUDAGuard guard(x.device());
  const View v = view_of(x);
  const auto fmt = format_of(x);
  const at::Tensor gy = grad_y.contiguous(fmt);
  const bool has_s = saved.has_value() && saved->defined() && saved->numel() > 0;
  const at::Tensor s = has_s ? saved->contiguous(fmt) : at::Tensor();
  const at::Tensor m = mean.to(acc_type(x)).contiguous();
  at::Tensor sum_g = at::empty({v.channels}, x.options().dtype(acc_type(x)));
  at::Tensor sum_gx = at::empty({v.channels}, x.options().dtype(acc_type(x)));
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "batch_norm_backward_reduce_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    check(bn_backward_reduce(ptr<scalar_t>(gy), has_s ? ptr<scalar_t>(s) : nullptr,
                             ptr<scalar_t>(x), m.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>(),
                             sum_gx.data_ptr<acc_t>(), v.outer, v.channels, v.inner,
                             static_cast<Activation>(activation), negative_slope, stream),
          "bn_backward_reduce");
  });
  return {sum_g, sum_gx};
}

at::Tensor batch_norm_backward_apply_cuda(const at::Tensor& grad_y,
                                          const std::optional<at::Tensor>& saved,
                                          const at::Tensor& x, const at::Tensor& ka,
                                          const at::Tensor& kb, const at::Tensor& kc,
                                          int64_t activation, double negative_slope) {
  c10::cuda::CUDAGuard guard(x.device());
  const View v = view_of(x);
  const auto fmt = format_of(x);
  const at::Tensor gy = grad_y.contiguous(fmt);
  const bool has_s = saved.has_value() && saved->defined() && saved->numel() > 0;
  const at::Tensor s = has_s ? saved->contiguous(fmt) : at::Tensor();
  const auto at_ = acc_type(x);
  // empty kb / kc: evaluation, gx = ka * g (x is not read: no 0 * x term to turn inf into NaN)
  const bool train = kb.numel() > 0;
  const at::Tensor a = ka.to(at_).contiguous();
  const at::Tensor b = train ? kb.to(at_).contiguous() : a, c = train ? kc.to(at_).contiguous() : a;
  at::Tensor gx = at::empty_like(x, fmt);
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "batch_norm_backward_apply_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    check(bn_backward_apply(ptr<scalar_t>(gy), has_s ? ptr<scalar_t>(s) : nullptr,
                            train ? ptr<scalar_t>(x) : nullptr, ptr<scalar_t>(gx),
                            a.data_ptr<acc_t>(),
                            b.data_ptr<acc_t>(), c.data_ptr<acc_t>(), v.outer, v.channels,
                            v.inner, static_cast<Activation>(activation), negative_slope, stream),
          "bn_backward_apply");
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cuda(const at::Tensor& x,
                                                           std::vector<int64_t> kernel,
                                                           std::vector<int64_t> stride,
                                                           std::vector<int64_t> padding,
                                                           std::vector<int64_t> dilation,
                                                           std::vector<int64_t> out_size) {
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = format_of(x);
  at::Tensor y = at::empty({x.size(0), x.size(1), out_size[0], out_size[1]},
                           x.options().memory_format(fmt));
  at::Tensor idx = at::empty_like(y, y.options().dtype(at::kLong), fmt);
  const Geometry g = geometry(x, y, kernel, stride, padding, dilation);
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "max_pool2d_forward_cuda", [&] {
    check(max_pool2d_forward(ptr<scalar_t>(x), ptr<scalar_t>(y), idx.data_ptr<int64_t>(), g,
                             stream),
          "max_pool2d_forward");
  });
  return {y, idx};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& indices,
                                    const at::Tensor& grad_input, std::vector<int64_t> kernel,
                                    std::vector<int64_t> stride, std::vector<int64_t> padding,
                                    std::vector<int64_t> dilation) {
  c10::cuda::CUDAGuard guard(grad_input.device());
  const auto fmt = format_of(grad_input);
  const at::Tensor gy = grad_y.contiguous(fmt);
  const at::Tensor id = indices.contiguous(fmt);
  const Geometry g = geometry(grad_input, gy, kernel, stride, padding, dilation);
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(gy.scalar_type(), "max_pool2d_backward_cuda", [&] {
    check(max_pool2d_backward(ptr<scalar_t>(gy), id.data_ptr<int64_t>(), ptr<scalar_t>(grad_input),
                              g, stream),
          "max_pool2d_backward");
  });
  return grad_input;
}

at::Tensor avg_pool2d_forward_cuda(const at::Tensor& x, std::vector<int64_t> kernel,
                                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                                   std::vector<int64_t> out_size, bool count_include_pad,
                                   int64_t divisor_override) {
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = format_of(x);
  at::Tensor y = at::empty({x.size(0), x.size(1), out_size[0], out_size[1]},
                           x.options().memory_format(fmt));
  const Geometry g = geometry(x, y, kernel, stride, padding, {});
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "avg_pool2d_forward_cuda", [&] {
    check(avg_pool2d_forward(ptr<scalar_t>(x), ptr<scalar_t>(y), g, count_include_pad,
                             divisor_override, stream),
          "avg_pool2d_forward");
  });
  return y;
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& grad_input,
                                    std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                    std::vector<int64_t> padding, bool count_include_pad,
                                    int64_t divisor_override) {
  c10::cuda::CUDAGuard guard(grad_input.device());
  const at::Tensor gy = grad_y.contiguous(format_of(grad_input));
  const Geometry g = geometry(grad_input, gy, kernel, stride, padding, {});
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(gy.scalar_type(), "avg_pool2d_backward_cuda", [&] {
    check(avg_pool2d_backward(ptr<scalar_t>(gy), ptr<scalar_t>(grad_input), g, count_include_pad,
                              divisor_override, stream),
          "avg_pool2d_backward");
  });
  return grad_input;
}

at::Tensor upsample_nearest2d_forward_cuda(const at::Tensor& x, const at::Tensor& src_h,
                                           const at::Tensor& src_w) {
  c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = format_of(x);
  at::Tensor y = at::empty({x.size(0), x.size(1), src_h.numel(), src_w.numel()},
                           x.options().memory_format(fmt));
  const at::Tensor sh = src_h.contiguous(), sw = src_w.contiguous();
  const Geometry g = geometry(x, y, {}, {}, {}, {});
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(x.scalar_type(), "upsample_nearest2d_forward_cuda", [&] {
    check(upsample_nearest2d_forward(ptr<scalar_t>(x), ptr<scalar_t>(y), sh.data_ptr<int64_t>(),
                                     sw.data_ptr<int64_t>(), g, stream),
          "upsample_nearest2d_forward");
  });
  return y;
}

at::Tensor upsample_nearest2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& h_lo,
                                            const at::Tensor& h_hi, const at::Tensor& w_lo,
                                            const at::Tensor& w_hi, const at::Tensor& grad_input) {
  c10::cuda::CUDAGuard guard(grad_input.device());
  const at::Tensor gy = grad_y.contiguous(format_of(grad_input));
  const Geometry g = geometry(grad_input, gy, {}, {}, {}, {});
  const at::Tensor a = h_lo.contiguous(), b = h_hi.contiguous(), c = w_lo.contiguous(),
                   d = w_hi.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  GK_DISPATCH(gy.scalar_type(), "upsample_nearest2d_backward_cuda", [&] {
    check(upsample_nearest2d_backward(ptr<scalar_t>(gy), ptr<scalar_t>(grad_input),
                                      a.data_ptr<int64_t>(), b.data_ptr<int64_t>(),
                                      c.data_ptr<int64_t>(), d.data_ptr<int64_t>(), g, stream),
          "upsample_nearest2d_backward");
  });
  return grad_input;
}

}  // namespace genkern::cuda
