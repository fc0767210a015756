// Activation math, written once for C++ host code and CUDA device code.
//
// The backward is expressed in terms of one saved tensor: the activation's output where the
// derivative is a function of it (relu, leaky_relu with slope >= 0, tanh, sigmoid), otherwise the
// pre-activation (silu, leaky_relu with a negative slope). `saves_output` is the single rule; the
// Python mirror is genkern/activations.py and the Triton mirror genkern/triton/activations.py.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GK_HOST_DEVICE inline
#endif

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

template <typename T>
GK_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// y = act(x). NaN propagates as in torch (relu(NaN) = NaN).
template <typename T>
GK_HOST_DEVICE T act_forward(Activation act, T x, T slope) {
  switch (act) {
    case Activation::kRelu:
      return x < T(0) ? T(0) : x;
    case Activation::kLeakyRelu:
      return x > T(0) ? x : x * slope;
    case Activation::kTanh:
      return tanh(x);
    case Activation::kSigmoid:
      return sigmoid(x);
    case Activation::kSilu:
      return x * sigmoid(x);
    default:
      return x;
  }
}

// grad * act'(x), from the saved tensor s (see saves_output). Same formulas and NaN behaviour as
// torch's backward kernels (threshold_backward: s <= 0 -> 0 even for a NaN grad).
template <typename T>
GK_HOST_DEVICE T act_backward(Activation act, T grad, T s, T slope) {
  switch (act) {
    case Activation::kRelu:
      return s <= T(0) ? T(0) : grad;
    case Activation::kLeakyRelu:
      return s > T(0) ? grad : grad * slope;
    case Activation::kTanh:
      return grad * (T(1) - s * s);
    case Activation::kSigmoid:
      return grad * ((T(1) - s) * s);
    case Activation::kSilu: {
      T sg = sigmoid(s);
      return grad * (sg * (T(1) + s * (T(1) - sg)));
    }
    default:
      return grad;
  }
}

}  // namespace genkern
