#include <cmath>

#include "norm_pool_kernels.cuh"

namespace genkern::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename AccT>
__device__ __forceinline__ AccT load(const T* p) { return static_cast<AccT>(to_f<T>(*p)); }
template <>
__device__ __forceinline__ double load<double, double>(const double* p) { return *p; }

template <typename T, typename AccT>
__device__ __forceinline__ T store_as(AccT v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half store_as<__half, float>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

// Element m (of outer * inner) of channel c in an [outer, channels, inner] view.
__device__ __forceinline__ int64_t offset(int64_t m, int64_t c, int64_t channels, int64_t inner) {
  const int64_t o = m / inner, i = m - o * inner;
  return (o * channels + c) * inner + i;
}

__device__ __forceinline__ int64_t channel_of(int64_t idx, int64_t channels, int64_t inner) {
  return (idx / inner) % channels;
}

template <typename T, typename AccT>
__global__ void bn_stats_kernel(const T* x, AccT* mean, AccT* var, int64_t outer,
                                int64_t channels, int64_t inner) {
  __shared__ AccT s_n[kThreads], s_mean[kThreads], s_m2[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t count = outer * inner;
  // per thread: its elements t, t + kThreads, ... (fixed); two-level: running Chan merge of
  // single values (Welford)
  AccT n = 0, mu = 0, m2 = 0;
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const AccT v = load<T, AccT>(x + offset(m, c, channels, inner));
    n += 1;
    const AccT d = v - mu;
    mu += d / n;
    m2 += d * (v - mu);
  }
  s_n[threadIdx.x] = n;
  s_mean[threadIdx.x] = mu;
  s_m2[threadIdx.x] = m2;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const AccT na = s_n[threadIdx.x], nb = s_n[threadIdx.x + stride];
      const AccT tot = na + nb;
      if (nb > 0) {
        const AccT delta = s_mean[threadIdx.x + stride] - s_mean[threadIdx.x];
        s_mean[threadIdx.x] += delta * (nb / tot);
        // delta * (delta * w): delta * delta overflows where w is 0 (a thread with no elements),
        // inf * 0 = NaN (found by a fuzz in the Triton kernel's merge, which had the same form)
        s_m2[threadIdx.x] += s_m2[threadIdx.x + stride] + delta * (delta * (na * nb / tot));
        s_n[threadIdx.x] = tot;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    mean[c] = s_mean[0];
    var[c] = s_n[0] > 0 ? s_m2[0] / s_n[0] : AccT(0);
  }
}

template <Activation A, typename T, typename AccT>
__global__ void bn_apply_kernel(const T* x, T* y, T* pre, const AccT* scale, const AccT* shift,
                                int64_t total, int64_t channels, int64_t inner, AccT slope) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, channels, inner);
    const AccT z = load<T, AccT>(x + i) * scale[c] + shift[c];
    if (pre) pre[i] = store_as<T, AccT>(z);
    y[i] = store_as<T, AccT>(act_forward<A, AccT>(z, slope));
  }
}

template <Activation A, typename T, typename AccT>
__device__ __forceinline__ AccT grad_of(const T* gy, const T* s, int64_t i, AccT slope) {
  if constexpr (A == Activation::kIdentity) {
    return load<T, AccT>(gy + i);
  } else {
    return act_backward<A, AccT>(load<T, AccT>(gy + i), load<T, AccT>(s + i), slope);
  }
}

template <Activation A, typename T, typename AccT>
__global__ void bn_backward_reduce_kernel(const T* gy, const T* s, const T* x, const AccT* mean,
                                          AccT* sum_g, AccT* sum_gx, int64_t outer,
                                          int64_t channels, int64_t inner, AccT slope) {
  __shared__ AccT s_a[kThreads], s_b[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t count = outer * inner;
  const AccT mu = mean[c];
  AccT a = 0, b = 0;
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = offset(m, c, channels, inner);
    const AccT g = grad_of<A, T, AccT>(gy, s, i, slope);
    a += g;
    b += g * (load<T, AccT>(x + i) - mu);
  }
  s_a[threadIdx.x] = a;
  s_b[threadIdx.x] = b;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      s_a[threadIdx.x] += s_a[threadIdx.x + stride];
      s_b[threadIdx.x] += s_b[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    sum_g[c] = s_a[0];
    sum_gx[c] = s_b[0];
  }
}

