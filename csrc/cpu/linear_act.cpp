// linear + bias + activation on the CPU: the pattern of conv2d_act.cpp for a plain GEMM.
// Main loop, float32: on AVX-512 CPUs where it wins (use_dot_gemm: batch-1 layers, a long k into
// few outputs) row-by-row dot products of x and W as they lie (dot_gemm.cpp); for other products
// small enough (small_gemm_wins), genkern's own register-tiled GEMM (small_gemm.cpp); both apply
// bias and activation to each block before its store. Otherwise ATen's mm (MKL/oneDNN sgemm),
// then the bias and the activation in one in-place pass over the [M, N] output (16-bit types:
// addmm, the bias inside the GEMM). Backward: activation backward + bias gradient (column sums)
// in one pass over grad_y, then one GEMM per gradient asked for (the small kernel reads g^T
// through strides: no copy), the two side by side on a 2-thread pool.
#include "linear_act.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/core/GradMode.h>

#include "dot_gemm.h"
#include "epilogue.h"
#include "onednn_matmul.h"
#include "small_gemm.h"

namespace genkern::cpu {
namespace {

bool is_f32(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.layout() == at::kStrided;
}

// The forward packs W^T (its rows are strided) on every call, ~0.75 ns a float here: worth it while
// that stays below MKL's fixed cost (~10 us) and is shared by a few rows of x. Measured: packed,
// 1x256 -> 3136 took 3x MKL's gemv and 32x400 -> 120 0.87x; 128x120 -> 84 beat it by 1.2-1.4x.
// On AVX-512 CPUs (a 2-core Xeon) MKL's wider kernel also wins over a long inner dim: 128x400 ->
// 20 ran 0.78x packed (AVX2 tile), 0.92x on MKL, ~1.0x with the AVX-512 tile; 128x120 -> 84 and
// 128x20 -> 400 win packed (AVX-512 tile, hot: 16.5-19 vs stock's 22-25 us, 17-19 vs 46 us).
// Where MKL runs its AVX2 code on an AVX-512 CPU (blas_runs_avx512: AMD's), the AVX2 rule holds.
bool packing_pays(int64_t M, int64_t N, int64_t K) {
  return M >= 8 && N * K <= 16384 && (K <= 128 || !blas_runs_avx512());
}

// out[M, N] = a[M, K] b[K, N] by genkern's small GEMM (small_gemm.h): float32, any strides of a
// and b, out's rows contiguous and out.stride(0) apart; no bias or activation.
void small_mm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  GemmArgs g;
  g.M = a.size(0), g.N = b.size(1), g.K = a.size(1);
  g.A = a.data_ptr<float>(), g.a_rs = a.stride(0), g.a_cs = a.stride(1);
  g.B = b.data_ptr<float>(), g.b_rs = b.stride(0), g.b_cs = b.stride(1);
  g.C = out.data_ptr<float>(), g.ldc = out.stride(0);
  small_gemm_f32(g);
}

bool small_gemm_takes(const at::Tensor& a, const at::Tensor& b) {
  return is_f32(a) && is_f32(b) && !blas_runs_avx512() &&
         small_gemm_wins(a.size(0), b.size(1), a.size(1));
}

}  // namespace

// out = a @ b (the backward's products; conv_gemm's too), by the small kernel where it beats
// ATen's. On Intel's AVX-512 CPUs MKL's kernel won every one measured with our AVX2 tile (a 2-core
// Xeon, hot, the whole backward of one layer: vae-mu 38 -> 25 us, cifar-fc2 54 -> 36, vae-dec1
// 79 -> 64, cifar-fc3 11 -> 8) and all but one with the AVX-512 tile (cifar-fc2 grad_x 16.5 vs 12.2
// us, vae-dec1 20 vs 14; vae-mu's grad_x 16.5 vs 18), on AVX2 ones ours (small_gemm_wins), and on
// AVX-512 CPUs where MKL runs its AVX2 code (a 2-core Zen 5, forward + backward against stock:
// vae-mu 1.37 -> 2.06x, cifar-fc2 1.23 -> 1.69x, cifar-fc3 1.14 -> 1.63x). Larger products go to
// oneDNN's matmul where MKL runs narrower vectors than it (onednn_matmul.h).
void gemm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (small_gemm_takes(a, b))
    small_mm_into(out, a, b);
  else if (use_onednn_matmul(a, b))
    out.copy_(onednn_matmul(a, b));  // oneDNN writes a new tensor: gemm() takes it as it is
  else
    at::mm_out(out, a, b);
}

namespace {

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  if (!small_gemm_takes(a, b)) return matmul_on_either(a, b);  // oneDNN's result as it is
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  small_mm_into(out, a, b);
  return out;
}

