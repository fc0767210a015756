// A dense tensor seen as [outer, channels, inner], channels at stride `inner`: NCHW-contiguous
// (inner = H*W), channels_last or [M, C] (inner = 1). Used by the torch glue of the CPU and CUDA
// epilogues (not by the torch-free kernels, which take the three sizes).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>

namespace genkern {

struct ChannelView {
  int64_t outer, channels, inner;
};

inline ChannelView channel_view(const at::Tensor& t) {
  const int64_t channels = t.dim() >= 2 ? t.size(1) : t.numel();
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return {t.numel() / std::max<int64_t>(channels, 1), channels, 1};
  }
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), "genkern: epilogue expects a dense tensor");
  const int64_t outer = t.dim() >= 2 ? t.size(0) : 1;
  return {outer, channels, t.numel() / std::max<int64_t>(outer * channels, 1)};
}

}  // namespace genkern
