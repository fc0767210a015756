// conv_transpose2d + bias + activation on the CPU: the pattern of conv2d_act.cpp.
// Main loop: ATen's transposed convolution (oneDNN deconvolution), with the bias in its
// accumulators (a 1x1 input: one GEMM instead, see is_gemm; few output channels: ATen's GEMM +
// col2im kernel, see col2im_path.h; many input channels over a small input: one batched GEMM +
// col2im, see conv_gemm.h); ours: the activation in one in-place pass over the fresh output, and
// the backward's prologue (activation backward + bias gradient in one pass over grad_y), then one
// convolution_backward(transposed=true) for only the gradients asked for.
#include "conv_transpose2d_act.h"

#include <ATen/ops/empty_like.h>

#include "col2im_path.h"
#include "conv_geometry.h"
#include "conv_gemm.h"
#include "conv_wgrad.h"
#include "epilogue.h"
#include "layout_copy.h"
#include "onednn_layout.h"
#include "onednn_matmul.h"
#include "stem_conv.h"
#include "winograd_s2.h"

namespace genkern::cpu {
namespace {

// A transposed conv of a 1x1 input with no padding, output_padding or dilation and one group (a
// DCGAN generator's first layer, z -> 4x4) writes each input pixel's kernel footprint once: it is
// one GEMM, [N, C_in] x [C_in, C_out * kH * kW], which oneDNN's deconvolution runs several times
// slower. The columns are ordered as the output's layout (NCHW: c, h, w; channels_last: h, w, c).
bool is_gemm(const at::Tensor& x, const std::vector<int64_t>& padding,
             const std::vector<int64_t>& output_padding, const std::vector<int64_t>& dilation,
             int64_t groups) {
  return x.dim() == 4 && x.size(2) == 1 && x.size(3) == 1 && groups == 1 && padding[0] == 0 &&
         padding[1] == 0 && output_padding[0] == 0 && output_padding[1] == 0 &&
         dilation[0] == 1 && dilation[1] == 1;
}

bool channels_last(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// The weight [C_in, C_out, kH, kW] as a [C_in, columns] matrix in the column order asked for.
at::Tensor weight_matrix(const at::Tensor& weight, bool hwc) {
  const int64_t cin = weight.size(0);
  return hwc ? weight.permute({0, 2, 3, 1}).reshape({cin, -1}) : weight.reshape({cin, -1});
}

// A [N or C_in, columns] matrix back to [.., C_out, kH, kW] (a view).
at::Tensor unflatten(const at::Tensor& m, const at::Tensor& weight, bool hwc) {
  const int64_t cout = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  return hwc ? m.view({m.size(0), kh, kw, cout}).permute({0, 3, 1, 2})
             : m.view({m.size(0), cout, kh, kw});
}

at::Tensor gemm_forward(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  const bool hwc = conv_output_format(x, weight) == at::MemoryFormat::ChannelsLast;
  const at::Tensor x2 = x.reshape({x.size(0), x.size(1)});
  const at::Tensor w2 = weight_matrix(weight, hwc);
  std::optional<at::Tensor> row;
  if (bias.has_value() && bias->defined()) {
    const int64_t taps = weight.size(2) * weight.size(3);
    row = hwc ? bias->repeat({taps}) : bias->repeat_interleave(taps);
  }
  return unflatten(matmul_on_either(x2, w2, row), weight, hwc);
}

// grad_x and grad_w of gemm_forward from the output gradient g.
std::pair<at::Tensor, at::Tensor> gemm_backward(const at::Tensor& g, const at::Tensor& x,
                                                const at::Tensor& weight, bool need_x,
                                                bool need_w) {
  const bool hwc = channels_last(g);
  const at::Tensor g2 = hwc ? g.permute({0, 2, 3, 1}).reshape({g.size(0), -1})
                            : g.reshape({g.size(0), -1});
  at::Tensor gx, gw;
  if (need_x)  // in x's exact strides (its size-1 dims make the layout ambiguous)
    gx = at::empty_like(x).copy_(
        matmul_on_either(g2, weight_matrix(weight, hwc).t()).view(x.sizes()));
  if (need_w) {
    const at::Tensor x2 = x.reshape({x.size(0), x.size(1)});
    gw = unflatten(matmul_on_either(x2.t(), g2), weight, hwc)
             .contiguous(weight.suggest_memory_format());
  }
  return {gx, gw};
}

// grad_x and grad_w of conv_transpose2d(x, weight) from g (each undefined unless its need_* is
// set) on the paths other than Winograd's.
std::pair<at::Tensor, at::Tensor> direct_grads(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& output_padding, const std::vector<int64_t>& dilation,
    int64_t groups, bool need_x, bool need_w) {
  std::array<bool, 2> output_mask = {need_x, need_w};
  at::Tensor grad_x, grad_w;
  if ((output_mask[0] || output_mask[1]) &&
      is_gemm(x, padding, output_padding, dilation, groups)) {
    std::tie(grad_x, grad_w) = gemm_backward(g, x, weight, output_mask[0], output_mask[1]);
  } else if ((output_mask[0] || output_mask[1]) &&
             run_16bit_in_float32(true, x, weight, stride, padding, output_padding, dilation)) {
    std::tie(grad_x, grad_w) =
        convolution_backward_in_float32(g, x, weight, stride, padding, dilation,
                                        /*transposed=*/true, output_padding, groups,
                                        output_mask[0], output_mask[1]);
  } else if ((output_mask[0] || output_mask[1]) && use_conv_gemm(x, weight, groups)) {
    std::tie(grad_x, grad_w) = conv_transpose2d_gemm_backward(
        g, x, weight, stride, padding, dilation, output_mask[0], output_mask[1]);
  } else if ((output_mask[0] || output_mask[1]) && use_stem_conv(g, weight, groups) &&
             stem_conv_lands_on(g, x, weight, stride, padding, dilation)) {
    // onto 1-4 channels (a generator's or decoder's last layer): the backward is a conv from
    // those channels, the stem kernels' case. grad_x = conv2d(g, weight); grad_w = that conv's
    // weight gradient with x as its output gradient (weight [C_in, C_out, ..] read as [out, in])
    if (output_mask[0])
      grad_x = contiguous_as(  // in ATen's layout for it
          stem_conv2d(g, weight, std::nullopt, stride, padding, dilation, 0, 0.0),
          conv_output_format(x, weight));
    if (output_mask[1])  // (in x's and the weight's layout, as ATen's: not g's, a fuzz found)
      grad_w = contiguous_as(std::get<0>(stem_conv2d_param_grads(x, std::nullopt, g, weight,
                                                                 stride, padding, dilation,
                                                                 /*identity*/ 0, 0.0, false)),
                             conv_output_format(x, weight));
  } else if (output_mask[0] || output_mask[1]) {
    if (output_mask[1] && use_conv_wgrad(g, x, groups) &&
        stem_conv_lands_on(g, x, weight, stride, padding, dilation)) {
      // the weight gradient of conv2d(g, weight) with x as its output gradient, as above
      grad_w = conv2d_weight_grad_avx2(g, x, weight.size(2), weight.size(3), stride, padding,
                                       dilation)
                   .contiguous(conv_output_format(x, weight));  // ATen's layout for it
      output_mask[1] = false;
    }
    at::Tensor aten_grad_w;
    if (output_mask[0] || output_mask[1])
      std::tie(grad_x, aten_grad_w) = onednn_convolution_backward(
          g, x, weight, stride, padding, dilation, /*transposed=*/true, output_padding, groups,
          output_mask[0], output_mask[1]);
    if (output_mask[1]) grad_w = aten_grad_w;
  }
  return {grad_x, grad_w};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_act_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> output_padding,
    std::vector<int64_t> dilation, int64_t groups, int64_t activation, double negative_slope,
    bool save_preact) {
  // undefined unless it runs by Winograd (and met only finite values, see winograd_s2.h)
  at::Tensor z = use_winograd_s2(x, weight, stride, padding, dilation, groups, true)
                     ? winograd_s2_conv_transpose2d(x, weight, bias,
                                                    2 * x.size(2) + output_padding[0],
                                                    2 * x.size(3) + output_padding[1],
                                                    conv_output_format(x, weight))
                     : at::Tensor();
  if (!z.defined())
    z = is_gemm(x, padding, output_padding, dilation, groups) ? gemm_forward(x, weight, bias)
      : run_16bit_in_float32(true, x, weight, stride, padding, output_padding, dilation)
          ? convolution_in_float32(x, weight, bias, stride, padding, dilation,
                                   /*transposed=*/true, output_padding, groups)
      : use_col2im(x, weight, groups)
          ? conv_transpose2d_col2im(x, weight, bias, stride, padding, output_padding, dilation)
      : use_conv_gemm(x, weight, groups)
          ? conv_transpose2d_gemm(x, weight, bias, stride, padding, output_padding, dilation)
          : onednn_convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/true,
                               output_padding, groups);
  return activation_epilogue(z, activation, negative_slope, save_preact);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_act_backward_cpu(
    at::Tensor grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> output_padding, std::vector<int64_t> dilation, int64_t groups,
    int64_t activation, double negative_slope, std::array<bool, 3> output_mask) {
  // handed over by move (ConvAct), grad_y takes g in place; else g is new and grad_y is freed
  auto [g, grad_bias] = act_backward_bias_grad(grad_y, saved, activation, negative_slope,
                                               output_mask[2], sole_owner(grad_y));
  grad_y = at::Tensor();
  at::Tensor grad_x, grad_w;
  // a 4x4 stride-2 layer (see winograd_s2.h): grad_x is conv2d(g, weight) onto x's size, grad_w
  // the weight gradient of conv2d(g) with x as its output gradient; each is undefined where a
  // value is not finite, and then comes from the direct paths
  if (use_winograd_s2(x, weight, stride, padding, dilation, groups, /*transposed=*/true)) {
    if (output_mask[0])  // in ATen's layouts for them
      grad_x = winograd_s2_conv2d(g, weight, std::nullopt, x.size(2), x.size(3),
                                  conv_output_format(x, weight));
    if (output_mask[1])
      grad_w = winograd_s2_conv2d_weight_grad(g, x, conv_output_format(x, weight));
  }
  auto [direct_x, direct_w] = direct_grads(g, x, weight, stride, padding, output_padding,
                                           dilation, groups, output_mask[0] && !grad_x.defined(),
                                           output_mask[1] && !grad_w.defined());
  return {grad_x.defined() ? grad_x : direct_x, grad_w.defined() ? grad_w : direct_w,
          grad_bias};
}

}  // namespace genkern::cpu
