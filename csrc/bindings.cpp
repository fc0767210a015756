// genkern._C: the C++ (and, when built with CUDA, CUDA) entry points, bound with pybind11.
#include <torch/extension.h>

#include "cpu/conv2d_act.h"
// issue 4: batch_norm + activation, pooling, upsampling
#include "cpu/batch_norm_act.h"
#include "cpu/pool.h"
#include "genkern/activation.h"

#ifdef GENKERN_WITH_CUDA
#include "cuda/conv2d_act_cuda.h"
#include "cuda/norm_pool_cuda.h"  // issue 4
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
  // issue 4: batch_norm + activation, pooling, upsampling
  m.def("batch_norm_act_forward_cpu", &genkern::cpu::batch_norm_act_forward_cpu);
  m.def("batch_norm_act_backward_cpu", &genkern::cpu::batch_norm_act_backward_cpu);
  m.def("max_pool2d_forward_cpu", &genkern::cpu::max_pool2d_forward_cpu);
  m.def("max_pool2d_backward_cpu", &genkern::cpu::max_pool2d_backward_cpu);
  m.def("avg_pool2d_forward_cpu", &genkern::cpu::avg_pool2d_forward_cpu);
  m.def("avg_pool2d_backward_cpu", &genkern::cpu::avg_pool2d_backward_cpu);
  m.def("upsample_nearest2d_forward_cpu", &genkern::cpu::upsample_nearest2d_forward_cpu);
  m.def("upsample_nearest2d_backward_cpu", &genkern::cpu::upsample_nearest2d_backward_cpu);
#ifdef GENKERN_WITH_CUDA
  m.def("conv2d_act_forward_cuda", &genkern::cuda::conv2d_act_forward_cuda);
  m.def("conv2d_act_backward_cuda", &genkern::cuda::conv2d_act_backward_cuda);
  // issue 4: batch_norm + activation, pooling, upsampling
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
