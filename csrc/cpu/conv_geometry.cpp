#include "conv_geometry.h"

namespace genkern::cpu {

bool has_empty_output(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                      const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                      const std::vector<int64_t>& output_padding,
                      const std::vector<int64_t>& dilation) {
  if (x.dim() != 4) return false;
  for (int i = 0; i < 2; ++i) {
    const int64_t in = x.size(i + 2), k = weight.size(i + 2), s = stride[i], p = padding[i];
    const int64_t d = dilation[i];
    if (p == 0 && !transposed) continue;  // every window starts inside the input
    const int64_t out = transposed ? (in - 1) * s - 2 * p + d * (k - 1) + output_padding[i] + 1
                                   : (in + 2 * p - d * (k - 1) - 1) / s + 1;
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

std::optional<at::Tensor> float32_copy(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->to(at::kFloat);
}

}  // namespace genkern::cpu
