// Fused GAN and VAE losses on CUDA (torch-free; see loss_kernels.cuh).
#include "loss_kernels.cuh"

namespace genkern::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = static_cast<int>(kLossChunk / kThreads);
static_assert(kItems * kThreads == kLossChunk, "chunk = threads x items");

template <typename T>
using acc_t = typename LossAcc<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Sum of v over the block in a fixed tree order; every thread gets the result.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A s[kThreads];
  s[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  const A r = s[0];
  __syncthreads();
  return r;
}

template <typename T, LossTerm K>
__global__ void gan_term_kernel(const T* __restrict__ x, T* __restrict__ g,
                                acc_t<T>* __restrict__ part, int64_t n, acc_t<T> gs) {
  using A = acc_t<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kLossChunk + threadIdx.x;
  A acc = A(0);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int64_t i = base + static_cast<int64_t>(j) * kThreads;
    if (i < n) {
      A d;
      acc += loss_term<K, A>(to_acc(x[i]), &d);
      if (g != nullptr) g[i] = from_acc<T>(d * gs);
    }
  }
  const A total = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = total;
}

template <typename T, ReconLoss R>
__global__ void recon_kernel(const T* __restrict__ x, const T* __restrict__ t, T* __restrict__ gx,
                             T* __restrict__ gt, acc_t<T>* __restrict__ part, int64_t n,
                             acc_t<T> s) {
  using A = acc_t<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kLossChunk + threadIdx.x;
  A acc = A(0);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int64_t i = base + static_cast<int64_t>(j) * kThreads;
    if (i < n) {
      A dx, dt;
      acc += recon_term<R, A>(to_acc(x[i]), to_acc(t[i]), &dx, &dt);
      if (gx != nullptr) gx[i] = from_acc<T>(dx * s);
      if (gt != nullptr) gt[i] = from_acc<T>(dt * s);
    }
  }
  const A total = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = total;
}

template <typename T>
__global__ void kl_kernel(const T* __restrict__ mu, const T* __restrict__ lv, T* __restrict__ gm,
                          T* __restrict__ gl, acc_t<T>* __restrict__ part, int64_t n, acc_t<T> s) {
  using A = acc_t<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kLossChunk + threadIdx.x;
  A acc = A(0);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int64_t i = base + static_cast<int64_t>(j) * kThreads;
    if (i < n) {
      A dm, dl;
      acc += kl_term<A>(to_acc(mu[i]), to_acc(lv[i]), &dm, &dl);
      if (gm != nullptr) gm[i] = from_acc<T>(dm * s);
      if (gl != nullptr) gl[i] = from_acc<T>(dl * s);
    }
  }
  const A total = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = total;
}

template <typename A>
__global__ void finish_kernel(const A* __restrict__ pa, int64_t na, A sa, const A* __restrict__ pb,
                              int64_t nb, A sb, A wb, A* __restrict__ out) {
  A a = A(0), b = A(0);
  for (int64_t i = threadIdx.x; i < na; i += kThreads) a += pa[i];
  for (int64_t i = threadIdx.x; i < nb; i += kThreads) b += pb[i];
  a = block_sum(a) * sa;
  b = nb > 0 ? block_sum(b) * sb : A(0);
  if (threadIdx.x == 0) {
    out[0] = a + wb * b;
    out[1] = a;
    out[2] = b;
  }
}

template <typename T>
__global__ void reparam_kernel(const T* __restrict__ mu, const T* __restrict__ lv,
                               const T* __restrict__ eps, T* __restrict__ z, T* __restrict__ sd,
                               int64_t n) {
  using A = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const A s = exp(A(0.5) * to_acc(lv[i]));
    sd[i] = from_acc<T>(s);
    z[i] = from_acc<T>(to_acc(mu[i]) + to_acc(eps[i]) * s);
  }
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(loss_num_partials(n)); }

}  // namespace

template <typename T>
cudaError_t gan_term_partials(const T* x, T* grad, acc_t<T>* partials, int64_t n, LossTerm term,
                              double gscale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch_loss_term(term, [&](auto tag) {
    constexpr LossTerm K = decltype(tag)::value;
    gan_term_kernel<T, K><<<blocks_for(n), kThreads, 0, stream>>>(x, grad, partials, n,
                                                                  acc_t<T>(gscale));
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t recon_partials(const T* x, const T* t, T* gx, T* gt, acc_t<T>* partials, int64_t n,
                           ReconLoss recon, double scale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch_recon_loss(recon, [&](auto tag) {
    constexpr ReconLoss R = decltype(tag)::value;
    recon_kernel<T, R><<<blocks_for(n), kThreads, 0, stream>>>(x, t, gx, gt, partials, n,
                                                               acc_t<T>(scale));
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t kl_partials(const T* mu, const T* lv, T* gmu, T* glv, acc_t<T>* partials, int64_t n,
                        double scale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  kl_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(mu, lv, gmu, glv, partials, n,
                                                       acc_t<T>(scale));
  return cudaGetLastError();
}

template <typename A>
cudaError_t loss_finish(const A* pa, int64_t na, double sa, const A* pb, int64_t nb, double sb,
                        double wb, A* out, cudaStream_t stream) {
  finish_kernel<A><<<1, kThreads, 0, stream>>>(pa, na, A(sa), pb, nb, A(sb), A(wb), out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t reparameterize(const T* mu, const T* lv, const T* eps, T* z, T* std, int64_t n,
                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  int64_t blocks = (n + kThreads - 1) / kThreads;
  blocks = blocks < 65535 ? blocks : 65535;
  reparam_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(mu, lv, eps, z, std,
                                                                             n);
  return cudaGetLastError();
}

#define GENKERN_INSTANTIATE_LOSSES(T)                                                        \
  template cudaError_t gan_term_partials<T>(const T*, T*, acc_t<T>*, int64_t, LossTerm,     \
                                            double, cudaStream_t);                          \
  template cudaError_t recon_partials<T>(const T*, const T*, T*, T*, acc_t<T>*, int64_t,    \
                                         ReconLoss, double, cudaStream_t);                  \
  template cudaError_t kl_partials<T>(const T*, const T*, T*, T*, acc_t<T>*, int64_t, double, \
                                      cudaStream_t);                                        \
  template cudaError_t reparameterize<T>(const T*, const T*, const T*, T*, T*, int64_t,     \
                                         cudaStream_t);

GENKERN_INSTANTIATE_LOSSES(float)
GENKERN_INSTANTIATE_LOSSES(double)
GENKERN_INSTANTIATE_LOSSES(__half)
GENKERN_INSTANTIATE_LOSSES(__nv_bfloat16)
#undef GENKERN_INSTANTIATE_LOSSES

template cudaError_t loss_finish<float>(const float*, int64_t, double, const float*, int64_t,
                                        double, double, float*, cudaStream_t);
template cudaError_t loss_finish<double>(const double*, int64_t, double, const double*, int64_t,
                                         double, double, double*, cudaStream_t);

}  // namespace genkern::cuda
