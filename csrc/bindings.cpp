// genkern._C: the C++ (and, when built with CUDA, CUDA) entry points, bound with pybind11.
#include <torch/extension.h>

#include "cpu/conv2d_act.h"
#include "cpu/conv_transpose2d_act.h"
#include "cpu/linear_act.h"
#include "genkern/activation.h"

#ifdef GENKERN_WITH_CUDA
#include "cuda/conv2d_act_cuda.h"
#include "cuda/conv_transpose2d_act_cuda.h"
#include "cuda/linear_act_cuda.h"
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
#ifdef GENKERN_WITH_CUDA
  m.def("conv2d_act_forward_cuda", &genkern::cuda::conv2d_act_forward_cuda);
  m.def("conv2d_act_backward_cuda", &genkern::cuda::conv2d_act_backward_cuda);
  // transposed conv and linear (+ activation)
  m.def("conv_transpose2d_act_forward_cuda", &genkern::cuda::conv_transpose2d_act_forward_cuda);
  m.def("conv_transpose2d_act_backward_cuda", &genkern::cuda::conv_transpose2d_act_backward_cuda);
  m.def("linear_act_forward_cuda", &genkern::cuda::linear_act_forward_cuda);
  m.def("linear_act_backward_cuda", &genkern::cuda::linear_act_backward_cuda);
#endif
}
