// The layout oneDNN runs an NCHW convolution in. Given plain NCHW tensors, oneDNN (through ATen)
// reorders them to its blocked layout and may pick another implementation than for the same call
// in channels_last: on this project's AVX-512 Xeons the DCGAN discriminator's 64 -> 128 4x4
// stride-2 conv backward takes 49 ms in NCHW and 33 ms in channels_last, the generator's
// 128 -> 64 transposed conv forward 35 ms and 20 ms; on other layers NCHW wins. So an NCHW call
// may run on channels_last copies of its inputs, its results copied back to the caller's layouts.
// Which layout a geometry gets is timed on its first call (each layout's best of three, the
// copies included; channels_last must win by 5%), as cudnn.benchmark does, and kept per
// geometry, direction and thread count.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace genkern::cpu {

// GENKERN_CPU_ONEDNN_LAYOUT: 0 never (ATen's layout), 1 auto (timed per geometry), 2 always
// (every eligible NCHW call in channels_last: how the tests run their grids through it).
// Setting it forgets the timed choices.
void set_onednn_layout_mode(int64_t mode);
int64_t onednn_layout_mode();

// Calls that ran in channels_last so far (a test hook), and the timed choices kept.
int64_t onednn_layout_channels_last_calls();
int64_t onednn_layout_choices();
// For tests: how many shapes auto mode has timed since the mode was set.
int64_t onednn_layout_timings();

// at::convolution, run in channels_last where the mode says so for an NCHW float32 call;
// the result in ATen's layout for these arguments either way.
at::Tensor onednn_convolution(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::vector<int64_t>& stride,
                              const std::vector<int64_t>& padding,
                              const std::vector<int64_t>& dilation, bool transposed,
                              const std::vector<int64_t>& output_padding, int64_t groups);

// at::convolution_backward's input and weight gradients (as need_x / need_w ask; an undefined
// tensor otherwise), likewise, in ATen's layouts for them.
std::tuple<at::Tensor, at::Tensor> onednn_convolution_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool transposed,
    const std::vector<int64_t>& output_padding, int64_t groups, bool need_x, bool need_w);

}  // namespace genkern::cpu
