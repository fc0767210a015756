#include "input_edge.h"

#include <torch/csrc/autograd/variable.h>

namespace genkern::cpu {

c10::IValue input_edge(const at::Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return c10::IValue();
  auto held = c10::make_intrusive<InputEdge>();
  held->edge = torch::autograd::impl::gradient_edge(t);
  return c10::IValue::make_capsule(std::move(held));
}

at::Tensor reattached(const at::Tensor& value, const c10::IValue& edge) {
  if (!edge.isCapsule()) return value.detach();
  const auto held = c10::static_intrusive_pointer_cast<InputEdge>(edge.toCapsule());
  at::Tensor v = value.detach();
  torch::autograd::impl::set_gradient_edge(v, held->edge);
  return v;
}

}  // namespace genkern::cpu
