// A tensor's place in the autograd graph, kept by a node that keeps a value of the tensor but not
// the tensor itself (a batch norm keeping its output in its input's place, a conv recomputing its
// input from the batch norm before it): with create_graph=True, the backward's graph must reach
// the tensor's producers, so a second derivative flows on into them.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/edge.h>

namespace genkern::cpu {

struct InputEdge : torch::CustomClassHolder {
  torch::autograd::Edge edge;  // t's grad_fn and output number, or a leaf's accumulator
};

// t's edge, as a capsule for a node's saved_data; None where t needs no gradient.
c10::IValue input_edge(const at::Tensor& t);

// value (t's value, recovered) with t's edge: autograd sends its gradient to t's producers. The
// value alone, detached, where t needed no gradient.
at::Tensor reattached(const at::Tensor& value, const c10::IValue& edge);

}  // namespace genkern::cpu