// Whether the backward's two products run side by side, one thread each (MKL single-threaded
// inside the parallel region), rather than one after the other on both threads: MKL's two-thread
// split of a 128-row product scales 1.75-1.87x, the pair 2x. Measured on 2 threads (2-core Xeon,
// a layer's whole forward + backward): vae-enc1 1131 -> 1091 us, vae-dec2 1169 -> 1131 (stock
// 1144 / 1200), cifar-fc1 234 -> 219, cifar-fc2 104 -> 97, vae-mu 80 -> 77; a product of 0.1M
// multiply-adds (cifar-fc3) gains nothing.
// Not where oneDNN takes the products: its own two-thread split runs AVX-512.
bool side_by_side(const at::Tensor& g, const at::Tensor& x) {
  constexpr int64_t kMinMacs = 512 * 1024;  // of each product
  return at::get_num_threads() == 2 && !at::in_parallel_region() && !use_onednn_matmul(g, x) &&
         g.size(0) * g.size(1) * x.size(1) >= kMinMacs;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_act_forward_cpu(const at::Tensor& x,
                                                          const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias,
                                                          int64_t activation, double negative_slope,
                                                          bool save_preact) {
  const bool has_bias = bias.has_value() && bias->defined();
  const int64_t M = x.size(0), N = weight.size(0), K = weight.size(1);
  const bool f32 = x.dim() == 2 && is_f32(x) && is_f32(weight) && (!has_bias || is_f32(*bias));
  const bool dot =
      f32 && x.stride(1) == 1 && weight.stride(1) == 1 && use_dot_gemm(M, N, K);
  if (dot || (f32 && packing_pays(M, N, K) && small_gemm_wins(M, N, K))) {
    // relu-like activations go on each tile before its store; exp/tanh ones in ATen's
    // vectorized pass after it (scalar libm on the tiles would cost more than the GEMM).
    const auto act = static_cast<Activation>(activation);
    const bool on_tiles = act == Activation::kIdentity || act == Activation::kRelu ||
                          act == Activation::kLeakyRelu;
    at::Tensor y = at::empty({M, N}, x.options());
    at::Tensor z = save_preact ? at::empty({M, N}, x.options()) : at::Tensor();
    GemmArgs g;
    g.M = M, g.N = N, g.K = K;
    g.A = x.data_ptr<float>(), g.a_rs = x.stride(0), g.a_cs = x.stride(1);
    g.B = weight.data_ptr<float>(), g.b_rs = weight.stride(1), g.b_cs = weight.stride(0);
    if (has_bias) g.bias = bias->data_ptr<float>(), g.bias_stride = bias->stride(0);
    g.C = on_tiles || !save_preact ? y.data_ptr<float>() : z.data_ptr<float>(), g.ldc = N;
    g.Z = on_tiles && save_preact ? z.data_ptr<float>() : nullptr;
    g.act = on_tiles ? act : Activation::kIdentity;
    g.slope = static_cast<float>(negative_slope);
    if (dot)
      dot_gemm_f32(g);
    else
      small_gemm_f32(g);
    if (!on_tiles) {
      if (save_preact)
        activation_(z, activation, negative_slope, &y);
      else
        activation_(y, activation, negative_slope);
    }
    return {y, z};
  }
  // float32 / float64: the product alone, the bias added with the activation after it. ATen's
  // addmm first copies the bias, broadcast, into the whole output, a pass that costs more than
  // the add (128 x 400 -> 784: addmm 285 us, mm 265, add_ 12). 16-bit types keep addmm: the bias
  // inside the fp32 accumulators, one rounding.
  const bool bias_after =
      has_bias && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
  at::Tensor z = matmul_on_either(
      x, weight.t(), has_bias && !bias_after ? std::optional<at::Tensor>(*bias) : std::nullopt);
  at::Tensor y = save_preact ? at::empty_like(z) : z;
  if (bias_after)
    bias_activation_(z, *bias, activation, negative_slope, save_preact ? &y : nullptr);
  else
    activation_(z, activation, negative_slope, save_preact ? &y : nullptr);
  return {y, save_preact ? z : at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward_cpu(
    const at::Tensor& grad_y, const std::optional<at::Tensor>& saved, const at::Tensor& x,
    const at::Tensor& weight, int64_t activation, double negative_slope,
    std::array<bool, 3> output_mask) {
  auto [g, grad_bias] =
      act_backward_bias_grad(grad_y, saved, activation, negative_slope, output_mask[2]);
  at::Tensor grad_x, grad_w;
  if (output_mask[0] && output_mask[1] && side_by_side(g, x)) {
    // allocated here, where the caller's profiler and memory tracking see them
    grad_x = at::empty({g.size(0), weight.size(1)}, g.options());
    grad_w = at::empty({g.size(1), x.size(1)}, g.options());
    at::parallel_for(0, 2, 1, [&](int64_t i0, int64_t i1) {
      at::NoGradGuard no_grad;  // a worker thread's own grad mode is on
      for (int64_t i = i0; i < i1; ++i) {
        if (i == 0)
          gemm_into(grad_x, g, weight);
        else
          gemm_into(grad_w, g.t(), x);
      }
    });
    return {grad_x, grad_w, grad_bias};
  }
  grad_x = output_mask[0] ? gemm(g, weight) : at::Tensor();
  grad_w = output_mask[1] ? gemm(g.t(), x) : at::Tensor();
  return {grad_x, grad_w, grad_bias};
}

}  // namespace genkern::cpu
