// genkern._C: the C++ (and, when built with CUDA, CUDA) entry points, bound with pybind11.
#include <torch/extension.h>

#include "cpu/col2im_path.h"
#include "cpu/head_convt.h"
#include "cpu/conv_gemm.h"
#include "cpu/small_gemm.h"
#include "cpu/layout_copy.h"
#include "cpu/conv_wgrad.h"
#include "cpu/onednn_layout.h"
#include "cpu/stem_conv.h"
#include "cpu/conv2d_act.h"
#include "cpu/dot_gemm.h"
#include "cpu/conv_transpose2d_act.h"
#include "cpu/eager_autograd.h"
#include "cpu/fast_entry.h"
#include "cpu/fingerprint.h"
#include "cpu/input_edge.h"
#include "cpu/prepacked.h"
#include "cpu/linear_act.h"
#include "cpu/losses.h"
#include "cpu/losses_autograd.h"
#include "cpu/batch_norm_act.h"
#include "cpu/pool.h"
#include "cpu/onednn_matmul.h"
#include "cpu/winograd_3x3.h"
#include "cpu/winograd_s2.h"
#include "genkern/activation.h"

#ifdef GENKERN_WITH_CUDA
#include "cuda/conv2d_act_cuda.h"
#include "cuda/conv_transpose2d_act_cuda.h"
#include "cuda/linear_act_cuda.h"
#include "cuda/losses_cuda.h"
#include "cuda/norm_pool_cuda.h"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "genkern fused kernels (C++ CPU, and CUDA when built with it)";
#ifdef GENKERN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("num_activations") = genkern::kNumActivations;

  m.def("conv2d_act_forward_cpu", &genkern::cpu::conv2d_act_forward_cpu);
  m.def("conv2d_act_backward_cpu", &genkern::cpu::conv2d_act_backward_cpu);
  // transposed conv and linear (+ activation)
  m.def("conv_transpose2d_act_forward_cpu", &genkern::cpu::conv_transpose2d_act_forward_cpu);
  m.def("conv_transpose2d_act_backward_cpu", &genkern::cpu::conv_transpose2d_act_backward_cpu);
  m.def("linear_act_forward_cpu", &genkern::cpu::linear_act_forward_cpu);
  m.def("linear_act_backward_cpu", &genkern::cpu::linear_act_backward_cpu);
  // losses
  m.def("gan_loss_cpu", &genkern::cpu::gan_loss_cpu);
  m.def("vae_loss_cpu", &genkern::cpu::vae_loss_cpu);
  m.def("reparameterize_cpu", &genkern::cpu::reparameterize_cpu);
  m.def("gan_loss_autograd_cpu", &genkern::cpu::gan_loss_autograd_cpu);
  m.def("vae_loss_autograd_cpu", &genkern::cpu::vae_loss_autograd_cpu);
  m.def("reparameterize_eager_cpu", &genkern::cpu::reparameterize_eager_cpu);
  // batch_norm + activation, pooling, upsampling
  m.def("batch_norm_act_forward_cpu", &genkern::cpu::batch_norm_act_forward_cpu);
  m.def("batch_norm_act_backward_cpu", &genkern::cpu::batch_norm_act_backward_cpu);
  m.def("batch_norm_keeps_output", &genkern::cpu::batch_norm_keeps_output);
  // eager fast paths (C++ autograd Functions over the kernels above; see eager_autograd.h)
  m.def("conv2d_act_eager_cpu", &genkern::cpu::conv2d_act_eager_cpu);
  m.def("conv_transpose2d_act_eager_cpu", &genkern::cpu::conv_transpose2d_act_eager_cpu);
  m.def("linear_act_eager_cpu", &genkern::cpu::linear_act_eager_cpu);
  m.def("batch_norm_act_eager_cpu", &genkern::cpu::batch_norm_act_eager_cpu);
  m.def("upsample_nearest2d_eager_cpu", &genkern::cpu::upsample_nearest2d_eager_cpu);
  // a tensor's place in the autograd graph, kept where a node keeps only a value of it
  m.def("input_edge", [](const at::Tensor& t) -> py::object {
    c10::IValue edge = genkern::cpu::input_edge(t);
    if (edge.isNone()) return py::none();
    return py::capsule(new c10::IValue(std::move(edge)),
                       [](void* p) { delete static_cast<c10::IValue*>(p); });
  });
  m.def("batch_norm_input_from_output", &genkern::cpu::batch_norm_input_from_output);
  m.def("reattached", [](const at::Tensor& value, const py::object& edge) {
    if (edge.is_none()) return value.detach();
    return genkern::cpu::reattached(value, *static_cast<c10::IValue*>(edge.cast<py::capsule>()));
  });
  m.def("set_recompute_under_saved_tensor_hooks",
        &genkern::cpu::set_recompute_under_saved_tensor_hooks);
  // optimistic entries of the eager fast paths: None when the call is not the common case
  m.def("linear_fast", &genkern::cpu::linear_fast);
  m.def("conv2d_fast", &genkern::cpu::conv2d_fast);
  m.def("conv_transpose2d_fast", &genkern::cpu::conv_transpose2d_fast);
  m.def("batch_norm_fast", &genkern::cpu::batch_norm_fast);
  m.def("gan_loss_fast", &genkern::cpu::gan_loss_fast);
  m.def("push_backend_context", &genkern::cpu::push_backend_context);
  m.def("pop_backend_context", &genkern::cpu::pop_backend_context);
  m.def("vae_loss_fast", &genkern::cpu::vae_loss_fast);
  m.def("max_pool2d_fast", &genkern::cpu::max_pool2d_fast);
  m.def("reparameterize_fast", &genkern::cpu::reparameterize_fast);
  // the packed-weight inference path of the convs (see prepacked.h)
  m.def("set_prepack_mode", &genkern::cpu::set_prepack_mode);
  m.def("prepack_available", &genkern::cpu::prepack_available);
  m.def("prepack_state", &genkern::cpu::prepack_state);
  m.def("prepack_freeze", &genkern::cpu::prepack_freeze);
  m.def("prepack_frozen", &genkern::cpu::prepack_frozen);
  m.def("prepack_timings", &genkern::cpu::prepack_timings);
  m.def("prepack_entries", &genkern::cpu::prepack_entries);
  m.def("fingerprint", &genkern::cpu::fingerprint);
  // few-channel transposed convs through ATen's GEMM + col2im kernel (see col2im_path.h)
  m.def("set_col2im_mode", &genkern::cpu::set_col2im_mode);
  m.def("col2im_mode", &genkern::cpu::col2im_mode);
  m.def("use_col2im", &genkern::cpu::use_col2im);
  // ... of which those that fit on direct AVX-512 kernels (see head_convt.h)
  m.def("set_head_convt_mode", &genkern::cpu::set_head_convt_mode);
  m.def("head_convt_mode", &genkern::cpu::head_convt_mode);
  m.def("use_head_convt", &genkern::cpu::use_head_convt);
  // transposed convs from many channels over a small input, and convs onto many channels over a
  // small output, as GEMMs over the whole batch (see conv_gemm.h)
  m.def("set_conv_gemm_mode", &genkern::cpu::set_conv_gemm_mode);
  m.def("conv_gemm_mode", &genkern::cpu::conv_gemm_mode);
  m.def("use_conv_gemm", &genkern::cpu::use_conv_gemm);
  m.def("use_conv2d_gemm", &genkern::cpu::use_conv2d_gemm);
  // conv weight gradients on genkern's AVX2 kernels (see conv_wgrad.h)
  m.def("set_conv_wgrad_mode", &genkern::cpu::set_conv_wgrad_mode);
  m.def("conv_wgrad_mode", &genkern::cpu::conv_wgrad_mode);
  m.def("use_conv_wgrad", &genkern::cpu::use_conv_wgrad);
  // products on oneDNN's matmul where MKL runs narrower vectors (see onednn_matmul.h)
  m.def("set_onednn_matmul_mode", &genkern::cpu::set_onednn_matmul_mode);
  m.def("onednn_matmul_mode", &genkern::cpu::onednn_matmul_mode);
  m.def("use_onednn_matmul", &genkern::cpu::use_onednn_matmul);
  m.def("onednn_matmul", &genkern::cpu::onednn_matmul);
  // 4x4 stride-2 convs in both directions by Winograd F(4, 2) (see winograd_s2.h)
  m.def("set_winograd_mode", &genkern::cpu::set_winograd_mode);
  m.def("winograd_mode", &genkern::cpu::winograd_mode);
  m.def("use_winograd_s2", &genkern::cpu::use_winograd_s2);
  m.def("winograd_s2_conv2d", &genkern::cpu::winograd_s2_conv2d);
  m.def("winograd_s2_conv_transpose2d", &genkern::cpu::winograd_s2_conv_transpose2d);
  m.def("winograd_s2_conv2d_weight_grad", &genkern::cpu::winograd_s2_conv2d_weight_grad);
  // 3x3 stride-1 convs by Winograd F(2x2, 3x3), an inference candidate (see winograd_3x3.h)
  m.def("winograd_3x3_available", &genkern::cpu::winograd_3x3_available);
  m.def("winograd_3x3_pack_weight", &genkern::cpu::winograd_3x3_pack_weight);
  m.def("winograd_3x3_conv2d", &genkern::cpu::winograd_3x3_conv2d);
  m.def("conv2d_weight_grad_avx2", &genkern::cpu::conv2d_weight_grad_avx2);
  // convs from 1-4 channels on direct AVX-512 or AVX2 kernels (see stem_conv.h)
  m.def("set_stem_conv_mode", &genkern::cpu::set_stem_conv_mode);
  m.def("stem_conv_mode", &genkern::cpu::stem_conv_mode);
  m.def("use_stem_conv", &genkern::cpu::use_stem_conv);
  m.def("avx512_kernels_enabled", &genkern::cpu::avx512_kernels_enabled);
  m.def("cpu_is_intel", &genkern::cpu::cpu_is_intel);
  m.def("blas_runs_avx512", &genkern::cpu::blas_runs_avx512);
  m.def("blas_as_wide_as_onednn", &genkern::cpu::blas_as_wide_as_onednn);
  m.def("avx2_kernels_enabled", &genkern::cpu::avx2_kernels_enabled);
  // NCHW convs run by oneDNN in channels_last where timed faster (see onednn_layout.h)
  m.def("set_onednn_layout_mode", &genkern::cpu::set_onednn_layout_mode);
  m.def("onednn_layout_mode", &genkern::cpu::onednn_layout_mode);
  m.def("onednn_layout_channels_last_calls", &genkern::cpu::onednn_layout_channels_last_calls);
  m.def("onednn_layout_choices", &genkern::cpu::onednn_layout_choices);
  m.def("onednn_layout_timings", &genkern::cpu::onednn_layout_timings);
  m.def("to_channels_last", &genkern::cpu::to_channels_last);
  m.def("to_contiguous", &genkern::cpu::to_contiguous);
  m.def("to_channels_last_scratch", &genkern::cpu::to_channels_last_scratch);
  // linear forwards as row-by-row dot products (see dot_gemm.h)
  m.def("set_dot_gemm_mode", &genkern::cpu::set_dot_gemm_mode);
  m.def("dot_gemm_mode", &genkern::cpu::dot_gemm_mode);
  m.def("use_dot_gemm", &genkern::cpu::use_dot_gemm);
  m.def("avg_pool2d_fast", &genkern::cpu::avg_pool2d_fast);
  m.def("max_pool2d_forward_cpu", &genkern::cpu::max_pool2d_forward_cpu);
  m.def("max_pool2d_backward_cpu", &genkern::cpu::max_pool2d_backward_cpu);
  m.def("avg_pool2d_forward_cpu", &genkern::cpu::avg_pool2d_forward_cpu);
  m.def("avg_pool2d_backward_cpu", &genkern::cpu::avg_pool2d_backward_cpu);
  m.def("upsample_nearest2d_forward_cpu", &genkern::cpu::upsample_nearest2d_forward_cpu);
  m.def("upsample_nearest2d_backward_cpu", &genkern::cpu::upsample_nearest2d_backward_cpu);