template <Activation A, typename T, typename AccT>
__global__ void bn_backward_apply_kernel(const T* gy, const T* s, const T* x, T* gx,
                                         const AccT* ka, const AccT* kb, const AccT* kc,
                                         int64_t total, int64_t channels, int64_t inner,
                                         AccT slope) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, channels, inner);
    const AccT g = grad_of<A, T, AccT>(gy, s, i, slope);
    // x is null in evaluation: gx = ka * g, no 0 * x term (an inf or NaN in x made it NaN)
    gx[i] = store_as<T, AccT>(x ? ka[c] * g + kb[c] * load<T, AccT>(x + i) + kc[c] : ka[c] * g);
  }
}

// Host-side twin of dispatch_activation (that one is __host__ __device__, which nvcc will not let
// call a host lambda): f(ActivationTag<A>{}) for the runtime id.
template <typename F>
void with_activation(Activation act, F&& f) {
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

unsigned blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 8 ? b : 65535 * 8);
}

// ---- pooling -------------------------------------------------------------------------------

struct Idx4 {
  int64_t n, c, h, w;
};

__device__ __forceinline__ Idx4 split(int64_t i, int64_t C, int64_t H, int64_t W) {
  Idx4 r;
  r.w = i % W;
  i /= W;
  r.h = i % H;
  i /= H;
  r.c = i % C;
  r.n = i / C;
  return r;
}

__device__ __forceinline__ int64_t at(const int64_t* s, int64_t n, int64_t c, int64_t h,
                                      int64_t w) {
  return n * s[0] + c * s[1] + h * s[2] + w * s[3];
}

template <typename T>
__global__ void max_pool_fwd_kernel(const T* x, T* y, int64_t* idx, Geometry g) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 o = split(i, g.c, g.oh, g.ow);
    int64_t h0 = o.h * g.sh - g.ph, w0 = o.w * g.sw - g.pw;
    const int64_t h1 = min(h0 + (g.kh - 1) * g.dh + 1, g.ih);
    const int64_t w1 = min(w0 + (g.kw - 1) * g.dw + 1, g.iw);
    while (h0 < 0) h0 += g.dh;
    while (w0 < 0) w0 += g.dw;
    float best = -INFINITY;
    int64_t bi = (h0 < h1 && w0 < w1) ? h0 * g.iw + w0 : -1;  // -1: a window all in padding
    for (int64_t h = h0; h < h1; h += g.dh)
      for (int64_t w = w0; w < w1; w += g.dw) {
        const float v = to_f<T>(x[at(g.xs, o.n, o.c, h, w)]);
        if ((v > best) || isnan(v)) {
          best = v;
          bi = h * g.iw + w;
        }
      }
    const int64_t out = at(g.ys, o.n, o.c, o.h, o.w);
    y[out] = store_as<T, float>(best);
    idx[out] = bi;
  }
}

template <>
__global__ void max_pool_fwd_kernel<double>(const double* x, double* y, int64_t* idx, Geometry g) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 o = split(i, g.c, g.oh, g.ow);
    int64_t h0 = o.h * g.sh - g.ph, w0 = o.w * g.sw - g.pw;
    const int64_t h1 = min(h0 + (g.kh - 1) * g.dh + 1, g.ih);
    const int64_t w1 = min(w0 + (g.kw - 1) * g.dw + 1, g.iw);
    while (h0 < 0) h0 += g.dh;
    while (w0 < 0) w0 += g.dw;
    double best = -INFINITY;
    int64_t bi = (h0 < h1 && w0 < w1) ? h0 * g.iw + w0 : -1;  // -1: a window all in padding
    for (int64_t h = h0; h < h1; h += g.dh)
      for (int64_t w = w0; w < w1; w += g.dw) {
        const double v = x[at(g.xs, o.n, o.c, h, w)];
        if ((v > best) || isnan(v)) {
          best = v;
          bi = h * g.iw + w;
        }
      }
    const int64_t out = at(g.ys, o.n, o.c, o.h, o.w);
    y[out] = best;
    idx[out] = bi;
  }
}

