// Fused GAN and VAE losses on CUDA: the thin torch glue. Checks, allocates the outputs, the fresh
// gradient buffers and the partial-sum workspace through torch's caching allocator, and launches
// the torch-free kernels of loss_kernels.cu on the current stream (no host synchronization).
#include "losses_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <limits>

#include "loss_kernels.cuh"

namespace genkern::cuda {
namespace {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
typename CudaType<scalar_t>::type* ptr(const at::Tensor& t) {
  if (!t.defined()) return nullptr;
  return reinterpret_cast<typename CudaType<scalar_t>::type*>(t.data_ptr<scalar_t>());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "genkern: CUDA kernel ", what, " failed: ",
              cudaGetErrorString(err));
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

double inv(int64_t n) { return n ? 1.0 / double(n) : std::numeric_limits<double>::quiet_NaN(); }

// partial sums of one GAN term over x (contiguous); grad allocated when need_grad
at::Tensor term_partials(const at::Tensor& x, int64_t term, bool need_grad, at::Tensor* grad,
                         cudaStream_t stream) {
  const int64_t n = x.numel();
  at::Tensor part = at::empty({loss_num_partials(n)}, x.options().dtype(acc_type(x.scalar_type())));
  if (need_grad) *grad = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gan_loss_cuda", [&] {
    using acc = typename LossAcc<typename CudaType<scalar_t>::type>::type;
    check_launch(gan_term_partials(ptr<scalar_t>(x), need_grad ? ptr<scalar_t>(*grad) : nullptr,
                                   part.data_ptr<acc>(), n, static_cast<LossTerm>(term), inv(n),
                                   stream),
                 "gan_term_partials");
  });
  return part;
}

template <typename A>
void finish(const at::Tensor& pa, double sa, const at::Tensor* pb, double sb, double wb,
            at::Tensor& out, cudaStream_t stream) {
  check_launch(loss_finish<A>(pa.data_ptr<A>(), pa.numel(), sa, pb ? pb->data_ptr<A>() : nullptr,
                              pb ? pb->numel() : 0, sb, wb, out.data_ptr<A>(), stream),
               "loss_finish");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cuda(const std::optional<at::Tensor>& real,
                                                             const at::Tensor& fake,
                                                             int64_t real_term, int64_t fake_term,
                                                             bool need_grad_real,
                                                             bool need_grad_fake) {
  TORCH_CHECK(fake.is_cuda(), "genkern: gan_loss_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(fake.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool has_real = real.has_value() && real->defined();
  const at::Tensor f = fake.contiguous();
  at::Tensor gf, gr, pr;
  const at::Tensor pf = term_partials(f, fake_term, need_grad_fake, &gf, stream);
  at::Tensor r;
  if (has_real) {
    r = real->contiguous();
    pr = term_partials(r, real_term, need_grad_real, &gr, stream);
  }
  at::Tensor out = at::empty({3}, pf.options());
  // real first (A), fake second (B, weight 1): the same order of the two terms as the CPU kernel
  if (out.scalar_type() == at::kDouble) {
    if (has_real) finish<double>(pr, inv(r.numel()), &pf, inv(f.numel()), 1.0, out, stream);
    else finish<double>(pf, inv(f.numel()), nullptr, 0.0, 1.0, out, stream);
  } else {
    if (has_real) finish<float>(pr, inv(r.numel()), &pf, inv(f.numel()), 1.0, out, stream);
    else finish<float>(pf, inv(f.numel()), nullptr, 0.0, 1.0, out, stream);
  }
  return {out.select(0, 0), gr, gf};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_cuda(const at::Tensor& recon, const at::Tensor& target, const at::Tensor& mu,
              const at::Tensor& logvar, int64_t recon_loss, double beta, double scale,
              std::array<bool, 4> mask) {
  TORCH_CHECK(recon.is_cuda(), "genkern: vae_loss_cuda expects CUDA tensors");
  TORCH_CHECK(recon.scalar_type() == mu.scalar_type(), "genkern: vae_loss_cuda: one dtype");
  const c10::cuda::CUDAGuard guard(recon.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor x = recon.contiguous(), t = target.contiguous();
  const at::Tensor m = mu.contiguous(), lv = logvar.contiguous();
  at::Tensor gx = mask[0] ? at::empty(x.sizes(), x.options()) : at::Tensor();
  at::Tensor gt = mask[1] ? at::empty(t.sizes(), t.options()) : at::Tensor();
  at::Tensor gm = mask[2] ? at::empty(m.sizes(), m.options()) : at::Tensor();
  at::Tensor glv = mask[3] ? at::empty(lv.sizes(), lv.options()) : at::Tensor();
  const auto aopts = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor pr = at::empty({loss_num_partials(x.numel())}, aopts);
  at::Tensor pk = at::empty({loss_num_partials(m.numel())}, aopts);
  at::Tensor out = at::empty({3}, aopts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "vae_loss_cuda", [&] {
    using acc = typename LossAcc<typename CudaType<scalar_t>::type>::type;
    check_launch(recon_partials(ptr<scalar_t>(x), ptr<scalar_t>(t), ptr<scalar_t>(gx),
                                ptr<scalar_t>(gt), pr.data_ptr<acc>(), x.numel(),
                                static_cast<ReconLoss>(recon_loss), scale, stream),
                 "recon_partials");
    check_launch(kl_partials(ptr<scalar_t>(m), ptr<scalar_t>(lv), ptr<scalar_t>(gm),
                             ptr<scalar_t>(glv), pk.data_ptr<acc>(), m.numel(), scale, stream),
                 "kl_partials");
    finish<acc>(pr, scale, &pk, scale, beta, out, stream);
  });
  return {out.select(0, 0), out.select(0, 1), out.select(0, 2), gx, gt, gm, glv};
}

std::tuple<at::Tensor, at::Tensor> reparameterize_cuda(const at::Tensor& mu,
                                                       const at::Tensor& logvar,
                                                       const at::Tensor& eps) {
  TORCH_CHECK(mu.is_cuda(), "genkern: reparameterize_cuda expects CUDA tensors");
  const c10::cuda::CUDAGuard guard(mu.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor m = mu.contiguous(), lv = logvar.contiguous(), e = eps.contiguous();
  at::Tensor z = at::empty(m.sizes(), m.options()), sd = at::empty(m.sizes(), m.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, m.scalar_type(), "reparam_cuda", [&] {
    check_launch(reparameterize(ptr<scalar_t>(m), ptr<scalar_t>(lv), ptr<scalar_t>(e),
                                ptr<scalar_t>(z), ptr<scalar_t>(sd), m.numel(), stream),
                 "reparameterize");
  });
  return {z, sd};
}

}  // namespace genkern::cuda