#ifdef GENKERN_WITH_CUDA
  m.def("conv2d_act_forward_cuda", &genkern::cuda::conv2d_act_forward_cuda);
  m.def("conv2d_act_backward_cuda", &genkern::cuda::conv2d_act_backward_cuda);
  // transposed conv and linear (+ activation)
  m.def("conv_transpose2d_act_forward_cuda", &genkern::cuda::conv_transpose2d_act_forward_cuda);
  m.def("conv_transpose2d_act_backward_cuda", &genkern::cuda::conv_transpose2d_act_backward_cuda);
  m.def("linear_act_forward_cuda", &genkern::cuda::linear_act_forward_cuda);
  m.def("linear_act_backward_cuda", &genkern::cuda::linear_act_backward_cuda);
  // losses
  m.def("gan_loss_cuda", &genkern::cuda::gan_loss_cuda);
  m.def("vae_loss_cuda", &genkern::cuda::vae_loss_cuda);
  m.def("reparameterize_cuda", &genkern::cuda::reparameterize_cuda);
  // batch_norm + activation, pooling, upsampling
  m.def("batch_norm_stats_cuda", &genkern::cuda::batch_norm_stats_cuda);
  m.def("batch_norm_apply_cuda", &genkern::cuda::batch_norm_apply_cuda);
  m.def("batch_norm_backward_reduce_cuda", &genkern::cuda::batch_norm_backward_reduce_cuda);
  m.def("batch_norm_backward_apply_cuda", &genkern::cuda::batch_norm_backward_apply_cuda);
  m.def("max_pool2d_forward_cuda", &genkern::cuda::max_pool2d_forward_cuda);
  m.def("max_pool2d_backward_cuda", &genkern::cuda::max_pool2d_backward_cuda);
  m.def("avg_pool2d_forward_cuda", &genkern::cuda::avg_pool2d_forward_cuda);
  m.def("avg_pool2d_backward_cuda", &genkern::cuda::avg_pool2d_backward_cuda);
  m.def("upsample_nearest2d_forward_cuda", &genkern::cuda::upsample_nearest2d_forward_cuda);
  m.def("upsample_nearest2d_backward_cuda", &genkern::cuda::upsample_nearest2d_backward_cuda);
#endif
}
