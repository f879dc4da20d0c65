// CUDA kernels of the normalisation family: LayerNorm and RMSNorm, forward
// and backward, float32 / float16 / bfloat16 rows with float32 arithmetic.
//
// Fast path (rows up to 8192 vectors: 32k float32 or 64k 16-bit values):
// a row lives in registers, `tpr` threads per row (a multiple of 32), each
// holding N vectors of V elements (16-byte loads when the row allows), so x
// is read once per pass; narrow rows pack several rows into one block.
// General path (wider rows): one block per row, re-reading the row from
// global memory (L2) per pass.
// Backward writes per-block dgamma / dbeta partials into the workspace and a
// second kernel sums them in a fixed order (deterministic, no atomics).
#include "cc/normalization/kernels/normalization_gpu.h"

#include <algorithm>

#include "cc/common/gpu/column_sum.cuh"
#include "cc/common/gpu/device_utils.cuh"

namespace kbm {
namespace gpu {
namespace {

constexpr int kMaxElems = 16;  // values per thread on the fast path
constexpr int kFwdMaxThreads = 1024;
constexpr int kBwdMaxThreads = 512;  // the backward holds 4 values per element
constexpr int kMinBlockThreads = 128;
constexpr int kGeneralThreads = 512;

// ------------------------------------------------------------ plan (host)

struct RowPlan {
  bool fast;
  int vec;   // elements per load: 16 / sizeof(T), or 1
  int vecs;  // vectors per thread: 1, 2, 4 or 8 (vecs * vec <= 16)
  int tpr;   // threads per row
  int rpb;   // rows per block
};

// The fast-path layout of a row of `cols` values for a kernel of at most
// `max_threads` threads, or fast == false when the row does not fit.
template <typename T>
RowPlan PlanRows(int64_t cols, bool aligned, int max_threads) {
  RowPlan p{};
  const int full = static_cast<int>(16 / sizeof(T));
  p.vec = aligned && cols % full == 0 ? full : 1;
  // Scalar loads keep fewer values per thread (more threads in flight).
  const int max_vecs = p.vec == 1 ? kMaxElems / 2 : kMaxElems / p.vec;
  const int64_t nvec = CeilDiv(cols, p.vec);
  int64_t tpr = CeilDiv(CeilDiv(nvec, max_vecs), 32) * 32;
  tpr = std::min<int64_t>(std::max<int64_t>(tpr, 32), max_threads);
  const int64_t need = CeilDiv(nvec, tpr);
  p.fast = need <= max_vecs;
  if (!p.fast) return p;
  p.vecs = 1;
  while (p.vecs < need) p.vecs *= 2;
  // Fewest threads that still cover the row with `vecs` vectors each.
  tpr = CeilDiv(CeilDiv(nvec, p.vecs), 32) * 32;
  p.tpr = static_cast<int>(tpr);
  p.rpb = std::max(1, kMinBlockThreads / p.tpr);
  return p;
}

// float32 parameter vectors are read with float4 loads when V > 1.
template <int V>
bool Aligned(const void* p) {
  return V == 1 || reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// ---------------------------------------------------------- device helpers

template <typename NT, int V>
__device__ __forceinline__ void LoadVec(const NT* p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = ToFloat(p[0]);
  } else {
    const Vec<NT, V> v = *reinterpret_cast<const Vec<NT, V>*>(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = ToFloat(v.v[e]);
  }
}

template <typename NT, int V>
__device__ __forceinline__ void StoreVec(NT* p, const float (&in)[V]) {
  if constexpr (V == 1) {
    p[0] = FromFloat<NT>(in[0]);
  } else {
    Vec<NT, V> v;
#pragma unroll
    for (int e = 0; e < V; ++e) v.v[e] = FromFloat<NT>(in[e]);
    *reinterpret_cast<Vec<NT, V>*>(p) = v;
  }
}

// V float32 values (V a multiple of 4 uses float4 accesses; 16-byte aligned).
template <int V>
__device__ __forceinline__ void LoadF(const float* p, float (&out)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V / 4; ++i) {
      const float4 f = reinterpret_cast<const float4*>(p)[i];
      out[4 * i] = f.x;
      out[4 * i + 1] = f.y;
      out[4 * i + 2] = f.z;
      out[4 * i + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = p[e];
  }
}

template <int V>
__device__ __forceinline__ void StoreF(float* p, const float (&in)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V / 4; ++i) {
      reinterpret_cast<float4*>(p)[i] =
          make_float4(in[4 * i], in[4 * i + 1], in[4 * i + 2], in[4 * i + 3]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) p[e] = in[e];
  }
}

// Sums (a, b) over the `tpr` threads of each row of the block (rows are
// consecutive groups of tpr threads, tpr a multiple of 32). Every thread of
// the block must call it; `scratch` holds 64 floats.
__device__ __forceinline__ void RowSum2(float& a, float& b, float* scratch,
                                        int tpr) {
  a = WarpSum(a);
  b = WarpSum(b);
  if (tpr == 32) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_row = tpr >> 5;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  const int first = warp - warp % per_row;
  a = lane < per_row ? scratch[first + lane] : 0.0f;
  b = lane < per_row ? scratch[32 + first + lane] : 0.0f;
  a = WarpSum(a);
  b = WarpSum(b);
}

// ------------------------------------------------------- fast path kernels

template <typename T, int V, int N, bool kRms>
__global__ void __launch_bounds__(kFwdMaxThreads)
    NormFwdFast(NormFwdArgs<T> a, int tpr, int rpb) {
  using NT = NativeT<T>;
  __shared__ float scratch[64];
  const int rib = threadIdx.x / tpr;
  const int t = threadIdx.x - rib * tpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rpb + rib;
  const bool valid = row < a.rows;
  const int64_t cols = a.cols;
  const NT* x = reinterpret_cast<const NT*>(a.x) + (valid ? row * cols : 0);
  float v[N][V];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
    if (valid && j < cols) {
      LoadVec<NT, V>(x + j, v[k]);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) v[k][e] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < V; ++e) sum += v[k][e];
  }
  const float inv_cols = 1.0f / static_cast<float>(cols);
  float mean = 0.0f;
  if constexpr (!kRms) {
    float unused = 0.0f;
    RowSum2(sum, unused, scratch, tpr);
    mean = sum * inv_cols;
  }
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
    if (j < cols) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float d = v[k][e] - mean;
        sq += d * d;
      }
    }
  }
  float unused = 0.0f;
  RowSum2(sq, unused, scratch, tpr);
  const float rstd = rsqrtf(sq * inv_cols + a.epsilon);
  if (!valid) return;
  NT* y = reinterpret_cast<NT*>(a.y) + row * cols;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
    if (j < cols) {
      float g[V], out[V];
      LoadF<V>(a.gamma + j, g);
      if constexpr (kRms) {
#pragma unroll
        for (int e = 0; e < V; ++e) out[e] = v[k][e] * rstd * g[e];
      } else {
        float b[V];
        LoadF<V>(a.beta + j, b);
#pragma unroll
        for (int e = 0; e < V; ++e)
          out[e] = (v[k][e] - mean) * rstd * g[e] + b[e];
      }
      StoreVec<NT, V>(y + j, out);
    }
  }
  if (t == 0) {
    if constexpr (!kRms) a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
}

