// Fused batch_norm + activation on the CPU: batch statistics in one deterministic two-level pass
// (per-chunk mean / M2 merged with Chan's formula; NCHW with planes of up to 4096 elements: one
// pass of shifted sums slab by slab, see batch_norm_act_slabs.h), the normalization and activation
// in one pass; the backward in one reduction pass + one elementwise pass with the activation's
// backward fused. Results do not depend on the number of threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace genkern::cpu {

// Returns (y, mean, invstd, var, preact). Training: batch statistics (var biased); eval: the
// running statistics (required then). mean/invstd/var are those used to normalize (opmath dtype);
// preact is empty unless save_preact. Running statistics are updated by the caller (Python), from
// mean and var: `momentum` is unused here.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_act_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    int64_t activation, double negative_slope, bool save_preact);

// The per-channel map a forward normalized with, y = act((x - center) * scale + shift), in the
// opmath dtype (center is the returned mean): what batch_norm_act_apply_cpu recomputes y from.
struct BatchNormAffine {
  at::Tensor center, scale, shift;
};

// batch_norm_act_forward_cpu that also hands back its affine map when `affine` is not null.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
batch_norm_act_forward_affine_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    int64_t activation, double negative_slope, bool save_preact, BatchNormAffine* affine);

// The forward's y again from its input x and affine map, bit for bit (the same kernel), in the
// forward's layout: a consumer that keeps x instead of y recomputes y in its backward.
at::Tensor batch_norm_act_apply_cpu(const at::Tensor& x, const BatchNormAffine& affine,
                                    int64_t activation, double negative_slope);

// (grad_x, grad_weight, grad_bias); `training` says whether mean/invstd were batch statistics
// (then grad_x carries the statistics' gradient). Unrequested gradients come back empty.
// x_is_output: `x` holds act's output y instead (see batch_norm_keeps_output), read in x's place.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd,
    bool training, int64_t activation, double negative_slope, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& bias, bool x_is_output);

// Whether the autograd node may keep act's output y alone, not x, the backward reading x - mean
// back from y: ((y > 0 ? y : y / slope) - b) / (w * invstd). y is kept by the next layer anyway,
// so the step holds one tensor fewer per such layer (the conv output before a discriminator's
// batch norm + leaky_relu). Needs training (batch statistics), float32 or float64, leaky_relu
// with a slope >= 1e-3 (invertible, y / slope of a normal number: a float32 slope of 1e-39 gave
// NaN gradients), every |w| >= 0.1 and every |b| <= 10 |w| (y's rounding, relative to y, comes
// back in x - mean times about 1 + |b| / |w|: a bias of 1e3 at w = 0.1 put grad_w 1e-4 off), and
// the batch's statistics var and invstd (per channel) must leave x_hat = (x - mean) * invstd of
// about unit size: var * invstd^2 >= 1/4 (where var is small next to eps, x_hat is too, and the
// same absolute rounding is a larger part of it: std 1e-6 with eps 1e-5 put grad_w 1.4e-4 off).
bool batch_norm_keeps_output(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, bool training,
                             int64_t activation, double negative_slope, const at::Tensor& var,
                             const at::Tensor& invstd);

// x again, by ATen's ops, from y kept in its place (see batch_norm_keeps_output): where the
// backward takes stock's composite (create_graph=True, batched gradients).
at::Tensor batch_norm_input_from_output(const at::Tensor& y,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const at::Tensor& mean, const at::Tensor& invstd,
                                        double negative_slope);

// The conditions of batch_norm_keeps_output that do not depend on the batch.
bool batch_norm_output_invertible(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, bool training,
                                  int64_t activation, double negative_slope);

}  // namespace genkern::cpu
