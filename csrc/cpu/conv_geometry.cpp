#include "conv_geometry.h"

#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>

namespace genkern::cpu {

int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                         int64_t dilation) {
  const int64_t reach = in + 2 * padding - dilation * (kernel - 1);
  return reach > 0 ? (reach - 1) / stride + 1 : 0;
}

int64_t transposed_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                               int64_t output_padding, int64_t dilation) {
  return (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1;
}

std::vector<int64_t> input_grad_output_padding(const at::Tensor& g, const at::Tensor& x,
                                               const at::Tensor& weight,
                                               const std::vector<int64_t>& stride,
                                               const std::vector<int64_t>& padding,
                                               const std::vector<int64_t>& dilation) {
  std::vector<int64_t> output_padding(2);
  for (int i = 0; i < 2; ++i) {
    output_padding[i] = x.size(i + 2) - transposed_output_size(g.size(i + 2), weight.size(i + 2),
                                                               stride[i], padding[i], 0,
                                                               dilation[i]);
  }
  return output_padding;
}

bool has_empty_output(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                      const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                      const std::vector<int64_t>& output_padding,
                      const std::vector<int64_t>& dilation) {
  if (x.dim() != 4) return false;
  for (int i = 0; i < 2; ++i) {
    const int64_t in = x.size(i + 2), k = weight.size(i + 2), s = stride[i], p = padding[i];
    const int64_t d = dilation[i];
    if (p == 0 && !transposed) continue;  // every window starts inside the input
    const int64_t out = transposed ? transposed_output_size(in, k, s, p, output_padding[i], d)
                                   : conv_output_size(in, k, s, p, d);
    for (int64_t o = 0; o < out; ++o) {
      bool tap = false;
      for (int64_t j = 0; j < k && !tap; ++j) {
        if (transposed) {  // o = ii * s - p + j * d for an input ii
          const int64_t t = o + p - j * d;
          tap = t >= 0 && t % s == 0 && t / s < in;
        } else {  // input o * s - p + j * d
          const int64_t ii = o * s - p + j * d;
          tap = ii >= 0 && ii < in;
        }
      }
      if (!tap) return true;
    }
  }
  return false;
}

bool run_16bit_in_float32(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                          const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                          const std::vector<int64_t>& output_padding,
                          const std::vector<int64_t>& dilation) {
  const auto t = x.scalar_type();
  return (t == at::kBFloat16 || t == at::kHalf) &&
         has_empty_output(transposed, x, weight, stride, padding, output_padding, dilation);
}

at::Tensor convolution_in_float32(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias,
                                  const std::vector<int64_t>& stride,
                                  const std::vector<int64_t>& padding,
                                  const std::vector<int64_t>& dilation, bool transposed,
                                  const std::vector<int64_t>& output_padding, int64_t groups) {
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->to(at::kFloat);
  return at::convolution(x.to(at::kFloat), weight.to(at::kFloat), b, stride, padding, dilation,
                         transposed, output_padding, groups)
      .to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> convolution_backward_in_float32(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool transposed,
    const std::vector<int64_t>& output_padding, int64_t groups, bool need_x, bool need_w) {
  auto [gx, gw, unused] = at::convolution_backward(
      g.to(at::kFloat), x.to(at::kFloat), weight.to(at::kFloat), std::nullopt, stride, padding,
      dilation, transposed, output_padding, groups, {need_x, need_w, false});
  return {need_x ? gx.to(x.scalar_type()) : gx, need_w ? gw.to(weight.scalar_type()) : gw};
}

at::MemoryFormat conv_output_format(const at::Tensor& x, const at::Tensor& w) {
  const bool cl = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                  w.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace genkern::cpu
