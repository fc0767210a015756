#include "col2im_path.h"

#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/slow_conv_transpose2d.h>

#include <algorithm>
#include <atomic>

#include "conv_geometry.h"
#include "head_convt.h"
#include "layout_copy.h"
#include "path_mode.h"

namespace genkern::cpu {
namespace {

// genkern/ops/_col2im.py sets it from GENKERN_CPU_COL2IM when genkern.ops is imported
std::atomic<int64_t> g_mode{static_cast<int64_t>(Col2imMode::kAuto)};

}  // namespace

void set_col2im_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "col2im");
}

int64_t col2im_mode() { return g_mode.load(); }

bool use_col2im(const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  const auto mode = static_cast<Col2imMode>(g_mode.load(std::memory_order_relaxed));
  if (mode == Col2imMode::kNever || groups != 1 || x.dim() != 4 || x.numel() == 0 ||
      weight.numel() == 0)
    return false;
  const auto dtype = x.scalar_type();
  if (mode == Col2imMode::kAlways) return dtype == at::kFloat || dtype == at::kDouble;
  // the measured rule: 1 output channel from 32 or more, or 2-3 from 64 or more (4 output
  // channels already lose on some stride-1 shapes, 3 from 16-32 on most)
  const int64_t in = weight.size(0), out = weight.size(1);
  return dtype == at::kFloat && (out == 1 ? in >= 32 : (out <= 3 && in >= 64));
}

at::Tensor conv_transpose2d_col2im(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias,
                                   const std::vector<int64_t>& stride,
                                   const std::vector<int64_t>& padding,
                                   const std::vector<int64_t>& output_padding,
                                   const std::vector<int64_t>& dilation) {
  const auto fmt = conv_output_format(x, weight);
  if (use_head_convt(x, weight, 1, stride, padding, output_padding, dilation))
    return head_conv_transpose2d(x, weight, bias, stride, padding, output_padding, fmt);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  at::Tensor y = at::slow_conv_transpose2d(x.contiguous(fmt), weight.contiguous(fmt),
                                           {weight.size(2), weight.size(3)}, b, stride, padding,
                                           output_padding, dilation);
  return contiguous_as(y, fmt);
}

at::Tensor conv2d_input_grad_col2im(const at::Tensor& g, const at::Tensor& x,
                                    const at::Tensor& weight, const std::vector<int64_t>& stride,
                                    const std::vector<int64_t>& padding,
                                    const std::vector<int64_t>& dilation) {
  // the transposed conv's output_padding that lands exactly on x's size (always < stride)
  const std::vector<int64_t> output_padding =
      input_grad_output_padding(g, x, weight, stride, padding, dilation);
  for (int i = 0; i < 2; ++i) {
    if (output_padding[i] < 0 || output_padding[i] >= std::max(stride[i], dilation[i]))
      return std::get<0>(at::convolution_backward(g, x, weight, std::nullopt, stride, padding,
                                                  dilation, /*transposed=*/false, {0, 0}, 1,
                                                  {true, false, false}));
  }
  at::Tensor gx = conv_transpose2d_col2im(g, weight, std::nullopt, stride, padding,
                                          output_padding, dilation);
  const auto fmt = conv_output_format(x, weight);
  return contiguous_as(gx, fmt);
}

}  // namespace genkern::cpu