// Rows base, base + gridDim.x * rpb, ... per block; dgamma (and dbeta)
// partials of slot blockIdx.x * rpb + row-in-block go to
// partials[slot * cols ...] (and partials[(parts + slot) * cols ...]).
template <typename T, int V, int N, bool kRms>
__global__ void __launch_bounds__(kBwdMaxThreads)
    NormBwdFast(NormBwdArgs<T> a, int tpr, int rpb, float* partials) {
  using NT = NativeT<T>;
  __shared__ float scratch[64];
  const int rib = threadIdx.x / tpr;
  const int t = threadIdx.x - rib * tpr;
  const int64_t cols = a.cols;
  const float inv_cols = 1.0f / static_cast<float>(cols);
  float g[N][V], acc_g[N][V], acc_b[N][V];
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      acc_g[k][e] = 0.0f;
      acc_b[k][e] = 0.0f;
      g[k][e] = 0.0f;
    }
    if (j < cols) LoadF<V>(a.gamma + j, g[k]);
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * rpb;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * rpb; base < a.rows;
       base += step) {
    const int64_t row = base + rib;
    const bool valid = row < a.rows;
    const NT* dy = reinterpret_cast<const NT*>(a.dy) + (valid ? row * cols : 0);
    const NT* x = reinterpret_cast<const NT*>(a.x) + (valid ? row * cols : 0);
    const float mean = kRms || !valid ? 0.0f : a.mean[row];
    const float rstd = valid ? a.rstd[row] : 0.0f;
    float vdy[N][V], xhat[N][V];
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
      float vx[V];
      if (valid && j < cols) {
        LoadVec<NT, V>(dy + j, vdy[k]);
        LoadVec<NT, V>(x + j, vx);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) vdy[k][e] = vx[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) {
        xhat[k][e] = (vx[e] - mean) * rstd;
        const float gdy = g[k][e] * vdy[k][e];
        s1 += gdy;
        s2 += gdy * xhat[k][e];
        acc_g[k][e] += vdy[k][e] * xhat[k][e];
        acc_b[k][e] += vdy[k][e];
      }
    }
    RowSum2(s1, s2, scratch, tpr);
    if (kRms) s1 = 0.0f;
    if (valid) {
      NT* dx = reinterpret_cast<NT*>(a.dx) + row * cols;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
        if (j < cols) {
          float out[V];
#pragma unroll
          for (int e = 0; e < V; ++e) {
            out[e] = rstd *
                     (g[k][e] * vdy[k][e] - (s1 + xhat[k][e] * s2) * inv_cols);
          }
          StoreVec<NT, V>(dx + j, out);
        }
      }
    }
  }
  const int64_t parts = static_cast<int64_t>(gridDim.x) * rpb;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * rpb + rib;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * tpr + t) * V;
    if (j < cols) {
      StoreF<V>(partials + slot * cols + j, acc_g[k]);
      if constexpr (!kRms) {
        StoreF<V>(partials + (parts + slot) * cols + j, acc_b[k]);
      }
    }
  }
}

