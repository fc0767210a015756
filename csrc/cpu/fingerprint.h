// A 64-bit fingerprint of a tensor's bytes: what the packed-weight cache (prepacked.h) checks a
// weight against on every call, since a write through `.data` (EMA updates, old init code)
// changes the values without bumping the weight's version counter.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace genkern::cpu {

// A position-dependent multiply-accumulate hash of t's elements in memory order (t's dense span
// where it is non-overlapping and dense, else a contiguous copy's): equal bytes give equal
// fingerprints; a change of any bits, a permutation or a shift collides with probability ~2^-64.
// One read of t: about 0.1 ms per 8 MB here, against a conv's reorder of the same weight.
uint64_t fingerprint(const at::Tensor& t);

}  // namespace genkern::cpu
