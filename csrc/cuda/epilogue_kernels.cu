// Fused bias + activation epilogue and activation backward + bias gradient prologue on CUDA.
// Torch-free (see epilogue_kernels.cuh); the CPU mirror is csrc/cpu/epilogue.cpp.
//
// Every kernel is a grid-stride loop over 16-byte vectors (4 floats, 2 doubles, 8 halves) when the
// shape and the pointers allow it, else over single elements; the index type is 32-bit when the
// tensor has fewer than 2^31 elements (cheaper division) and 64-bit otherwise.
#include "epilogue_kernels.cuh"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace genkern::cuda {
namespace {

constexpr int kThreads = 256;                // threads per block, every kernel here
constexpr int64_t kMaxBlocks = 1 << 16;      // grid-stride loops beyond this many blocks
constexpr int64_t kMaxChunks = 1024;         // bias-gradient chunks per channel, at most
constexpr int64_t kPartialBudget = 1 << 18;  // cap on chunks * channels (channels may exceed it)
constexpr int64_t kMinRowsPerChunk = 64;     // channels innermost: rows per chunk, at least
constexpr int64_t kMinElemsPerChunk = 2048;  // planes: elements of a channel per chunk, at least
constexpr int kSumLanes = 8;                 // second reduction level: lanes over chunks

// The compute (and bias-gradient accumulation) type: float for 16-bit types and float, double for
// double.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};
template <typename T>
using op_t = typename OpMath<T>::type;

// Explicit conversions: torch's extension build compiles with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, so nothing here relies on the implicit ones.
__device__ __forceinline__ float to_op(float x) { return x; }
__device__ __forceinline__ double to_op(double x) { return x; }
__device__ __forceinline__ float to_op(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_op(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_op(op_t<T> x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_op<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_op<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// V elements loaded and stored as one aligned vector.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

bool aligned(const void* p, int64_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned grid_blocks(int64_t work_items) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(work_items, kThreads), 1, kMaxBlocks));
}

// Calls f(I{}) with I = uint32_t when every index of an n-element tensor (plus one grid stride)
// fits in 32 bits, else with I = int64_t.
template <typename F>
void with_index_type(int64_t n, F&& f) {
  if (n < (int64_t{1} << 31)) {
    f(uint32_t{});
  } else {
    f(int64_t{});
  }
}

// Calls f(std::integral_constant<int, V>{}) with V = kVec<T> when vectorize, else V = 1.
template <typename T, typename F>
void with_vec(bool vectorize, F&& f) {
  if (vectorize) {
    f(std::integral_constant<int, kVec<T>>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// The deterministic split of the bias-gradient reduction: a function of the shape alone.
struct ReducePlan {
  int64_t chunks;     // per channel
  int64_t chunk_len;  // rows (inner == 1) or elements of one channel (inner > 1) per chunk
};

ReducePlan reduce_plan(int64_t outer, int64_t channels, int64_t inner) {
  const int64_t max_chunks =
      std::clamp<int64_t>(kPartialBudget / std::max<int64_t>(channels, 1), 1, kMaxChunks);
  const int64_t len = inner == 1 ? outer : outer * inner;
  int64_t chunk = std::max(inner == 1 ? kMinRowsPerChunk : kMinElemsPerChunk,
                           ceil_div(len, max_chunks));
  if (inner != 1) chunk = ceil_div(chunk, 8) * 8;  // whole vectors of any width
  return {std::max<int64_t>(ceil_div(len, chunk), 1), chunk};
}

// ---- kernels --------------------------------------------------------------------------------

// z <- act(z + b) (out == nullptr), or z <- z + b and out <- act(z + b). nvec vectors of V
// elements; with a bias, a vector never straddles channels (kChannelsLast: channels % V == 0,
// else inner % V == 0).
template <typename T, typename I, int V, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    bias_act_kernel(T* z, T* out, const T* __restrict__ bias, I nvec, I channels, I inner,
                    Activation act, op_t<T> slope) {
  using VecT = Vec<T, V>;
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  for (I v = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; v < nvec; v += stride) {
    VecT zv = reinterpret_cast<const VecT*>(z)[v];
    op_t<T> b[V];
    if (bias == nullptr) {
#pragma unroll
      for (int k = 0; k < V; ++k) b[k] = 0;
    } else if constexpr (kChannelsLast) {
      const I c0 = (v * V) % channels;
#pragma unroll
      for (int k = 0; k < V; ++k) b[k] = to_op(bias[c0 + k]);
    } else {
      const op_t<T> bc = to_op(bias[(v * V / inner) % channels]);
#pragma unroll
      for (int k = 0; k < V; ++k) b[k] = bc;
    }
    VecT yv;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const op_t<T> pre = to_op(zv.v[k]) + b[k];
      zv.v[k] = from_op<T>(pre);
      yv.v[k] = from_op<T>(act_forward<op_t<T>>(act, pre, slope));
    }
    if (out != nullptr) {
      reinterpret_cast<VecT*>(z)[v] = zv;
      reinterpret_cast<VecT*>(out)[v] = yv;
    } else {
      reinterpret_cast<VecT*>(z)[v] = yv;
    }
  }
}

// g = act_backward(gy, s), elementwise, no reduction.
template <typename T, typename I, int V>
__global__ void __launch_bounds__(kThreads)
    act_backward_kernel(const T* __restrict__ gy, const T* __restrict__ s, T* __restrict__ g,
                        I nvec, Activation act, op_t<T> slope) {
  using VecT = Vec<T, V>;
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  for (I v = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; v < nvec; v += stride) {
    const VecT a = reinterpret_cast<const VecT*>(gy)[v];
    const VecT b = reinterpret_cast<const VecT*>(s)[v];
    VecT r;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      r.v[k] = from_op<T>(act_backward<op_t<T>>(act, to_op(a.v[k]), to_op(b.v[k]), slope));
    }
    reinterpret_cast<VecT*>(g)[v] = r;
  }
}

// First level, channels innermost ([rows, channels]). Block (tx, kThreads / tx), tx a power of
// two <= 32: threadIdx.x walks vectors of V channels (coalesced), threadIdx.y the rows of chunk
// blockIdx.y with stride blockDim.y; then a fixed-order tree over threadIdx.y. Writes
// partial[chunk * channels + c], or bias_grad[c] directly when there is a single chunk.
template <typename T, typename I, int V>
__global__ void __launch_bounds__(kThreads)
    reduce_rows_kernel(const T* __restrict__ gy, const T* __restrict__ s, T* __restrict__ g,
                       op_t<T>* __restrict__ partial, T* __restrict__ bias_grad, I rows,
                       I channels, I rows_per_chunk, Activation act, op_t<T> slope) {
  using VecT = Vec<T, V>;
  using acc_t = op_t<T>;
  __shared__ acc_t sm[V * kThreads];
  const int tx = blockDim.x;
  const int ty = blockDim.y;
  const int t = threadIdx.y * tx + threadIdx.x;
  const I c0 = (static_cast<I>(blockIdx.x) * tx + threadIdx.x) * V;
  const I r0 = static_cast<I>(blockIdx.y) * rows_per_chunk;
  const I r1 = rows - r0 < rows_per_chunk ? rows : r0 + rows_per_chunk;
  acc_t acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = 0;
  if (c0 < channels) {
    for (I r = r0 + threadIdx.y; r < r1; r += ty) {
      const I i = (r * channels + c0) / V;
      const VecT a = reinterpret_cast<const VecT*>(gy)[i];
      if (g == nullptr) {
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] += to_op(a.v[k]);
      } else {
        const VecT b = reinterpret_cast<const VecT*>(s)[i];
        VecT out;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          out.v[k] = from_op<T>(act_backward<acc_t>(act, to_op(a.v[k]), to_op(b.v[k]), slope));
          acc[k] += to_op(out.v[k]);
        }
        reinterpret_cast<VecT*>(g)[i] = out;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) sm[k * kThreads + t] = acc[k];
  __syncthreads();
  for (int h = ty / 2; h > 0; h /= 2) {
    if (static_cast<int>(threadIdx.y) < h) {
#pragma unroll
      for (int k = 0; k < V; ++k) sm[k * kThreads + t] += sm[k * kThreads + t + h * tx];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c0 < channels) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t sum = sm[k * kThreads + threadIdx.x];
      if (bias_grad != nullptr) {
        bias_grad[c0 + k] = from_op<T>(sum);
      } else {
        partial[static_cast<I>(blockIdx.y) * channels + c0 + k] = sum;
      }
    }
  }
}

// First level, planes ([outer, channels, inner], inner > 1). Block (kThreads): channel blockIdx.x,
// elements [chunk * chunk_len, ...) of its outer * inner ones for chunk blockIdx.y, in vectors of
// V (inner % V == 0); then a fixed-order tree over the block.
template <typename T, typename I, int V>
__global__ void __launch_bounds__(kThreads)
    reduce_planes_kernel(const T* __restrict__ gy, const T* __restrict__ s, T* __restrict__ g,
                         op_t<T>* __restrict__ partial, T* __restrict__ bias_grad, I outer,
                         I channels, I inner_v, I chunk_v, Activation act, op_t<T> slope) {
  using VecT = Vec<T, V>;
  using acc_t = op_t<T>;
  __shared__ acc_t sm[kThreads];
  const I c = blockIdx.x;
  const I len_v = outer * inner_v;
  const I j0 = static_cast<I>(blockIdx.y) * chunk_v;
  const I j1 = len_v - j0 < chunk_v ? len_v : j0 + chunk_v;
  acc_t acc = 0;
  for (I j = j0 + threadIdx.x; j < j1; j += kThreads) {
    const I o = j / inner_v;
    const I i = (o * channels + c) * inner_v + (j - o * inner_v);
    const VecT a = reinterpret_cast<const VecT*>(gy)[i];
    if (g == nullptr) {
#pragma unroll
      for (int k = 0; k < V; ++k) acc += to_op(a.v[k]);
    } else {
      const VecT b = reinterpret_cast<const VecT*>(s)[i];
      VecT out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        out.v[k] = from_op<T>(act_backward<acc_t>(act, to_op(a.v[k]), to_op(b.v[k]), slope));
        acc += to_op(out.v[k]);
      }
      reinterpret_cast<VecT*>(g)[i] = out;
    }
  }
  sm[threadIdx.x] = acc;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h /= 2) {
    if (static_cast<int>(threadIdx.x) < h) sm[threadIdx.x] += sm[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (bias_grad != nullptr) {
      bias_grad[c] = from_op<T>(sm[0]);
    } else {
      partial[static_cast<I>(blockIdx.y) * channels + c] = sm[0];
    }
  }
}

// Second level: bias_grad[c] = sum over chunks of partial[chunk * channels + c]. Block (32,
// kSumLanes): threadIdx.x a channel, lane threadIdx.y sums chunks lane, lane + kSumLanes, ... in
// order; lane 0 then adds the lanes' sums in order.
template <typename T>
__global__ void __launch_bounds__(32 * kSumLanes)
    sum_chunks_kernel(const op_t<T>* __restrict__ partial, T* __restrict__ bias_grad,
                      int64_t chunks, int64_t channels) {
  using acc_t = op_t<T>;
  __shared__ acc_t sm[kSumLanes][32];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  acc_t acc = 0;
  if (c < channels) {
    for (int64_t k = threadIdx.y; k < chunks; k += kSumLanes) acc += partial[k * channels + c];
  }
  sm[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    acc_t sum = sm[0][threadIdx.x];
#pragma unroll
    for (int lane = 1; lane < kSumLanes; ++lane) sum += sm[lane][threadIdx.x];
    bias_grad[c] = from_op<T>(sum);
  }
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

template <typename T>
cudaError_t bias_act_forward(T* z, T* act_out, const T* bias, int64_t outer, int64_t channels,
                             int64_t inner, Activation act, double negative_slope,
                             cudaStream_t stream) {
  if (outer <= 0 || channels <= 0 || inner <= 0) return cudaSuccess;
  if (z == nullptr) return cudaErrorInvalidValue;
  // z + 0 followed by the identity: nothing to do.
  if (act == Activation::kIdentity && bias == nullptr && act_out == nullptr) return cudaSuccess;
  const int64_t n = outer * channels * inner;
  const bool channels_last = inner == 1;
  constexpr int kV = kVec<T>;
  const int64_t run = bias == nullptr ? n : (channels_last ? channels : inner);
  const bool vectorize = run % kV == 0 && aligned(z, sizeof(T) * kV) &&
                         aligned(act_out, sizeof(T) * kV);
  const op_t<T> slope = static_cast<op_t<T>>(negative_slope);
  with_index_type(n, [&](auto index_tag) {
    using I = decltype(index_tag);
    with_vec<T>(vectorize, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const int64_t nvec = n / V;
      const unsigned blocks = grid_blocks(nvec);
      if (channels_last) {
        bias_act_kernel<T, I, V, true><<<blocks, kThreads, 0, stream>>>(
            z, act_out, bias, static_cast<I>(nvec), static_cast<I>(channels),
            static_cast<I>(inner), act, slope);
      } else {
        bias_act_kernel<T, I, V, false><<<blocks, kThreads, 0, stream>>>(
            z, act_out, bias, static_cast<I>(nvec), static_cast<I>(channels),
            static_cast<I>(inner), act, slope);
      }
    });
  });
  return cudaGetLastError();
}

template <typename T>
size_t act_backward_bias_grad_workspace_bytes(int64_t outer, int64_t channels, int64_t inner) {
  if (outer <= 0 || channels <= 0 || inner <= 0) return 0;
  const ReducePlan plan = reduce_plan(outer, channels, inner);
  if (plan.chunks <= 1) return 0;
  return static_cast<size_t>(plan.chunks * channels) * sizeof(op_t<T>);
}

template <typename T>
cudaError_t act_backward_bias_grad(const T* grad_y, const T* saved, T* grad, T* bias_grad,
                                   void* workspace, size_t workspace_bytes, int64_t outer,
                                   int64_t channels, int64_t inner, Activation act,
                                   double negative_slope, cudaStream_t stream) {
  const bool identity = act == Activation::kIdentity;
  if (identity ? grad != nullptr : (saved == nullptr || grad == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (channels <= 0) return cudaSuccess;
  if (outer <= 0 || inner <= 0) {  // no elements: the bias gradient is zero (all-zero bits)
    if (bias_grad == nullptr) return cudaSuccess;
    return cudaMemsetAsync(bias_grad, 0, static_cast<size_t>(channels) * sizeof(T), stream);
  }
  if (grad_y == nullptr) return cudaErrorInvalidValue;
  const int64_t n = outer * channels * inner;
  const op_t<T> slope = static_cast<op_t<T>>(negative_slope);
  constexpr int kV = kVec<T>;
  constexpr int64_t kVecBytes = sizeof(T) * kV;
  const bool ptrs_aligned =
      aligned(grad_y, kVecBytes) && aligned(saved, kVecBytes) && aligned(grad, kVecBytes);

  if (bias_grad == nullptr) {  // elementwise only
    if (identity) return cudaSuccess;
    const bool vectorize = n % kV == 0 && ptrs_aligned;
    with_index_type(n, [&](auto index_tag) {
      using I = decltype(index_tag);
      with_vec<T>(vectorize, [&](auto vec_tag) {
        constexpr int V = decltype(vec_tag)::value;
        const int64_t nvec = n / V;
        act_backward_kernel<T, I, V><<<grid_blocks(nvec), kThreads, 0, stream>>>(
            grad_y, saved, grad, static_cast<I>(nvec), act, slope);
      });
    });
    return cudaGetLastError();
  }

  const ReducePlan plan = reduce_plan(outer, channels, inner);
  const bool two_level = plan.chunks > 1;
  const size_t need = act_backward_bias_grad_workspace_bytes<T>(outer, channels, inner);
  if (two_level && (workspace == nullptr || workspace_bytes < need || !aligned(workspace, 16))) {
    return cudaErrorInvalidValue;
  }
  op_t<T>* partial = two_level ? static_cast<op_t<T>*>(workspace) : nullptr;
  T* direct = two_level ? nullptr : bias_grad;
  const bool channels_last = inner == 1;
  const bool vectorize = (channels_last ? channels : inner) % kV == 0 && ptrs_aligned;
  with_index_type(n, [&](auto index_tag) {
    using I = decltype(index_tag);
    with_vec<T>(vectorize, [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      if (channels_last) {
        const int64_t cvecs = channels / V;
        int tx = 1;
        while (tx < 32 && tx < cvecs) tx *= 2;
        const dim3 grid(static_cast<unsigned>(ceil_div(cvecs, tx)),
                        static_cast<unsigned>(plan.chunks));
        const dim3 block(tx, kThreads / tx);
        reduce_rows_kernel<T, I, V><<<grid, block, 0, stream>>>(
            grad_y, saved, grad, partial, direct, static_cast<I>(outer), static_cast<I>(channels),
            static_cast<I>(plan.chunk_len), act, slope);
      } else {
        const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(plan.chunks));
        reduce_planes_kernel<T, I, V><<<grid, kThreads, 0, stream>>>(
            grad_y, saved, grad, partial, direct, static_cast<I>(outer), static_cast<I>(channels),
            static_cast<I>(inner / V), static_cast<I>(plan.chunk_len / V), act, slope);
      }
    });
  });
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !two_level) return err;
  const dim3 block(32, kSumLanes);
  sum_chunks_kernel<T><<<static_cast<unsigned>(ceil_div(channels, 32)), block, 0, stream>>>(
      partial, bias_grad, plan.chunks, channels);
  return cudaGetLastError();
}

#define GENKERN_INSTANTIATE_EPILOGUE(T)                                                        \
  template cudaError_t bias_act_forward<T>(T*, T*, const T*, int64_t, int64_t, int64_t,         \
                                           Activation, double, cudaStream_t);                   \
  template size_t act_backward_bias_grad_workspace_bytes<T>(int64_t, int64_t, int64_t);         \
  template cudaError_t act_backward_bias_grad<T>(const T*, const T*, T*, T*, void*, size_t,     \
                                                 int64_t, int64_t, int64_t, Activation, double, \
                                                 cudaStream_t);

GENKERN_INSTANTIATE_EPILOGUE(float)
GENKERN_INSTANTIATE_EPILOGUE(double)
GENKERN_INSTANTIATE_EPILOGUE(__half)
GENKERN_INSTANTIATE_EPILOGUE(__nv_bfloat16)

#undef GENKERN_INSTANTIATE_EPILOGUE

}  // namespace genkern::cuda