// ----------------------------------------------------- general path kernels

template <typename T, bool kRms>
__global__ void __launch_bounds__(kGeneralThreads)
    NormFwdGeneral(NormFwdArgs<T> a) {
  using NT = NativeT<T>;
  __shared__ float scratch[32];
  const int64_t cols = a.cols;
  const float inv_cols = 1.0f / static_cast<float>(cols);
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const NT* x = reinterpret_cast<const NT*>(a.x) + row * cols;
    float mean = 0.0f;
    if constexpr (!kRms) {
      float sum = 0.0f;
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        sum += ToFloat(x[j]);
      }
      mean = BlockSum(sum, scratch) * inv_cols;
    }
    float sq = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = ToFloat(x[j]) - mean;
      sq += d * d;
    }
    const float rstd = rsqrtf(BlockSum(sq, scratch) * inv_cols + a.epsilon);
    NT* y = reinterpret_cast<NT*>(a.y) + row * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xhat = (ToFloat(x[j]) - mean) * rstd;
      y[j] = FromFloat<NT>(kRms ? xhat * a.gamma[j]
                                : xhat * a.gamma[j] + a.beta[j]);
    }
    if (threadIdx.x == 0) {
      if constexpr (!kRms) a.mean[row] = mean;
      a.rstd[row] = rstd;
    }
  }
}

// Block b owns partial slot b: column j of it is only touched by thread
// j % blockDim.x, so the read-modify-write below needs no synchronisation.
template <typename T, bool kRms>
__global__ void __launch_bounds__(kGeneralThreads)
    NormBwdGeneral(NormBwdArgs<T> a, float* partials) {
  using NT = NativeT<T>;
  __shared__ float scratch[64];
  const int64_t cols = a.cols;
  const float inv_cols = 1.0f / static_cast<float>(cols);
  const int64_t parts = gridDim.x;
  float* pg = partials + blockIdx.x * cols;
  float* pb = partials + (parts + blockIdx.x) * cols;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    pg[j] = 0.0f;
    if constexpr (!kRms) pb[j] = 0.0f;
  }
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const NT* dy = reinterpret_cast<const NT*>(a.dy) + row * cols;
    const NT* x = reinterpret_cast<const NT*>(a.x) + row * cols;
    const float mean = kRms ? 0.0f : a.mean[row];
    const float rstd = a.rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xhat = (ToFloat(x[j]) - mean) * rstd;
      const float gdy = a.gamma[j] * ToFloat(dy[j]);
      s1 += gdy;
      s2 += gdy * xhat;
    }
    // blockDim.x threads form one "row" for RowSum2.
    RowSum2(s1, s2, scratch, blockDim.x);
    if (kRms) s1 = 0.0f;
    NT* dx = reinterpret_cast<NT*>(a.dx) + row * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = ToFloat(dy[j]);
      const float xhat = (ToFloat(x[j]) - mean) * rstd;
      pg[j] += d * xhat;
      if constexpr (!kRms) pb[j] += d;
      dx[j] =
          FromFloat<NT>(rstd * (a.gamma[j] * d - (s1 + xhat * s2) * inv_cols));
    }
  }
}

// ------------------------------------------------------------- dispatch

