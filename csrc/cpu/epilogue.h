// Fused epilogues shared by every GEMM-shaped op on the CPU (conv2d, conv_transpose2d, linear):
// the activation after the main loop, and the activation's backward + bias gradient before it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <utility>

namespace genkern::cpu {

// z <- act(z) in place, one pass over the fresh output of a GEMM-shaped op (whose engine has
// already added the bias). When `act_out` (same shape and strides) is given, z is left as the
// pre-activation the backward needs and act(z) goes to *act_out.
void activation_(at::Tensor& z, int64_t activation, double negative_slope,
                 at::Tensor* act_out = nullptr);

// The forward's activation pass over a fresh pre-activation z: {act(z) in z's storage, undefined}
// or, when the backward needs the pre-activation (save_preact), {act(z) in a new tensor, z}.
std::pair<at::Tensor, at::Tensor> activation_epilogue(at::Tensor z, int64_t activation,
                                                      double negative_slope, bool save_preact);

// z <- z + bias (along the last of its two dims) and act(.), as activation_ does (act_out: z keeps
// the pre-activation), in one pass where the activation's math is ours (identity, relu,
// leaky_relu on a contiguous [rows, N] z); an add, then activation_, otherwise.
void bias_activation_(at::Tensor& z, const at::Tensor& bias, int64_t activation,
                      double negative_slope, at::Tensor* act_out = nullptr);

// g = act_backward(grad_y, saved) in one pass, with the bias gradient (sum of g over every dim
// but 1) reduced in the same pass when need_bias_grad. Deterministic: fixed chunking, ordered sums.
// may_overwrite: grad_y is the caller's alone (see sole_owner), so g may be written over it.
std::tuple<at::Tensor, at::Tensor> act_backward_bias_grad(const at::Tensor& grad_y,
                                                          const std::optional<at::Tensor>& saved,
                                                          int64_t activation, double negative_slope,
                                                          bool need_bias_grad,
                                                          bool may_overwrite = false);

// Whether t is held by nobody but the caller's one reference (no other tensor, view or storage
// reference, no autograd history): a gradient an autograd Function's backward was handed by
// move, which it may then overwrite instead of allocating another of its size.
bool sole_owner(const at::Tensor& t);

}  // namespace genkern::cpu
