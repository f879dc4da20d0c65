// CUDA kernels of the optimizer family (see optimizers_gpu.h for the API).
//
// Multi-tensor scheme: the host packs up to kMaxTensorsPerLaunch tensors'
// pointers, sizes and first chunk numbers into a Table passed by value as a
// __grid_constant__ kernel parameter (about 3 KB, inside the 4 KB parameter
// space every driver accepts), so no per-step host->device copy or device
// allocation is needed. Block b finds its tensor by binary search over the
// table's chunk starts and updates elements [chunk * kChunkElements, ...) of
// it with 4-element vector loads (16 bytes for float32) when every pointer
// of the table is aligned, scalar loads otherwise. Scalars are read from
// device memory by each block.
#include "cc/optimizers/kernels/optimizers_gpu.h"

#include <algorithm>
#include <climits>

#include "cc/common/gpu/device_utils.cuh"

namespace kbm {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kVecN = 4;    // elements per vector access
constexpr int kUnroll = 2;  // vectors in flight per thread and list

// Up to kMaxTensorsPerLaunch tensors of K lists (param, slots, gradient).
template <int K>
struct Table {
  void* ptr[K][kMaxTensorsPerLaunch];
  int64_t size[kMaxTensorsPerLaunch];
  int chunk_start[kMaxTensorsPerLaunch + 1];  // chunk_start[num] = total
  int num_tensors;
  int first;         // global index of tensor 0 (decay, ratios)
  int partial_base;  // global number of chunk 0 (LAMB partials)
};
static_assert(sizeof(Table<4>) + sizeof(void*) * 9 < 4000,
              "a launch's parameters must fit in 4 KB");

__device__ __forceinline__ float SignOf(float x) {
  return x > 0.f ? 1.f : (x < 0.f ? -1.f : x);  // 0 stays 0, NaN stays NaN
}

// ---------------------------------------------------------- element ops
// Each op updates x[0..kLists) (float32 values of one element of each list)
// in place; lists in kWriteMask are stored back. kReduce ops add to the
// block's two squared-norm accumulators.

struct AdamParams {
  const float *omb1, *omb2, *coef_a, *bias2, *coef_sgd, *eps, *decay;
  const float* unused;
};

struct AdamOp {
  using Params = AdamParams;
  static constexpr int kLists = 4;  // p, m, v, g
  static constexpr int kReadMask = 0xF, kWriteMask = 0x7;
  static constexpr bool kReduce = false;
  float omb1, omb2, coef_a, bias2, coef_sgd, eps, decay;
  __device__ AdamOp(const Params& s, int t)
      : omb1(*s.omb1),
        omb2(*s.omb2),
        coef_a(*s.coef_a),
        bias2(*s.bias2),
        coef_sgd(*s.coef_sgd),
        eps(*s.eps),
        decay(s.decay[t]) {}
  __device__ __forceinline__ void operator()(float* x, float&, float&) const {
    const float g = x[3];
    const float m = x[1] + (g - x[1]) * omb1;
    const float v = x[2] + (g * g - x[2]) * omb2;
    const float pd = x[0] - x[0] * decay;
    x[0] = pd - ((m * coef_a) / (sqrtf(v / bias2) + eps) + m * coef_sgd);
    x[1] = m;
    x[2] = v;
  }
};

struct LambParams {
  const float *lr, *omb1, *omb2, *bias1, *bias2, *eps, *decay;
  const float* ratio_lr;  // workspace [num_tensors], pass 2 only
};

struct LambMomentsOp {
  using Params = LambParams;
  static constexpr int kLists = 4;  // p, m, v, g
  // The new m and v are only for the norms here: LambApplyOp computes them
  // again and stores them (as the CPU kernels: the update never reads
  // moments rounded to a half-precision variable).
  static constexpr int kReadMask = 0xF, kWriteMask = 0x0;
  static constexpr bool kReduce = true;
  float omb1, omb2, bias1, bias2, eps, decay;
  __device__ LambMomentsOp(const Params& s, int t)
      : omb1(*s.omb1),
        omb2(*s.omb2),
        bias1(*s.bias1),
        bias2(*s.bias2),
        eps(*s.eps),
        decay(s.decay[t]) {}
  __device__ __forceinline__ void operator()(float* x, float& w2,
                                             float& u2) const {
    const float g = x[3];
    const float m = x[1] + (g - x[1]) * omb1;
    const float v = x[2] + (g * g - x[2]) * omb2;
    const float pd = x[0] - x[0] * decay;
    const float u = (m / bias1) / (sqrtf(v / bias2) + eps);
    w2 += pd * pd;
    u2 += u * u;
  }
};

struct LambApplyOp {
  using Params = LambParams;
  static constexpr int kLists = 4;  // p, m, v, g
  static constexpr int kReadMask = 0xF, kWriteMask = 0x7;
  static constexpr bool kReduce = false;
  float omb1, omb2, bias1, bias2, eps, decay, ratio_lr;
  __device__ LambApplyOp(const Params& s, int t)
      : omb1(*s.omb1),
        omb2(*s.omb2),
        bias1(*s.bias1),
        bias2(*s.bias2),
        eps(*s.eps),
        decay(s.decay[t]),
        ratio_lr(s.ratio_lr[t]) {}
  __device__ __forceinline__ void operator()(float* x, float&, float&) const {
    const float g = x[3];
    const float m = x[1] + (g - x[1]) * omb1;
    const float v = x[2] + (g * g - x[2]) * omb2;
    const float u = (m / bias1) / (sqrtf(v / bias2) + eps);
    x[0] = (x[0] - x[0] * decay) - ratio_lr * u;
    x[1] = m;
    x[2] = v;
  }
};

struct LionParams {
  const float *lr, *b1, *b2, *decay;
};

struct LionOp {
  using Params = LionParams;
  static constexpr int kLists = 3;  // p, m, g
  static constexpr int kReadMask = 0x7, kWriteMask = 0x3;
  static constexpr bool kReduce = false;
  float lr, b1, b2, omb1, omb2, decay;
  __device__ LionOp(const Params& s, int t)
      : lr(*s.lr),
        b1(*s.b1),
        b2(*s.b2),
        omb1(1.f - *s.b1),
        omb2(1.f - *s.b2),
        decay(s.decay[t]) {}
  __device__ __forceinline__ void operator()(float* x, float&, float&) const {
    const float g = x[2], m = x[1];
    const float c = m * b1 + g * omb1;
    x[0] = (x[0] - x[0] * decay) - lr * SignOf(c);
    x[1] = m * b2 + g * omb2;
  }
};

// ---------------------------------------------------------------- kernels

template <typename N>
__device__ __forceinline__ void Load4(const N* p, float (&x)[kVecN]) {
  const Vec<N, kVecN> v = *reinterpret_cast<const Vec<N, kVecN>*>(p);
#pragma unroll
  for (int j = 0; j < kVecN; ++j) x[j] = ToFloat(v.v[j]);
}

template <typename N>
__device__ __forceinline__ void Store4(N* p, const float (&x)[kVecN]) {
  Vec<N, kVecN> v;
#pragma unroll
  for (int j = 0; j < kVecN; ++j) v.v[j] = FromFloat<N>(x[j]);
  *reinterpret_cast<Vec<N, kVecN>*>(p) = v;
}

// One block per chunk of the table's tensors.
template <typename N, class Op, bool kVec>
__global__ void __launch_bounds__(kThreads)
    MultiTensorKernel(const __grid_constant__ Table<Op::kLists> table,
                      const __grid_constant__ typename Op::Params params,
                      float2* partials) {
  constexpr int K = Op::kLists;
  const int b = blockIdx.x;
  // The tensor whose chunks hold b: the last t with chunk_start[t] <= b.
  int lo = 0, hi = table.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (table.chunk_start[mid] <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int t = lo;
  const int64_t begin =
      static_cast<int64_t>(b - table.chunk_start[t]) * kChunkElements;
  const int64_t end = min(table.size[t], begin + kChunkElements);
  N* ptr[K];
#pragma unroll
  for (int k = 0; k < K; ++k) ptr[k] = static_cast<N*>(table.ptr[k][t]);
  const Op op(params, table.first + t);
  float w2 = 0.f, u2 = 0.f;

  int64_t tail = begin;
  if constexpr (kVec) {
    const int64_t vec_end = begin + (end - begin) / kVecN * kVecN;
    constexpr int64_t kStride = int64_t{kThreads} * kVecN;
    for (int64_t e0 = begin + threadIdx.x * kVecN; e0 < vec_end;
         e0 += kStride * kUnroll) {
      float x[kUnroll][K][kVecN];
#pragma unroll
      for (int r = 0; r < kUnroll; ++r) {
        const int64_t e = e0 + r * kStride;
        if (e < vec_end) {
#pragma unroll
          for (int k = 0; k < K; ++k) {
            if ((Op::kReadMask >> k) & 1) Load4(ptr[k] + e, x[r][k]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kUnroll; ++r) {
        const int64_t e = e0 + r * kStride;
        if (e < vec_end) {
#pragma unroll
          for (int j = 0; j < kVecN; ++j) {
            float y[K];
#pragma unroll
            for (int k = 0; k < K; ++k) y[k] = x[r][k][j];
            op(y, w2, u2);
#pragma unroll
            for (int k = 0; k < K; ++k) x[r][k][j] = y[k];
          }
#pragma unroll
          for (int k = 0; k < K; ++k) {
            if ((Op::kWriteMask >> k) & 1) Store4(ptr[k] + e, x[r][k]);
          }
        }
      }
    }
    tail = vec_end;
  }
  for (int64_t e = tail + threadIdx.x; e < end; e += kThreads) {
    float y[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      y[k] = ((Op::kReadMask >> k) & 1) ? ToFloat(ptr[k][e]) : 0.f;
    }
    op(y, w2, u2);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if ((Op::kWriteMask >> k) & 1) ptr[k][e] = FromFloat<N>(y[k]);
    }
  }
  if constexpr (Op::kReduce) {
    __shared__ float scratch[32];
    const float sw = BlockSum(w2, scratch);
    const float su = BlockSum(u2, scratch);
    if (threadIdx.x == 0) {
      partials[table.partial_base + b] = make_float2(sw, su);
    }
  }
}

// One block per tensor of the table: its chunks' partial squared norms,
// summed in float64 in a fixed order, give ratio_lr[t] = r * learning_rate
// with r = ||p|| / ||u|| (1 if either is 0), as the CPU kernel computes it.
__global__ void __launch_bounds__(kThreads)
    LambRatioKernel(const __grid_constant__ Table<4> table,
                    const float2* partials, const float* learning_rate,
                    float* ratio_lr) {
  const int t = blockIdx.x;
  const int c0 = table.partial_base + table.chunk_start[t];
  const int c1 = table.partial_base + table.chunk_start[t + 1];
  double w = 0.0, u = 0.0;
  for (int c = c0 + threadIdx.x; c < c1; c += kThreads) {
    const float2 p = partials[c];
    w += p.x;
    u += p.y;
  }
  __shared__ double sw[kThreads], su[kThreads];
  sw[threadIdx.x] = w;
  su[threadIdx.x] = u;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      sw[threadIdx.x] += sw[threadIdx.x + s];
      su[threadIdx.x] += su[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const float wn = static_cast<float>(sqrt(sw[0]));
    const float un = static_cast<float>(sqrt(su[0]));
    const float r = (wn > 0.f && un > 0.f) ? wn / un : 1.f;
    ratio_lr[table.first + t] = r * *learning_rate;
  }
}

// ------------------------------------------------------------------ host

int64_t NumChunks(int64_t size) { return CeilDiv(size, kChunkElements); }

// Calls launch(table, num_chunks, aligned) for consecutive tables covering
// the n tensors whose list k pointers are lists[k][i]. Returns the first
// nonzero code.
template <typename N, int K, typename Fn>
int ForEachTable(int n, const void* const* const (&lists)[K],
                 const int64_t* sizes, Fn launch) {
  if (n < 0 || (n > 0 && sizes == nullptr)) return kErrorInvalidArgument;
  for (int i = 0; i < n; ++i) {
    if (sizes[i] < 0) return kErrorInvalidArgument;
    if (NumChunks(sizes[i]) > INT_MAX / 2) return kErrorInvalidArgument;
    for (int k = 0; k < K; ++k) {
      if (lists[k][i] == nullptr && sizes[i] > 0) return kErrorInvalidArgument;
    }
  }
  Table<K> table;
  int64_t partial_base = 0;
  int i = 0;
  while (i < n) {
    table.num_tensors = 0;
    table.first = i;
    table.partial_base = static_cast<int>(partial_base);
    int64_t chunks = 0;
    bool aligned = true;
    while (i < n && table.num_tensors < kMaxTensorsPerLaunch &&
           chunks + NumChunks(sizes[i]) <= INT_MAX / 2) {
      const int t = table.num_tensors++;
      for (int k = 0; k < K; ++k) {
        table.ptr[k][t] = const_cast<void*>(lists[k][i]);
        aligned = aligned && IsAligned<N, kVecN>(lists[k][i]);
      }
      table.size[t] = sizes[i];
      table.chunk_start[t] = static_cast<int>(chunks);
      chunks += NumChunks(sizes[i]);
      ++i;
    }
    table.chunk_start[table.num_tensors] = static_cast<int>(chunks);
    if (partial_base + chunks > INT_MAX) return kErrorInvalidArgument;
    const int rc = launch(table, static_cast<int>(chunks), aligned);
    if (rc != 0) return rc;
    partial_base += chunks;
  }
  return 0;
}

template <typename N, class Op>
int LaunchTable(const Table<Op::kLists>& table, int chunks, bool aligned,
                const typename Op::Params& params, float2* partials,
                cudaStream_t stream) {
  if (chunks == 0) return 0;
  if (aligned) {
    MultiTensorKernel<N, Op, true>
        <<<chunks, kThreads, 0, stream>>>(table, params, partials);
  } else {
    MultiTensorKernel<N, Op, false>
        <<<chunks, kThreads, 0, stream>>>(table, params, partials);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

template <typename T>
const void* const* Untyped(T* const* p) {
  return reinterpret_cast<const void* const*>(p);
}
template <typename T>
const void* const* Untyped(const T* const* p) {
  return reinterpret_cast<const void* const*>(p);
}

}  // namespace

template <typename T>
int LaunchMultiAdam(const MultiAdamArgs<T>& a, void* stream) {
  using N = NativeT<T>;
  const AdamParams params{
      a.one_minus_beta_1, a.one_minus_beta_2, a.coef_adaptive, a.bias_2,
      a.coef_sgd,         a.epsilon,          a.decay,         nullptr};
  if (a.num_tensors > 0 &&
      (a.params == nullptr || a.m == nullptr || a.v == nullptr ||
       a.grads == nullptr || params.omb1 == nullptr || params.omb2 == nullptr ||
       params.coef_a == nullptr || params.bias2 == nullptr ||
       params.coef_sgd == nullptr || params.eps == nullptr ||
       params.decay == nullptr)) {
    return kErrorInvalidArgument;
  }
  const void* const* const lists[4] = {Untyped(a.params), Untyped(a.m),
                                       Untyped(a.v), Untyped(a.grads)};
  return ForEachTable<N, 4>(
      a.num_tensors, lists, a.sizes,
      [&](const Table<4>& table, int chunks, bool aligned) {
        return LaunchTable<N, AdamOp>(table, chunks, aligned, params, nullptr,
                                      static_cast<cudaStream_t>(stream));
      });
}

size_t MultiLambWorkspaceBytes(int num_tensors, const int64_t* sizes) {
  int64_t chunks = 0;
  for (int i = 0; i < num_tensors; ++i) {
    chunks += sizes[i] > 0 ? NumChunks(sizes[i]) : 0;
  }
  return AlignUp(static_cast<size_t>(chunks) * sizeof(float2)) +
         AlignUp(static_cast<size_t>(num_tensors > 0 ? num_tensors : 0) *
                 sizeof(float));
}

template <typename T>
int LaunchMultiLamb(const MultiLambArgs<T>& a, void* workspace, void* stream) {
  using N = NativeT<T>;
  if (a.num_tensors <= 0) return a.num_tensors == 0 ? 0 : kErrorInvalidArgument;
  if (a.params == nullptr || a.m == nullptr || a.v == nullptr ||
      a.grads == nullptr || a.sizes == nullptr || a.learning_rate == nullptr ||
      a.one_minus_beta_1 == nullptr || a.one_minus_beta_2 == nullptr ||
      a.bias_1 == nullptr || a.bias_2 == nullptr || a.epsilon == nullptr ||
      a.decay == nullptr || workspace == nullptr) {
    return kErrorInvalidArgument;
  }
  int64_t total_chunks = 0;
  for (int i = 0; i < a.num_tensors; ++i) {
    total_chunks += a.sizes[i] > 0 ? NumChunks(a.sizes[i]) : 0;
  }
  float2* partials = static_cast<float2*>(workspace);
  float* ratio_lr = reinterpret_cast<float*>(
      static_cast<char*>(workspace) +
      AlignUp(static_cast<size_t>(total_chunks) * sizeof(float2)));
  const LambParams params{a.learning_rate,
                          a.one_minus_beta_1,
                          a.one_minus_beta_2,
                          a.bias_1,
                          a.bias_2,
                          a.epsilon,
                          a.decay,
                          ratio_lr};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const void* const* const lists[4] = {Untyped(a.params), Untyped(a.m),
                                       Untyped(a.v), Untyped(a.grads)};
  return ForEachTable<N, 4>(
      a.num_tensors, lists, a.sizes,
      [&](const Table<4>& table, int chunks, bool aligned) -> int {
        int rc = LaunchTable<N, LambMomentsOp>(table, chunks, aligned, params,
                                               partials, s);
        if (rc != 0) return rc;
        LambRatioKernel<<<table.num_tensors, kThreads, 0, s>>>(
            table, partials, a.learning_rate, ratio_lr);
        KBM_RETURN_IF_LAUNCH_ERROR();
        return LaunchTable<N, LambApplyOp>(table, chunks, aligned, params,
                                           partials, s);
      });
}

template <typename T>
int LaunchMultiLion(const MultiLionArgs<T>& a, void* stream) {
  using N = NativeT<T>;
  const LionParams params{a.learning_rate, a.beta_1, a.beta_2, a.decay};
  if (a.num_tensors > 0 &&
      (a.params == nullptr || a.m == nullptr || a.grads == nullptr ||
       params.lr == nullptr || params.b1 == nullptr || params.b2 == nullptr ||
       params.decay == nullptr)) {
    return kErrorInvalidArgument;
  }
  const void* const* const lists[3] = {Untyped(a.params), Untyped(a.m),
                                       Untyped(a.grads)};
  return ForEachTable<N, 3>(
      a.num_tensors, lists, a.sizes,
      [&](const Table<3>& table, int chunks, bool aligned) {
        return LaunchTable<N, LionOp>(table, chunks, aligned, params, nullptr,
                                      static_cast<cudaStream_t>(stream));
      });
}

#define KBM_INSTANTIATE(T)                                                \
  template int LaunchMultiAdam<T>(const MultiAdamArgs<T>&, void*);        \
  template int LaunchMultiLamb<T>(const MultiLambArgs<T>&, void*, void*); \
  template int LaunchMultiLion<T>(const MultiLionArgs<T>&, void*);

KBM_INSTANTIATE(float)
KBM_INSTANTIATE(Half)
KBM_INSTANTIATE(BFloat16)
#undef KBM_INSTANTIATE

}  // namespace gpu
}  // namespace kbm
