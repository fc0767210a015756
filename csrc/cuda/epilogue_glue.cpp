// The torch glue of the CUDA epilogue kernels: see epilogue_glue.h.
#include "epilogue_glue.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "epilogue_kernels.cuh"
#include "genkern/channel_view.h"

namespace genkern::cuda {
namespace {

// The CUDA type the kernels are instantiated for, per ATen scalar type (same bit layouts).
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
  if (!t.defined()) return nullptr;
  return reinterpret_cast<typename CudaType<scalar_t>::type*>(t.data_ptr<scalar_t>());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "genkern: CUDA kernel ", what, " failed: ",
              cudaGetErrorString(err));
}

void check_activation(int64_t activation) {
  TORCH_CHECK(activation >= 0 && activation < kNumActivations,
              "genkern: activation id must be in [0, ", kNumActivations, "), but got ",
              activation);
}

}  // namespace

void bias_act_cuda_(at::Tensor& z, const std::optional<at::Tensor>& bias, int64_t activation,
                    double negative_slope, at::Tensor* act_out) {
  check_activation(activation);
  if (z.numel() == 0) return;
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(z.is_cuda() && (!has_bias || bias->is_cuda()),
              "genkern: the CUDA epilogue expects CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(z.device());
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  TORCH_CHECK(!has_bias || (b.scalar_type() == z.scalar_type() && b.numel() == z.size(1)),
              "genkern: bias must have ", z.size(1), " elements of the output's dtype");
  TORCH_CHECK(act_out == nullptr || act_out->strides() == z.strides(),
              "genkern: act_out must have the strides of z");
  const ChannelView v = channel_view(z);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "bias_act_cuda_", [&] {
    using T = typename CudaType<scalar_t>::type;
    T* out = act_out != nullptr ? ptr<scalar_t>(*act_out) : nullptr;
    check_launch(bias_act_forward<T>(ptr<scalar_t>(z), out, ptr<scalar_t>(b), v.outer, v.channels,
                                     v.inner, static_cast<Activation>(activation), negative_slope,
                                     stream),
                 "bias_act_forward");
  });
}

std::tuple<at::Tensor, at::Tensor> act_backward_bias_grad_cuda(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, int64_t activation,
    double negative_slope, bool need_bias_grad) {
  check_activation(activation);
  const auto act = static_cast<Activation>(activation);
  const bool identity = act == Activation::kIdentity;
  const bool has_saved = saved.has_value() && saved->defined() && saved->numel() > 0;
  TORCH_CHECK(has_saved || identity, "genkern: activation backward needs the saved tensor");
  TORCH_CHECK(grad_y.is_cuda() && (!has_saved || saved->is_cuda()),
              "genkern: the CUDA epilogue expects CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(grad_y.device());

  // The pass runs in the saved tensor's layout (our own output's); grad_y follows it.
  const auto format = has_saved ? saved->suggest_memory_format() : grad_y.suggest_memory_format();
  const at::Tensor gy = grad_y.contiguous(format);
  const int64_t channels = gy.dim() >= 2 ? gy.size(1) : gy.numel();
  at::Tensor bias_grad;
  if (need_bias_grad) {
    bias_grad = gy.numel() == 0 ? at::zeros({channels}, gy.options())
                                : at::empty({channels}, gy.options());
  }
  at::Tensor g = identity ? gy : at::empty_like(gy, format);
  if (gy.numel() == 0 || (identity && !need_bias_grad)) return {g, bias_grad};
  const at::Tensor s = has_saved ? saved->contiguous(format) : at::Tensor();
  TORCH_CHECK(!has_saved || (s.sizes() == gy.sizes() && s.scalar_type() == gy.scalar_type()),
              "genkern: the saved tensor must match grad_y in shape and dtype");
  const ChannelView v = channel_view(gy);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, gy.scalar_type(), "act_backward_bias_grad_cuda", [&] {
        using T = typename CudaType<scalar_t>::type;
        const size_t ws_bytes =
            need_bias_grad ? act_backward_bias_grad_workspace_bytes<T>(v.outer, v.channels, v.inner)
                           : 0;
        // Through the caching allocator (stream-ordered reuse; a graph's private pool when
        // capturing), freed when this scope ends.
        const at::Tensor ws =
            ws_bytes > 0
                ? at::empty({static_cast<int64_t>(ws_bytes)}, gy.options().dtype(at::kByte))
                : at::Tensor();
        T* grad = identity ? nullptr : ptr<scalar_t>(g);
        void* workspace = ws.defined() ? ws.data_ptr() : nullptr;
        check_launch(act_backward_bias_grad<T>(ptr<scalar_t>(gy), ptr<scalar_t>(s), grad,
                                               ptr<scalar_t>(bias_grad), workspace, ws_bytes,
                                               v.outer, v.channels, v.inner, act, negative_slope,
                                               stream),
                     "act_backward_bias_grad");
      });
  return {g, bias_grad};
}

}  // namespace genkern::cuda