template <typename T, bool kRms>
using FwdKernel = void (*)(NormFwdArgs<T>, int, int);
template <typename T, bool kRms>
using BwdKernel = void (*)(NormBwdArgs<T>, int, int, float*);

// Only (V, N) pairs with V * N <= kMaxElems are instantiated.
template <typename T, int V, bool kRms>
FwdKernel<T, kRms> PickFwdV(int vecs) {
  if constexpr (V <= 1) {
    if (vecs == 8) return NormFwdFast<T, V, 8, kRms>;
  }
  if constexpr (V <= 4) {
    if (vecs == 4) return NormFwdFast<T, V, 4, kRms>;
  }
  if (vecs == 2) return NormFwdFast<T, V, 2, kRms>;
  return NormFwdFast<T, V, 1, kRms>;
}

template <typename T, bool kRms>
FwdKernel<T, kRms> PickFwd(const RowPlan& p) {
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  return p.vec == 1 ? PickFwdV<T, 1, kRms>(p.vecs)
                    : PickFwdV<T, kFull, kRms>(p.vecs);
}

template <typename T, int V, bool kRms>
BwdKernel<T, kRms> PickBwdV(int vecs) {
  if constexpr (V <= 1) {
    if (vecs == 8) return NormBwdFast<T, V, 8, kRms>;
  }
  if constexpr (V <= 4) {
    if (vecs == 4) return NormBwdFast<T, V, 4, kRms>;
  }
  if (vecs == 2) return NormBwdFast<T, V, 2, kRms>;
  return NormBwdFast<T, V, 1, kRms>;
}

template <typename T, bool kRms>
BwdKernel<T, kRms> PickBwd(const RowPlan& p) {
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  return p.vec == 1 ? PickBwdV<T, 1, kRms>(p.vecs)
                    : PickBwdV<T, kFull, kRms>(p.vecs);
}

bool SizesOk(int64_t rows, int64_t cols) {
  return rows >= 0 && cols > 0 && cols <= (int64_t{1} << 31) - 1;
}

template <typename T>
bool FwdAligned(const NormFwdArgs<T>& a, bool rms) {
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  return IsAligned<T, kFull>(a.x) && IsAligned<T, kFull>(a.y) &&
         Aligned<kFull>(a.gamma) && (rms || Aligned<kFull>(a.beta));
}

template <typename T>
bool BwdAligned(const NormBwdArgs<T>& a) {
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  return IsAligned<T, kFull>(a.x) && IsAligned<T, kFull>(a.dy) &&
         IsAligned<T, kFull>(a.dx) && Aligned<kFull>(a.gamma);
}

template <typename T, bool kRms>
int LaunchFwd(const NormFwdArgs<T>& a, void* stream_ptr) {
  if (!SizesOk(a.rows, a.cols)) return kErrorInvalidArgument;
  if (a.rows == 0) return 0;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const RowPlan p = PlanRows<T>(a.cols, FwdAligned(a, kRms), kFwdMaxThreads);
  if (p.fast) {
    // One block per rpb rows, in launches of at most 2**30 blocks (grid x
    // takes 2**31 - 1).
    const int64_t launch_rows = (int64_t{1} << 30) * p.rpb;
    for (int64_t r0 = 0; r0 < a.rows; r0 += launch_rows) {
      NormFwdArgs<T> part = a;
      part.rows = std::min(launch_rows, a.rows - r0);
      part.x = a.x + r0 * a.cols;
      part.y = a.y + r0 * a.cols;
      if (a.mean != nullptr) part.mean = a.mean + r0;
      part.rstd = a.rstd + r0;
      const int64_t blocks = CeilDiv(part.rows, p.rpb);
      PickFwd<T, kRms>(
          p)<<<static_cast<unsigned>(blocks), p.tpr * p.rpb, 0, stream>>>(
          part, p.tpr, p.rpb);
      KBM_RETURN_IF_LAUNCH_ERROR();
    }
  } else {
    const int grid = GridSize(a.rows, 1, 4);
    NormFwdGeneral<T, kRms><<<grid, kGeneralThreads, 0, stream>>>(a);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

// Number of partial slots of the backward for a plan.
template <typename T, bool kRms>
int64_t BwdParts(const RowPlan& p, int64_t rows, int* grid_out) {
  int grid;
  if (p.fast) {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &per_sm, PickBwd<T, kRms>(p), p.tpr * p.rpb, 0) != cudaSuccess ||
        per_sm < 1) {
      cudaGetLastError();  // clear the sticky-free error state
      per_sm = 1;
    }
    const int64_t groups = std::max<int64_t>(1, CeilDiv(rows, p.rpb));
    const int64_t cap =
        static_cast<int64_t>(std::max(1, MultiProcessorCount())) * per_sm;
    grid = static_cast<int>(std::min(groups, cap));
    if (grid_out) *grid_out = grid;
    return static_cast<int64_t>(grid) * p.rpb;
  }
  grid = GridSize(std::max<int64_t>(rows, 1), 1, 2);
  if (grid_out) *grid_out = grid;
  return grid;
}

