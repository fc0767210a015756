// What batch_norm_act.cpp and its two slab translation units share: the slab kernels' constants
// and the list of every instantiation the glue calls. Each slab build (baseline and AVX2, see
// batch_norm_act_slabs.h) is compiled in a translation unit of its own, which instantiates the
// list; batch_norm_act.cpp declares the same list extern: the three compile side by side.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "genkern/activation.h"

// Whether the AVX2 build exists (GCC on x86-64: its target pragma); elsewhere slabs_avx2 names
// the baseline build.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GK_SLABS_AVX2 1
#else
#define GK_SLABS_AVX2 0
#endif

namespace genkern::cpu {

constexpr int kLanes = 16;  // independent accumulators: the loops vectorize without -ffast-math
// Where the backward reads act's input sign and x - mean from (batch_norm_act_slabs.h): the saved
// tensor and x; x alone (recomputing the sign); or act's output y alone, read in x's place.
constexpr int kSaved = 0, kRecompute = 1, kOutput = 2;

// Whether the glue dispatches backward mode R for activation A (no code is built for the rest).
template <Activation A, int R>
constexpr bool backward_mode_exists() {
  if constexpr (R == kRecompute) return A == Activation::kRelu || A == Activation::kLeakyRelu;
  if constexpr (R == kOutput) return A == Activation::kLeakyRelu;
  return true;
}

}  // namespace genkern::cpu

// GK_SLAB_INSTANCES(extern) declares, GK_SLAB_INSTANCES() defines, the instantiations in namespace
// genkern::cpu::GK_SLABS_NS: every dtype (with its opmath type), affine's three activations
// (exp-based ones run an identity affine pass), and each backward mode the glue dispatches
// (identity: kSaved, which reads no saved tensor; kRecompute: relu and leaky_relu; kOutput:
// leaky_relu only).
#define GK_SLAB_INSTANCES(EXT)            \
  GK_SLAB_TYPE(EXT, float, float)         \
  GK_SLAB_TYPE(EXT, double, double)       \
  GK_SLAB_TYPE(EXT, c10::BFloat16, float) \
  GK_SLAB_TYPE(EXT, c10::Half, float)

#define GK_SLAB_NS_ genkern::cpu::GK_SLABS_NS
#define GK_SLAB_A_(A) genkern::Activation::A
#define GK_SLAB_R_(R) genkern::cpu::R

#define GK_SLAB_TYPE(EXT, T, O)                                                             \
  EXT template void GK_SLAB_NS_::stats<T, O>(const T*, int64_t, int64_t, int64_t, int64_t,  \
                                             const O*, O*, O*);                             \
  GK_SLAB_AFFINE(EXT, kIdentity, T, O)                                                      \
  GK_SLAB_AFFINE(EXT, kRelu, T, O)                                                          \
  GK_SLAB_AFFINE(EXT, kLeakyRelu, T, O)                                                     \
  GK_SLAB_GRADS(EXT, kIdentity, kSaved, T, O)                                              \
  GK_SLAB_GRADS(EXT, kRelu, kSaved, T, O)                                                   \
  GK_SLAB_GRADS(EXT, kRelu, kRecompute, T, O)                                               \
  GK_SLAB_GRADS(EXT, kLeakyRelu, kSaved, T, O)                                              \
  GK_SLAB_GRADS(EXT, kLeakyRelu, kRecompute, T, O)                                          \
  GK_SLAB_GRADS(EXT, kLeakyRelu, kOutput, T, O)                                             \
  GK_SLAB_GRADS(EXT, kTanh, kSaved, T, O)                                                   \
  GK_SLAB_GRADS(EXT, kSigmoid, kSaved, T, O)                                                \
  GK_SLAB_GRADS(EXT, kSilu, kSaved, T, O)

#define GK_SLAB_AFFINE(EXT, A, T, O)                                                        \
  EXT template void GK_SLAB_NS_::affine<GK_SLAB_A_(A), T, O>(                               \
      const T*, T*, T*, int64_t, int64_t, int64_t, int64_t, const O*, const O*, const O*, O);

#define GK_SLAB_GRADS(EXT, A, R, T, O)                                                      \
  EXT template void GK_SLAB_NS_::grad_sums<GK_SLAB_A_(A), GK_SLAB_R_(R), T, O>(             \
      const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, const O*, const O*, \
      const O*, O, O*, O*);                                                                 \
  EXT template void GK_SLAB_NS_::row_grad_sums<GK_SLAB_A_(A), GK_SLAB_R_(R), T, O>(         \
      const T*, const T*, const T*, int64_t, int64_t, int64_t, const O*, const O*, const O*, \
      O, O*, O*);                                                                           \
  GK_SLAB_APPLY(EXT, A, R, true, T, O)                                                      \
  GK_SLAB_APPLY(EXT, A, R, false, T, O)

#define GK_SLAB_APPLY(EXT, A, R, TRAIN, T, O)                                               \
  EXT template void GK_SLAB_NS_::grad_apply<GK_SLAB_A_(A), GK_SLAB_R_(R), TRAIN, T, O>(     \
      const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, const O*,       \
      const O*, const O*, const O*, const O*, const O*, O);                                 \
  EXT template void GK_SLAB_NS_::row_grad_apply<GK_SLAB_A_(A), GK_SLAB_R_(R), TRAIN, T, O>( \
      const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, const O*, const O*,      \
      const O*, const O*, const O*, const O*, O);