template <typename T, typename AccT>
__global__ void max_pool_bwd_kernel(const T* gy, const int64_t* idx, T* gx, Geometry g) {
  const int64_t total = g.n * g.c * g.ih * g.iw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 p = split(i, g.c, g.ih, g.iw);
    const int64_t me = p.h * g.iw + p.w;
    AccT acc = 0;
    for (int64_t kh = g.kh - 1; kh >= 0; --kh) {  // outputs in increasing oh, as the CPU order
      const int64_t th = p.h + g.ph - kh * g.dh;
      if (th < 0 || th % g.sh) continue;
      const int64_t oh = th / g.sh;
      if (oh >= g.oh) continue;
      for (int64_t kw = g.kw - 1; kw >= 0; --kw) {
        const int64_t tw = p.w + g.pw - kw * g.dw;
        if (tw < 0 || tw % g.sw) continue;
        const int64_t ow = tw / g.sw;
        if (ow >= g.ow) continue;
        const int64_t o = at(g.ys, p.n, p.c, oh, ow);
        if (idx[o] == me) acc += load<T, AccT>(gy + o);
      }
    }
    gx[at(g.xs, p.n, p.c, p.h, p.w)] = store_as<T, AccT>(acc);
  }
}

struct AvgWindow {
  int64_t h0, h1, w0, w1, div;
};

__device__ __forceinline__ AvgWindow avg_window(const Geometry& g, int64_t oh, int64_t ow,
                                                bool cip, int64_t div_override) {
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int64_t h1 = min(h0 + g.kh, g.ih + g.ph), w1 = min(w0 + g.kw, g.iw + g.pw);
  const int64_t pool = (h1 - h0) * (w1 - w0);
  h0 = max(h0, int64_t(0));
  w0 = max(w0, int64_t(0));
  h1 = min(h1, g.ih);
  w1 = min(w1, g.iw);
  const int64_t div = div_override != 0 ? div_override : (cip ? pool : (h1 - h0) * (w1 - w0));
  return {h0, h1, w0, w1, div};
}

template <typename T, typename AccT>
__global__ void avg_pool_fwd_kernel(const T* x, T* y, Geometry g, bool cip, int64_t div_override) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 o = split(i, g.c, g.oh, g.ow);
    const AvgWindow a = avg_window(g, o.h, o.w, cip, div_override);
    AccT sum = 0;
    for (int64_t h = a.h0; h < a.h1; ++h)
      for (int64_t w = a.w0; w < a.w1; ++w) sum += load<T, AccT>(x + at(g.xs, o.n, o.c, h, w));
    const bool empty = a.h0 >= a.h1 || a.w0 >= a.w1;
    y[at(g.ys, o.n, o.c, o.h, o.w)] = store_as<T, AccT>(empty ? AccT(0) : sum / AccT(a.div));
  }
}

template <typename T, typename AccT>
__global__ void avg_pool_bwd_kernel(const T* gy, T* gx, Geometry g, bool cip,
                                    int64_t div_override) {
  const int64_t total = g.n * g.c * g.ih * g.iw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 p = split(i, g.c, g.ih, g.iw);
    AccT acc = 0;
    for (int64_t kh = g.kh - 1; kh >= 0; --kh) {
      const int64_t th = p.h + g.ph - kh;
      if (th < 0 || th % g.sh) continue;
      const int64_t oh = th / g.sh;
      if (oh >= g.oh) continue;
      for (int64_t kw = g.kw - 1; kw >= 0; --kw) {
        const int64_t tw = p.w + g.pw - kw;
        if (tw < 0 || tw % g.sw) continue;
        const int64_t ow = tw / g.sw;
        if (ow >= g.ow) continue;
        const AvgWindow a = avg_window(g, oh, ow, cip, div_override);
        acc += load<T, AccT>(gy + at(g.ys, p.n, p.c, oh, ow)) / AccT(a.div);
      }
    }
    gx[at(g.xs, p.n, p.c, p.h, p.w)] = store_as<T, AccT>(acc);
  }
}

template <typename T>
__global__ void up_fwd_kernel(const T* x, T* y, const int64_t* sh, const int64_t* sw, Geometry g) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 o = split(i, g.c, g.oh, g.ow);
    y[at(g.ys, o.n, o.c, o.h, o.w)] = x[at(g.xs, o.n, o.c, sh[o.h], sw[o.w])];
  }
}

