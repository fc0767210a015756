// Gradients by stock's composite: where a fused op's backward must be differentiable
// (create_graph=True: a gradient penalty, an unrolled GAN, consensus optimization) or runs on
// batched gradients (vmap), the op's stock composite is recomputed from its saved inputs and
// differentiated by autograd (genkern/ops/_fused.differentiable_grads, the Python twin).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/function.h>

#include <functional>
#include <vector>

namespace genkern::cpu {

// grad, requiring a gradient where with create_graph=True it does not (a gradient constant in
// the op's inputs, as a frozen conv's input gradient is): stock's backward ops return gradients
// that do, so a gradient penalty's backward through one runs (where it would raise).
at::Tensor differentiable(at::Tensor grad);

// An input kept for the composite, with its version at the forward: the first-order backward,
// which reads none, runs after an in-place change of it, the composite refuses then (as stock's
// saved tensors do). Cheaper than a SavedVariable (1-2 us a D loss of 4096 logits, measured).
// genkern/ops/_fused.KeptInputs is the Python twin.
struct KeptInput {
  at::Tensor tensor;
  uint32_t version = 0;
  bool released = false;

  KeptInput() = default;
  explicit KeptInput(const at::Tensor& t);
  at::Tensor unpack() const;  // refuses a changed or released one in stock's words
  void reset() {
    tensor.reset();
    released = true;
  }
};

using Composite =
    std::function<torch::autograd::variable_list(const torch::autograd::variable_list&)>;

// The gradients of outputs = composite(inputs) for the inputs mask asks for (else undefined),
// given the outputs' gradients (an undefined one: nothing flowed into that output; an output
// that needs no gradient, constant in the inputs, adds nothing: found by a fuzz); with
// create_graph=True (grad mode on) as differentiable functions of the inputs and the gradients.
// composite runs on aliases of the inputs: the inner grad's capture there fires none of the
// hooks on the inputs themselves (found by a fuzz: a tensor hook, retain_grad, on a batch norm's
// input ran twice), which fire once, when the gradient returned reaches them. (Not view_as,
// which recomputes a size-1 dim's stride: ATen's float64 conv backward then refused a
// channels_last weight of one output channel, found by a fuzz.)
torch::autograd::variable_list composite_grads(const Composite& composite,
                                               torch::autograd::variable_list inputs,
                                               const std::vector<bool>& mask,
                                               const torch::autograd::variable_list& grads);

}  // namespace genkern::cpu
