// Activation math, written once for C++ host code and CUDA device code.
//
// The backward is expressed in terms of one saved tensor: the activation's output where the
// derivative is a function of it (relu, leaky_relu with slope >= 0, tanh, sigmoid), otherwise the
// pre-activation (silu, leaky_relu with a negative slope). `saves_output` is the single rule; the
// Python mirror is genkern/activations.py and the Triton mirror genkern/triton/activations.py.
#pragma once

#include <cmath>

#include "genkern/exp_math.h"  // GK_HOST_DEVICE, exp_full

namespace genkern {

enum class Activation : int {
  kIdentity = 0,
  kRelu = 1,
  kLeakyRelu = 2,
  kTanh = 3,
  kSigmoid = 4,
  kSilu = 5,
};

constexpr int kNumActivations = 6;

// True when the backward needs the activation's output, false when it needs its input.
GK_HOST_DEVICE bool saves_output(Activation act, double negative_slope) {
  switch (act) {
    case Activation::kSilu:
      return false;
    case Activation::kLeakyRelu:
      return negative_slope >= 0;
    default:
      return true;
  }
}

// 1 / (1 + exp(-x)) as r = 1 / (1 + e), e = exp(-|x|) in (0, 1], and e r for x < 0 (no exp of
// a large argument: within 2.5 ulp of float64 on a dense sweep, where 1 / (1 + exp(-x)) gave 4):
// 0 at -inf, 1 at +inf, NaN -> NaN; vectorizable for float on the host.
template <typename T>
GK_HOST_DEVICE T sigmoid(T x) {
  const T e = exp_neg(x < T(0) ? -x : x);
  const T r = T(1) / (T(1) + e);
  return x < T(0) ? e * r : r;
}

// y = act(x), the activation fixed at compile time so loops over it vectorize.
// NaN propagates as in torch (relu(NaN) = NaN).
template <Activation A, typename T>
GK_HOST_DEVICE T act_forward(T x, T slope) {
  if constexpr (A == Activation::kRelu) {
    return x < T(0) ? T(0) : x;
  } else if constexpr (A == Activation::kLeakyRelu) {
    const T neg = x * slope;  // computed unconditionally: a select, not a branch, so it vectorizes
    return x > T(0) ? x : neg;
  } else if constexpr (A == Activation::kTanh) {
    return tanh_full(x);
  } else if constexpr (A == Activation::kSigmoid) {
    return sigmoid(x);
  } else if constexpr (A == Activation::kSilu) {
    return x * sigmoid(x);
  } else {
    return x;
  }
}

// grad * act'(x), from the saved tensor s (see saves_output). Same formulas and NaN behaviour as
// torch's backward kernels (threshold_backward: s <= 0 -> 0 even for a NaN grad).
template <Activation A, typename T>
GK_HOST_DEVICE T act_backward(T grad, T s, T slope) {
  if constexpr (A == Activation::kRelu) {
    return s <= T(0) ? T(0) : grad;  // NaN s passes grad, as torch's threshold_backward
  } else if constexpr (A == Activation::kLeakyRelu) {
    const T neg = grad * slope;
    return s > T(0) ? grad : neg;
  } else if constexpr (A == Activation::kTanh) {
    return grad * (T(1) - s * s);
  } else if constexpr (A == Activation::kSigmoid) {
    return grad * ((T(1) - s) * s);
  } else if constexpr (A == Activation::kSilu) {
    const T sg = sigmoid(s);
    return grad * (sg * (T(1) + s * (T(1) - sg)));
  } else {
    return grad;
  }
}

template <Activation A>
struct ActivationTag {
  static constexpr Activation value = A;
};

// Calls f(ActivationTag<A>{}) for the runtime id `act`: one specialization per activation.
//   dispatch_activation(act, [&](auto tag) { constexpr Activation A = decltype(tag)::value; ... });
template <typename F>
GK_HOST_DEVICE void dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kRelu:
      return f(ActivationTag<Activation::kRelu>{});
    case Activation::kLeakyRelu:
      return f(ActivationTag<Activation::kLeakyRelu>{});
    case Activation::kTanh:
      return f(ActivationTag<Activation::kTanh>{});
    case Activation::kSigmoid:
      return f(ActivationTag<Activation::kSigmoid>{});
    case Activation::kSilu:
      return f(ActivationTag<Activation::kSilu>{});
    default:
      return f(ActivationTag<Activation::kIdentity>{});
  }
}

// Runtime-dispatched forms, for code where the per-element switch does not matter.
template <typename T>
GK_HOST_DEVICE T act_forward(Activation act, T x, T slope) {
  T y = x;
  dispatch_activation(act, [&](auto tag) { y = act_forward<decltype(tag)::value>(x, slope); });
  return y;
}

template <typename T>
GK_HOST_DEVICE T act_backward(Activation act, T grad, T s, T slope) {
  T g = grad;
  dispatch_activation(act,
                      [&](auto tag) { g = act_backward<decltype(tag)::value>(grad, s, slope); });
  return g;
}

}  // namespace genkern