template <typename T, typename AccT>
__global__ void up_bwd_kernel(const T* gy, T* gx, const int64_t* h_lo, const int64_t* h_hi,
                              const int64_t* w_lo, const int64_t* w_hi, Geometry g) {
  const int64_t total = g.n * g.c * g.ih * g.iw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Idx4 p = split(i, g.c, g.ih, g.iw);
    AccT acc = 0;
    for (int64_t oh = h_lo[p.h]; oh < h_hi[p.h]; ++oh)
      for (int64_t ow = w_lo[p.w]; ow < w_hi[p.w]; ++ow)
        acc += load<T, AccT>(gy + at(g.ys, p.n, p.c, oh, ow));
    gx[at(g.xs, p.n, p.c, p.h, p.w)] = store_as<T, AccT>(acc);
  }
}

}  // namespace

template <typename T, typename AccT>
cudaError_t bn_stats(const T* x, AccT* mean, AccT* var, int64_t outer, int64_t channels,
                     int64_t inner, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  bn_stats_kernel<T, AccT><<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(
      x, mean, var, outer, channels, inner);
  return cudaGetLastError();
}

template <typename T, typename AccT>
cudaError_t bn_apply(const T* x, T* y, T* pre, const AccT* scale, const AccT* shift, int64_t outer,
                     int64_t channels, int64_t inner, Activation act, double negative_slope,
                     cudaStream_t stream) {
  const int64_t total = outer * channels * inner;
  if (total == 0) return cudaSuccess;
  with_activation(act, [&](auto tag) {
    bn_apply_kernel<decltype(tag)::value, T, AccT><<<blocks_for(total), kThreads, 0, stream>>>(
        x, y, pre, scale, shift, total, channels, inner, AccT(negative_slope));
  });
  return cudaGetLastError();
}

template <typename T, typename AccT>
cudaError_t bn_backward_reduce(const T* grad_y, const T* saved, const T* x, const AccT* mean,
                               AccT* sum_g, AccT* sum_gx, int64_t outer, int64_t channels,
                               int64_t inner, Activation act, double negative_slope,
                               cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  with_activation(act, [&](auto tag) {
    bn_backward_reduce_kernel<decltype(tag)::value, T, AccT>
        <<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(
            grad_y, saved, x, mean, sum_g, sum_gx, outer, channels, inner, AccT(negative_slope));
  });
  return cudaGetLastError();
}

template <typename T, typename AccT>
cudaError_t bn_backward_apply(const T* grad_y, const T* saved, const T* x, T* grad_x,
                              const AccT* ka, const AccT* kb, const AccT* kc, int64_t outer,
                              int64_t channels, int64_t inner, Activation act,
                              double negative_slope, cudaStream_t stream) {
  const int64_t total = outer * channels * inner;
  if (total == 0) return cudaSuccess;
  with_activation(act, [&](auto tag) {
    bn_backward_apply_kernel<decltype(tag)::value, T, AccT>
        <<<blocks_for(total), kThreads, 0, stream>>>(grad_y, saved, x, grad_x, ka, kb, kc, total,
                                                     channels, inner, AccT(negative_slope));
  });
  return cudaGetLastError();
}

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
cudaError_t max_pool2d_forward(const T* x, T* y, int64_t* indices, const Geometry& g,
                               cudaStream_t stream) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  if (total == 0) return cudaSuccess;
  max_pool_fwd_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(x, y, indices, g);
  return cudaGetLastError();
}

template <typename T>
cudaError_t max_pool2d_backward(const T* grad_y, const int64_t* indices, T* grad_x,
                                const Geometry& g, cudaStream_t stream) {
  const int64_t total = g.n * g.c * g.ih * g.iw;
  if (total == 0) return cudaSuccess;
  max_pool_bwd_kernel<T, typename Acc<T>::type>
      <<<blocks_for(total), kThreads, 0, stream>>>(grad_y, indices, grad_x, g);
  return cudaGetLastError();
}

template <typename T>
cudaError_t avg_pool2d_forward(const T* x, T* y, const Geometry& g, bool count_include_pad,
                               int64_t divisor_override, cudaStream_t stream) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  if (total == 0) return cudaSuccess;
  avg_pool_fwd_kernel<T, typename Acc<T>::type>
      <<<blocks_for(total), kThreads, 0, stream>>>(x, y, g, count_include_pad, divisor_override);
  return cudaGetLastError();
}

