// Whether a tensor is a batched tensor of vmap: torch.func's, or the one autograd.grad's
// is_grads_batched (and jacobian(vectorize=True)) runs a backward with. Its storage is not the
// values' (the kernels cannot read it); ATen's ops see through it.
#pragma once

#include <ATen/core/Tensor.h>

namespace genkern::cpu {

inline bool is_vmap_batched(const at::Tensor& t) {
  if (!t.defined()) return false;
  const auto keys = t.key_set();
  return keys.has(c10::DispatchKey::Batched) || keys.has(c10::DispatchKey::FuncTorchBatched);
}

}  // namespace genkern::cpu
