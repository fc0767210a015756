#include "composite_grads.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/alias.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/autograd.h>

namespace genkern::cpu {

using torch::autograd::variable_list;

at::Tensor differentiable(at::Tensor grad) {
  if (!at::GradMode::is_enabled() || grad.requires_grad()) return grad;
  return grad + at::zeros({}, grad.options()).requires_grad_();
}

KeptInput::KeptInput(const at::Tensor& t) : tensor(t) {
  if (t.defined()) version = t._version();
}

at::Tensor KeptInput::unpack() const {
  TORCH_CHECK(!released,
              "Trying to backward through the graph a second time (or directly access saved "
              "tensors after they have already been freed). Saved intermediate values of the "
              "graph are freed when you call .backward() or autograd.grad(). Specify "
              "retain_graph=True if you need to backward through the graph a second time or if "
              "you need to access saved tensors after calling backward.");
  TORCH_CHECK(!tensor.defined() || tensor._version() == version,
              "one of the variables needed for gradient computation has been modified by an "
              "inplace operation: [",
              tensor.toString(), " ", tensor.sizes(), "] is at version ", tensor._version(),
              "; expected version ", version, " instead");
  return tensor;
}

variable_list composite_grads(const Composite& composite, variable_list inputs,
                              const std::vector<bool>& mask, const variable_list& grads) {
  const bool create_graph = at::GradMode::is_enabled();
  variable_list outputs;
  {
    at::AutoGradMode enable_grad(true);
    for (auto& t : inputs)
      if (t.defined() && t.requires_grad()) t = at::alias(t);
    outputs = composite(inputs);
  }
  variable_list ys, gs, wanted;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!grads[i].defined() || !outputs[i].requires_grad()) continue;
    ys.push_back(outputs[i]);
    gs.push_back(grads[i]);
  }
  // an input frozen since the forward gets none, as stock's AccumulateGrad skips it
  std::vector<bool> asked(mask);
  for (size_t i = 0; i < inputs.size(); ++i) {
    asked[i] = asked[i] && inputs[i].defined() && inputs[i].requires_grad();
    if (asked[i]) wanted.push_back(inputs[i]);
  }
  variable_list out(inputs.size());
  if (wanted.empty() || ys.empty()) return out;
  const variable_list g =
      torch::autograd::grad(ys, wanted, gs, std::nullopt, create_graph, /*allow_unused=*/true);
  for (size_t i = 0, k = 0; i < inputs.size(); ++i) {
    if (!asked[i]) continue;
    out[i] = differentiable(g[k].defined() ? g[k] : at::zeros_like(inputs[i]));
    ++k;
  }
  return out;
}

}  // namespace genkern::cpu