template <typename T>
cudaError_t avg_pool2d_backward(const T* grad_y, T* grad_x, const Geometry& g,
                                bool count_include_pad, int64_t divisor_override,
                                cudaStream_t stream) {
  const int64_t total = g.n * g.c * g.ih * g.iw;
  if (total == 0) return cudaSuccess;
  avg_pool_bwd_kernel<T, typename Acc<T>::type><<<blocks_for(total), kThreads, 0, stream>>>(
      grad_y, grad_x, g, count_include_pad, divisor_override);
  return cudaGetLastError();
}

template <typename T>
cudaError_t upsample_nearest2d_forward(const T* x, T* y, const int64_t* src_h,
                                       const int64_t* src_w, const Geometry& g,
                                       cudaStream_t stream) {
  const int64_t total = g.n * g.c * g.oh * g.ow;
  if (total == 0) return cudaSuccess;
  up_fwd_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(x, y, src_h, src_w, g);
  return cudaGetLastError();
}

template <typename T>
cudaError_t upsample_nearest2d_backward(const T* grad_y, T* grad_x, const int64_t* h_lo,
                                        const int64_t* h_hi, const int64_t* w_lo,
                                        const int64_t* w_hi, const Geometry& g,
                                        cudaStream_t stream) {
  const int64_t total = g.n * g.c * g.ih * g.iw;
  if (total == 0) return cudaSuccess;
  up_bwd_kernel<T, typename Acc<T>::type><<<blocks_for(total), kThreads, 0, stream>>>(
      grad_y, grad_x, h_lo, h_hi, w_lo, w_hi, g);
  return cudaGetLastError();
}

#define GENKERN_INSTANTIATE_BN(T, AccT)                                                          \
  template cudaError_t bn_stats<T, AccT>(const T*, AccT*, AccT*, int64_t, int64_t, int64_t,      \
                                         cudaStream_t);                                          \
  template cudaError_t bn_apply<T, AccT>(const T*, T*, T*, const AccT*, const AccT*, int64_t,    \
                                         int64_t, int64_t, Activation, double, cudaStream_t);    \
  template cudaError_t bn_backward_reduce<T, AccT>(const T*, const T*, const T*, const AccT*,    \
                                                   AccT*, AccT*, int64_t, int64_t, int64_t,      \
                                                   Activation, double, cudaStream_t);            \
  template cudaError_t bn_backward_apply<T, AccT>(const T*, const T*, const T*, T*, const AccT*, \
                                                  const AccT*, const AccT*, int64_t, int64_t,    \
                                                  int64_t, Activation, double, cudaStream_t);

#define GENKERN_INSTANTIATE_POOL(T)                                                               \
  template cudaError_t max_pool2d_forward<T>(const T*, T*, int64_t*, const Geometry&,            \
                                             cudaStream_t);                                       \
  template cudaError_t max_pool2d_backward<T>(const T*, const int64_t*, T*, const Geometry&,     \
                                              cudaStream_t);                                      \
  template cudaError_t avg_pool2d_forward<T>(const T*, T*, const Geometry&, bool, int64_t,       \
                                             cudaStream_t);                                       \
  template cudaError_t avg_pool2d_backward<T>(const T*, T*, const Geometry&, bool, int64_t,      \
                                              cudaStream_t);                                      \
  template cudaError_t upsample_nearest2d_forward<T>(const T*, T*, const int64_t*,               \
                                                     const int64_t*, const Geometry&,            \
                                                     cudaStream_t);                               \
  template cudaError_t upsample_nearest2d_backward<T>(const T*, T*, const int64_t*,              \
                                                      const int64_t*, const int64_t*,            \
                                                      const int64_t*, const Geometry&,           \
                                                      cudaStream_t);

GENKERN_INSTANTIATE_BN(float, float)
GENKERN_INSTANTIATE_BN(double, double)
GENKERN_INSTANTIATE_BN(__half, float)
GENKERN_INSTANTIATE_BN(__nv_bfloat16, float)
GENKERN_INSTANTIATE_POOL(float)
GENKERN_INSTANTIATE_POOL(double)
GENKERN_INSTANTIATE_POOL(__half)
GENKERN_INSTANTIATE_POOL(__nv_bfloat16)

}  // namespace genkern::cuda