template <typename T, bool kRms>
size_t BwdWorkspace(int64_t rows, int64_t cols) {
  if (!SizesOk(rows, cols)) return 0;
  const int outputs = kRms ? 1 : 2;
  size_t best = 0;
  for (bool aligned : {true, false}) {
    const RowPlan p = PlanRows<T>(cols, aligned, kBwdMaxThreads);
    const int64_t parts = BwdParts<T, kRms>(p, rows, nullptr);
    best = std::max(best, AlignUp(static_cast<size_t>(parts) * outputs *
                                  static_cast<size_t>(cols) * sizeof(float)));
  }
  return best;
}

template <typename T, bool kRms>
int LaunchBwd(const NormBwdArgs<T>& a, void* workspace, void* stream_ptr) {
  if (!SizesOk(a.rows, a.cols)) return kErrorInvalidArgument;
  if (workspace == nullptr) return kErrorInvalidArgument;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  float* partials = static_cast<float*>(workspace);
  const RowPlan p = PlanRows<T>(a.cols, BwdAligned(a), kBwdMaxThreads);
  int grid = 1;
  const int64_t parts = BwdParts<T, kRms>(p, a.rows, &grid);
  if (a.rows == 0) {
    // Nothing to read: dgamma (and dbeta) are zeros.
    return LaunchColumnSum<float>(partials, 0, a.cols, a.dgamma, a.dbeta,
                                  kRms ? 1 : 2, stream);
  }
  if (p.fast) {
    PickBwd<T, kRms>(p)<<<grid, p.tpr * p.rpb, 0, stream>>>(a, p.tpr, p.rpb,
                                                            partials);
  } else {
    NormBwdGeneral<T, kRms><<<grid, kGeneralThreads, 0, stream>>>(a, partials);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return LaunchColumnSum<float>(partials, parts, a.cols, a.dgamma, a.dbeta,
                                kRms ? 1 : 2, stream);
}

}  // namespace

template <typename T>
int LaunchLayerNormFwd(const NormFwdArgs<T>& args, void* stream) {
  return LaunchFwd<T, false>(args, stream);
}
template <typename T>
int LaunchRmsNormFwd(const NormFwdArgs<T>& args, void* stream) {
  return LaunchFwd<T, true>(args, stream);
}
template <typename T>
size_t LayerNormBwdWorkspaceBytes(int64_t rows, int64_t cols) {
  return BwdWorkspace<T, false>(rows, cols);
}
template <typename T>
size_t RmsNormBwdWorkspaceBytes(int64_t rows, int64_t cols) {
  return BwdWorkspace<T, true>(rows, cols);
}
template <typename T>
int LaunchLayerNormBwd(const NormBwdArgs<T>& args, void* workspace,
                       void* stream) {
  return LaunchBwd<T, false>(args, workspace, stream);
}
template <typename T>
int LaunchRmsNormBwd(const NormBwdArgs<T>& args, void* workspace,
                     void* stream) {
  return LaunchBwd<T, true>(args, workspace, stream);
}

#define KBM_INSTANTIATE_NORM(T)                                            \
  template int LaunchLayerNormFwd<T>(const NormFwdArgs<T>&, void*);        \
  template int LaunchRmsNormFwd<T>(const NormFwdArgs<T>&, void*);          \
  template size_t LayerNormBwdWorkspaceBytes<T>(int64_t, int64_t);         \
  template size_t RmsNormBwdWorkspaceBytes<T>(int64_t, int64_t);           \
  template int LaunchLayerNormBwd<T>(const NormBwdArgs<T>&, void*, void*); \
  template int LaunchRmsNormBwd<T>(const NormBwdArgs<T>&, void*, void*);

KBM_INSTANTIATE_NORM(float)
KBM_INSTANTIATE_NORM(Half)
KBM_INSTANTIATE_NORM(BFloat16)

#undef KBM_INSTANTIATE_NORM

}  // namespace gpu
}  // namespace kbm
