// genkern._C: the C++ (and, when built with CUDA, CUDA) entry points, bound with pybind11.
#include <torch/extension.h>

#include "cpu/conv2d_act.h"
#include "cpu/losses.h"
#include "cpu/losses_autograd.h"
#include "genkern/activation.h"

#ifdef GENKERN_WITH_CUDA
#include "cuda/conv2d_act_cuda.h"
#include "cuda/losses_cuda.h"
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
  // losses (issue 5)
  m.def("gan_loss_cpu", &genkern::cpu::gan_loss_cpu);
  m.def("vae_loss_cpu", &genkern::cpu::vae_loss_cpu);
  m.def("reparameterize_cpu", &genkern::cpu::reparameterize_cpu);
  m.def("gan_loss_autograd_cpu", &genkern::cpu::gan_loss_autograd_cpu);
  m.def("vae_loss_autograd_cpu", &genkern::cpu::vae_loss_autograd_cpu);
#ifdef GENKERN_WITH_CUDA
  m.def("conv2d_act_forward_cuda", &genkern::cuda::conv2d_act_forward_cuda);
  m.def("conv2d_act_backward_cuda", &genkern::cuda::conv2d_act_backward_cuda);
  // losses (issue 5)
  m.def("gan_loss_cuda", &genkern::cuda::gan_loss_cuda);
  m.def("vae_loss_cuda", &genkern::cuda::vae_loss_cuda);
  m.def("reparameterize_cuda", &genkern::cuda::reparameterize_cuda);
#endif
}
