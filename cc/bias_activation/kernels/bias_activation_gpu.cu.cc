// CUDA kernels of Kbm>BiasGelu / Kbm>BiasGeluGrad: float32 / float16 /
// bfloat16 with float32 arithmetic.
//
// Layout: a 2-D block, threadIdx.x over column vectors (16-byte loads when
// the row length and pointers allow), threadIdx.y over rows; each thread
// keeps its bias vector in registers and walks rows with a stride, loading
// kUnroll rows before computing. The backward accumulates dbias per thread
// over its rows into one partial row per (blockIdx.y, threadIdx.y) slot, and
// a second kernel sums the partials in a fixed order (deterministic).
#include "cc/bias_activation/kernels/bias_activation_gpu.h"

#include <algorithm>

#include "cc/common/gpu/column_sum.cuh"
#include "cc/common/gpu/device_utils.cuh"

namespace kbm {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kBlocksPerSm = 8;

constexpr float kTanhScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kTanhCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

__device__ __forceinline__ float Gelu(float z, bool approximate) {
  if (approximate) {
    const float u = kTanhScale * (z + kTanhCubic * z * z * z);
    return 0.5f * z * (1.0f + tanhf(u));
  }
  return 0.5f * z * (1.0f + erff(z * kInvSqrt2));
}

__device__ __forceinline__ float GeluGrad(float z, bool approximate) {
  if (approximate) {
    const float u = kTanhScale * (z + kTanhCubic * z * z * z);
    const float t = tanhf(u);
    const float du = kTanhScale * (1.0f + 3.0f * kTanhCubic * z * z);
    return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * du;
  }
  return 0.5f * (1.0f + erff(z * kInvSqrt2)) +
         z * kInvSqrt2Pi * __expf(-0.5f * z * z);
}

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

// Block (bx, by) and grid of a [rows, cols] pass with vectors of `vec`.
struct Plan {
  int vec;
  int bx, by;
  int gx, gy;
};

template <typename T>
Plan MakePlan(int64_t rows, int64_t cols, bool aligned) {
  Plan p{};
  const int full = static_cast<int>(16 / sizeof(T));
  p.vec = aligned && cols % full == 0 ? full : 1;
  const int64_t ncv = CeilDiv(cols, p.vec);
  p.bx = static_cast<int>(std::min<int64_t>(kThreads, CeilDiv(ncv, 32) * 32));
  p.by = kThreads / p.bx;
  p.gx = static_cast<int>(CeilDiv(ncv, p.bx));
  const int64_t groups =
      std::max<int64_t>(1, CeilDiv(rows, static_cast<int64_t>(p.by) * kUnroll));
  const int64_t target = std::max<int64_t>(
      1, static_cast<int64_t>(std::max(1, MultiProcessorCount())) *
             kBlocksPerSm / p.gx);
  p.gy = static_cast<int>(std::min<int64_t>({groups, target, 65535}));
  return p;
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    BiasGeluFwdKernel(BiasGeluFwdArgs<T> a) {
  using NT = NativeT<T>;
  const int64_t cols = a.cols;
  const int64_t j =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (j >= cols) return;
  float b[V];
  LoadVec<NT, V>(reinterpret_cast<const NT*>(a.bias) + j, b);
  const NT* x = reinterpret_cast<const NT*>(a.x);
  NT* y = reinterpret_cast<NT*>(a.y);
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.y * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.y) * blockDim.y * kUnroll +
                      threadIdx.y;
       base < a.rows; base += stride) {
    float v[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = base + static_cast<int64_t>(u) * blockDim.y;
      if (r < a.rows) LoadVec<NT, V>(x + r * cols + j, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = base + static_cast<int64_t>(u) * blockDim.y;
      if (r < a.rows) {
        float out[V];
#pragma unroll
        for (int e = 0; e < V; ++e)
          out[e] = Gelu(v[u][e] + b[e], a.approximate);
        StoreVec<NT, V>(y + r * cols + j, out);
      }
    }
  }
}

// Partial slot blockIdx.y * blockDim.y + threadIdx.y of dbias goes to
// partials[slot * cols + j ...]; every slot column is written.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    BiasGeluBwdKernel(BiasGeluBwdArgs<T> a, float* partials) {
  using NT = NativeT<T>;
  const int64_t cols = a.cols;
  const int64_t j =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (j >= cols) return;
  float b[V], acc[V];
  LoadVec<NT, V>(reinterpret_cast<const NT*>(a.bias) + j, b);
#pragma unroll
  for (int e = 0; e < V; ++e) acc[e] = 0.0f;
  const NT* x = reinterpret_cast<const NT*>(a.x);
  const NT* dy = reinterpret_cast<const NT*>(a.dy);
  NT* dx = reinterpret_cast<NT*>(a.dx);
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.y * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.y) * blockDim.y * kUnroll +
                      threadIdx.y;
       base < a.rows; base += stride) {
    float vx[kUnroll][V], vdy[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = base + static_cast<int64_t>(u) * blockDim.y;
      if (r < a.rows) {
        LoadVec<NT, V>(x + r * cols + j, vx[u]);
        LoadVec<NT, V>(dy + r * cols + j, vdy[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = base + static_cast<int64_t>(u) * blockDim.y;
      if (r < a.rows) {
        float out[V];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          out[e] = vdy[u][e] * GeluGrad(vx[u][e] + b[e], a.approximate);
        }
        StoreVec<NT, V>(dx + r * cols + j, out);
        // dbias sums dx in float32 before rounding, as the CPU kernel does.
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += out[e];
      }
    }
  }
  const int64_t slot =
      static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
#pragma unroll
  for (int e = 0; e < V; ++e) partials[slot * cols + j + e] = acc[e];
}

template <typename T>
bool FwdAligned(const BiasGeluFwdArgs<T>& a) {
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  return IsAligned<T, kFull>(a.x) && IsAligned<T, kFull>(a.y) &&
         IsAligned<T, kFull>(a.bias);
}

template <typename T>
bool BwdAligned(const BiasGeluBwdArgs<T>& a) {
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  return IsAligned<T, kFull>(a.x) && IsAligned<T, kFull>(a.dy) &&
         IsAligned<T, kFull>(a.dx) && IsAligned<T, kFull>(a.bias);
}

bool SizesOk(int64_t rows, int64_t cols) {
  return rows >= 0 && cols >= 0 && cols <= (int64_t{1} << 31) - 1;
}

}  // namespace

