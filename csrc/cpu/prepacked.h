// Inference path of conv2d / conv_transpose2d on the CPU backend: packed oneDNN weights.
//
// When a call records no gradient, the weight is reordered once into oneDNN's blocked layout for
// the input shape it meets and kept (keyed by the weight's TensorImpl address and memory, with
// no weak reference to the TensorImpl, which torch.utils.swap_tensors refuses) until it changes;
// later calls of that shape run one oneDNN primitive with the bias and the activation as post-ops
// (relu after it, in genkern's pass: oneDNN's turns NaN into 0). Stock eager reorders the weight
// on every call, which at batch 1 costs as much as the convolution. Weights holding NaN or inf
// stay unpacked (oneDNN skips the taps in the padding). A packed weight is used only while the
// weight's storage (held weakly), data pointer, shapes and strides are the ones packed and its
// values' fingerprint (fingerprint.h, one read of the weight) matches, or for a frozen weight
// (genkern.nn.freeze) its version counter: an optimizer step, load_state_dict, .to() or a write
// through .data repacks. A packed copy is kept only if the weight read the same after packing as
// before (no other thread wrote it meanwhile). Thread-safe; no lock is held while waiting for
// the GIL.
//
// Mode (GENKERN_CPU_PREPACK, set from genkern/ops/_prepacked.py): "auto" (on the first call of a
// geometry, its shapes, strides, dtypes and conv parameters, the paths are timed and the fastest
// kept for every later call of that geometry, whatever the weight's values, as cudnn.benchmark
// does: packing loses on small 3x3 layers, and the batched-GEMM path, a third candidate for
// one-group float32 calls, wins the transposed convs of batch-1 decoders: 64 -> 32 channels 7x7
// -> 14x14 106 -> 55 us; calls over 1 GFLOP and 2000 FLOPs per weight byte keep the regular path
// untimed), "always", or "never".
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <vector>

namespace genkern::cpu {

enum class PrepackMode : int { kNever = 0, kAuto = 1, kAlways = 2 };

// The mode, and whether bfloat16 weights may be packed (CPUs with AVX512-BF16 / AVX-NE-CONVERT).
void set_prepack_mode(int64_t mode, bool bfloat16);
// Whether torch has the oneDNN ops this path calls.
bool prepack_available();
// Marks a weight frozen (or not): its packed copies are then checked by its version counter
// alone, not by a read of its values, so a write through .data goes unseen (genkern.nn.freeze).
void prepack_freeze(const at::Tensor& weight, bool freeze);
// Whether the weight is marked frozen (the mark of a dead tensor at its address is not its).
bool prepack_frozen(const at::Tensor& weight);
// For tests: how many geometries auto mode has timed since the mode was last set.
int64_t prepack_timings();
// For tests: how many weights the cache holds an entry for (dead ones until a sweep).
int64_t prepack_entries();
// For tests: -1 no cache entry for this weight, 0 the regular path was kept, 1 a packed weight,
// 2 the batched-GEMM path was kept, 3 the direct kernels (with their own packed weight), 4 the
// Winograd 3x3 path (winograd_3x3.h, on its transformed weight).
int64_t prepack_state(const at::Tensor& weight);

// A candidate on a weight of its own layout (the direct kernels of stem_conv.h): pack() makes
// that weight once per cache entry, run(packed) the call's result. Empty: no candidate.
struct PackedCandidate {
  std::function<at::Tensor()> pack;
  std::function<at::Tensor(const at::Tensor&)> run;
  bool always = false;  // its own mode says always: kept for every call, untimed
  explicit operator bool() const { return static_cast<bool>(pack); }
};

// act(conv(x) + bias) with no autograd graph, in the layout asked for: the packed path where it
// is eligible and chosen, `gemm()` (the batched-GEMM path of conv_gemm.h, when given: empty where
// it cannot take the call), `direct` or `winograd` (when given) where chosen, else `regular()`
// (the regular kernels' call); all give the same result layout. In auto mode the first call of a
// shape times the candidates; a candidate marked `always` is kept untimed.
at::Tensor conv_inference(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias,
                          const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                          const std::vector<int64_t>& output_padding,
                          const std::vector<int64_t>& dilation, int64_t groups,
                          int64_t activation, double negative_slope, bool channels_last,
                          const std::function<at::Tensor()>& regular,
                          const std::function<at::Tensor()>& gemm,
                          const PackedCandidate& direct = {},
                          const PackedCandidate& winograd = {});

}  // namespace genkern::cpu
