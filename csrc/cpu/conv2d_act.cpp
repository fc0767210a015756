// conv2d + bias + activation on the CPU.
// Main loop: ATen's convolution (oneDNN), the best CPU conv engine there is, which also adds the
// bias inside its fp32 accumulators (free, and one rounding in bf16/fp16 instead of two). Ours:
// the activation in one in-place pass over the fresh output (no extra allocation, unlike stock's
// out-of-place activation), and the backward's prologue (activation backward + bias gradient in one
// pass over grad_y), after which one convolution_backward call computes only the gradients asked
// for. The input gradient of a conv from few channels (an image's 1-3) is a transposed conv onto
// few channels, which goes through the few-channel path instead (see col2im_path.h); a conv onto
// 384+ channels over a few output pixels runs as batched GEMMs (see conv_gemm.h), and one whose
// kernel covers its whole input as a dense layer (dense_order, linear_act.h).
#include "conv2d_act.h"

#include <ATen/ops/empty_like.h>

#include <optional>

#include "col2im_path.h"
#include "conv_gemm.h"
#include "conv_wgrad.h"
#include "conv_geometry.h"
#include "epilogue.h"
#include "linear_act.h"
#include "onednn_layout.h"
#include "stem_conv.h"
#include "winograd_s2.h"

namespace genkern::cpu {
namespace {

int64_t output_pixels(const at::Tensor& x, const at::Tensor& weight,
                      const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                      const std::vector<int64_t>& dilation) {
  int64_t pixels = 1;
  for (int i = 0; i < 2; ++i)
    pixels *= conv_output_size(x.size(i + 2), weight.size(i + 2), stride[i], padding[i],
                               dilation[i]);
  return pixels;
}

// A conv whose kernel covers its whole unpadded input (one output pixel: a DCGAN discriminator's
// last layer, 256 -> 1 over 4x4) is a dense layer over the flattened input, [N, C_in kH kW] x
// [C_in kH kW, C_out], when x and the weight lie in the same order (both NCHW or both
// channels_last: then both flatten as views). 64 x 256 x 4 x 4 -> 1 on a 2-core Xeon: forward
// 282 -> 11 us, forward + backward 1127 -> 222 us (oneDNN -> the dense layer's linear_act.h).
// The order they flatten in (true: channels_last's, h w c), or none for another conv.
std::optional<bool> dense_order(const at::Tensor& x, const at::Tensor& weight,
                                const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation, int64_t groups) {
  const auto dtype = x.scalar_type();
  if (x.dim() != 4 || weight.dim() != 4 || groups != 1 || x.numel() == 0 ||
      weight.numel() == 0 || (dtype != at::kFloat && dtype != at::kDouble) ||
      weight.scalar_type() != dtype)
    return std::nullopt;
  for (int i = 0; i < 2; ++i)
    if (padding[i] != 0 || dilation[i] != 1 || x.size(i + 2) != weight.size(i + 2))
      return std::nullopt;
  if (x.is_contiguous() && weight.is_contiguous()) return false;
  const auto cl = at::MemoryFormat::ChannelsLast;
  if (x.is_contiguous(cl) && weight.is_contiguous(cl)) return true;
  return std::nullopt;
}

// t [rows, C, H, W] as the [rows, C H W] matrix of the dense layer (a view): in (c, h, w) order,
// or in (h, w, c) order when it is channels_last and `hwc`.
at::Tensor flat(const at::Tensor& t, bool hwc) {
  return hwc ? t.permute({0, 2, 3, 1}).reshape({t.size(0), -1}) : t.reshape({t.size(0), -1});
}

// m [rows, C H W] back to `like`'s sizes and layout (a view)
at::Tensor unflat(const at::Tensor& m, const at::Tensor& like, bool hwc) {
  const int64_t n = like.size(0), c = like.size(1), h = like.size(2), w = like.size(3);
  return hwc ? m.view({n, h, w, c}).permute({0, 3, 1, 2}) : m.view(like.sizes());
}

// y [N, C_out] as the conv's output [N, C_out, 1, 1], with the strides ATen gives it in format fmt
at::Tensor as_conv_output(const at::Tensor& y, at::MemoryFormat fmt) {
  if (!y.defined()) return y;
  const int64_t n = y.size(0), c = y.size(1);
  return fmt == at::MemoryFormat::ChannelsLast ? y.as_strided({n, c, 1, 1}, {c, 1, c, c})
                                               : y.as_strided({n, c, 1, 1}, {c, 1, 1, 1});
}

// grad_x and grad_w of conv2d(x, weight) from g (each undefined unless its need_* is set) on the
// paths other than Winograd's.
std::pair<at::Tensor, at::Tensor> direct_grads(const at::Tensor& g, const at::Tensor& x,
                                               const at::Tensor& weight,
                                               const std::vector<int64_t>& stride,
                                               const std::vector<int64_t>& padding,
                                               const std::vector<int64_t>& dilation,
                                               int64_t groups, bool need_x, bool need_w) {
  std::array<bool, 2> output_mask = {need_x, need_w};
  at::Tensor grad_x, grad_w;
  if ((output_mask[0] || output_mask[1]) &&
      run_16bit_in_float32(false, x, weight, stride, padding, {0, 0}, dilation)) {
    std::tie(grad_x, grad_w) =
        convolution_backward_in_float32(g, x, weight, stride, padding, dilation,
                                        /*transposed=*/false, {0, 0}, groups, output_mask[0],
                                        output_mask[1]);
    return {grad_x, grad_w};
  }
  if ((output_mask[0] || output_mask[1]) &&
      use_conv2d_gemm(x, weight, groups, g.size(2) * g.size(3))) {
    std::tie(grad_x, grad_w) = conv2d_gemm_backward(g, x, weight, stride, padding, dilation,
                                                    output_mask[0], output_mask[1]);
    return {grad_x, grad_w};
  }
  const bool col2im = output_mask[0] && use_col2im(g, weight, groups);
  if (output_mask[1] && use_stem_conv(x, weight, groups)) {
    grad_w = std::get<0>(stem_conv2d_param_grads(g, std::nullopt, x, weight, stride, padding,
                                                 dilation, /*identity*/ 0, 0.0, false));
    output_mask[1] = false;
  }
  if (output_mask[1] && use_conv_wgrad(x, g, groups)) {
    grad_w = conv2d_weight_grad_avx2(x, g, weight.size(2), weight.size(3), stride, padding,
                                     dilation)
                 .contiguous(conv_output_format(x, weight));  // ATen's layout for it
    output_mask[1] = false;
  }
  if ((output_mask[0] && !col2im) || output_mask[1]) {
    at::Tensor aten_grad_w;
    std::tie(grad_x, aten_grad_w) = onednn_convolution_backward(
        g, x, weight, stride, padding, dilation, /*transposed=*/false, /*output_padding=*/{0, 0},
        groups, output_mask[0] && !col2im, output_mask[1]);
    if (output_mask[1]) grad_w = aten_grad_w;
  }
  if (col2im) grad_x = conv2d_input_grad_col2im(g, x, weight, stride, padding, dilation);
  return {grad_x, grad_w};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv2d_act_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
    int64_t groups, int64_t activation, double negative_slope, bool save_preact) {
  if (const auto hwc = dense_order(x, weight, padding, dilation, groups)) {
    auto [y, z] = linear_act_forward_cpu(flat(x, *hwc), flat(weight, *hwc), bias, activation,
                                         negative_slope, save_preact);
    const auto fmt = conv_output_format(x, weight);
    return {as_conv_output(y, fmt), as_conv_output(z, fmt)};
  }
  const bool stem = use_stem_conv(x, weight, groups);
  // relu / leaky_relu in the stem kernel's registers unless the pre-activation is kept too
  const bool fused = stem && !save_preact && stem_conv_fuses(activation);
  // undefined unless it runs by Winograd (and met only finite values, see winograd_s2.h)
  at::Tensor z =
      !stem && use_winograd_s2(x, weight, stride, padding, dilation, groups, false)
          ? winograd_s2_conv2d(x, weight, bias, conv_output_size(x.size(2), 4, 2, 1, 1),
                               conv_output_size(x.size(3), 4, 2, 1, 1),
                               conv_output_format(x, weight))
          : at::Tensor();
  if (!z.defined())
    z = stem ? stem_conv2d(x, weight, bias, stride, padding, dilation, fused ? activation : 0,
                         negative_slope)
      : run_16bit_in_float32(false, x, weight, stride, padding, {0, 0}, dilation)  // see the header
          ? convolution_in_float32(x, weight, bias, stride, padding, dilation,
                                   /*transposed=*/false, {0, 0}, groups)
      : use_conv2d_gemm(x, weight, groups, output_pixels(x, weight, stride, padding, dilation))
          ? conv2d_gemm(x, weight, bias, stride, padding, dilation)
          : onednn_convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/false,
                               /*output_padding=*/{0, 0}, groups);
  if (fused) return {z, at::Tensor()};
  return activation_epilogue(z, activation, negative_slope, save_preact);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_act_backward_cpu(
    at::Tensor grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> dilation, int64_t groups, int64_t activation, double negative_slope,
    std::array<bool, 3> output_mask) {
  if (const auto hwc = dense_order(x, weight, padding, dilation, groups)) {
    std::optional<at::Tensor> saved2;
    if (saved.has_value() && saved->defined()) saved2 = saved->reshape({saved->size(0), -1});
    auto [gx, gw, gb] =
        linear_act_backward_cpu(grad_y.reshape({grad_y.size(0), -1}), saved2, flat(x, *hwc),
                                flat(weight, *hwc), activation, negative_slope, output_mask);
    return {gx.defined() ? unflat(gx, x, *hwc) : gx,
            gw.defined() ? unflat(gw, weight, *hwc) : gw, gb};
  }
  if (output_mask[1] && !output_mask[0] && use_stem_conv(x, weight, groups)) {
    // a net's first layer: its activation backward and bias gradient run inside the weight
    // gradient's kernel, chunk by chunk (g is never written out whole)
    auto [grad_w, grad_bias] =
        stem_conv2d_param_grads(grad_y, saved, x, weight, stride, padding, dilation, activation,
                                negative_slope, output_mask[2]);
    return {at::Tensor(), grad_w, grad_bias};
  }
  // handed over by move (ConvAct), grad_y takes g in place; else g is new and grad_y is freed
  auto [g, grad_bias] = act_backward_bias_grad(grad_y, saved, activation, negative_slope,
                                               output_mask[2], sole_owner(grad_y));
  grad_y = at::Tensor();
  at::Tensor grad_x, grad_w;
  // a 4x4 stride-2 layer (see winograd_s2.h): grad_x is conv_transpose2d(g, weight) onto x's
  // size; each is undefined where a value is not finite, and then comes from the direct paths
  if (use_winograd_s2(x, weight, stride, padding, dilation, groups, /*transposed=*/false)) {
    const auto fmt = conv_output_format(x, weight);  // ATen's layout for both
    if (output_mask[0])
      grad_x = winograd_s2_conv_transpose2d(g, weight, std::nullopt, x.size(2), x.size(3), fmt);
    if (output_mask[1])
      grad_w = winograd_s2_conv2d_weight_grad(x, g, fmt);
  }
  auto [direct_x, direct_w] =
      direct_grads(g, x, weight, stride, padding, dilation, groups,
                   output_mask[0] && !grad_x.defined(), output_mask[1] && !grad_w.defined());
  return {grad_x.defined() ? grad_x : direct_x, grad_w.defined() ? grad_w : direct_w,
          grad_bias};
}

}  // namespace genkern::cpu