template <typename T>
int LaunchBiasGeluFwd(const BiasGeluFwdArgs<T>& a, void* stream_ptr) {
  if (!SizesOk(a.rows, a.cols)) return kErrorInvalidArgument;
  if (a.rows == 0 || a.cols == 0) return 0;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Plan p = MakePlan<T>(a.rows, a.cols, FwdAligned(a));
  const dim3 grid(p.gx, p.gy), block(p.bx, p.by);
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  if (p.vec == 1) {
    BiasGeluFwdKernel<T, 1><<<grid, block, 0, stream>>>(a);
  } else {
    BiasGeluFwdKernel<T, kFull><<<grid, block, 0, stream>>>(a);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

template <typename T>
size_t BiasGeluBwdWorkspaceBytes(int64_t rows, int64_t cols) {
  if (!SizesOk(rows, cols)) return 0;
  size_t best = 0;
  for (bool aligned : {true, false}) {
    const Plan p = MakePlan<T>(rows, cols, aligned);
    const size_t parts = static_cast<size_t>(p.gy) * p.by;
    best = std::max(best, AlignUp(parts * static_cast<size_t>(cols) * 4));
  }
  return best;
}

template <typename T>
int LaunchBiasGeluBwd(const BiasGeluBwdArgs<T>& a, void* workspace,
                      void* stream_ptr) {
  if (!SizesOk(a.rows, a.cols)) return kErrorInvalidArgument;
  if (a.cols == 0) return 0;
  if (workspace == nullptr) return kErrorInvalidArgument;
  using NT = NativeT<T>;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  float* partials = static_cast<float*>(workspace);
  NT* dbias = reinterpret_cast<NT*>(a.dbias);
  if (a.rows == 0) {
    return LaunchColumnSum<NT>(partials, 0, a.cols, dbias, dbias, 1, stream);
  }
  const Plan p = MakePlan<T>(a.rows, a.cols, BwdAligned(a));
  const dim3 grid(p.gx, p.gy), block(p.bx, p.by);
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  if (p.vec == 1) {
    BiasGeluBwdKernel<T, 1><<<grid, block, 0, stream>>>(a, partials);
  } else {
    BiasGeluBwdKernel<T, kFull><<<grid, block, 0, stream>>>(a, partials);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  const int64_t parts = static_cast<int64_t>(p.gy) * p.by;
  return LaunchColumnSum<NT>(partials, parts, a.cols, dbias, dbias, 1, stream);
}

#define KBM_INSTANTIATE_BIAS_GELU(T)                                   \
  template int LaunchBiasGeluFwd<T>(const BiasGeluFwdArgs<T>&, void*); \
  template size_t BiasGeluBwdWorkspaceBytes<T>(int64_t, int64_t);      \
  template int LaunchBiasGeluBwd<T>(const BiasGeluBwdArgs<T>&, void*, void*);

KBM_INSTANTIATE_BIAS_GELU(float)
KBM_INSTANTIATE_BIAS_GELU(Half)
KBM_INSTANTIATE_BIAS_GELU(BFloat16)

#undef KBM_INSTANTIATE_BIAS_GELU

}  // namespace gpu
}  // namespace kbm
