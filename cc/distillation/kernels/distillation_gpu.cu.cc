// CUDA kernels of Kbm>SoftmaxKLDivergence and its gradient: float32 /
// float16 / bfloat16 logits, float32 arithmetic.
//
// Forward: one block per row, one read of both rows: each thread keeps an
// online log-sum-exp state (running max, rescaled sum) for the teacher and
// the student plus the teacher-weighted sum of (t - s), and the block merges
// the states. Backward: one block per row, elementwise from the saved
// log-sum-exps and loss. Loads are 16-byte vectors when the row length and
// pointers allow, kUnroll vectors in flight per thread.
#include "cc/distillation/kernels/distillation_gpu.h"

#include <algorithm>

#include "cc/common/gpu/device_utils.cuh"

namespace kbm {
namespace gpu {
namespace {

constexpr int kMaxThreads = 512;
constexpr int kUnroll = 4;

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

// Online softmax statistics of a set of scaled logits (a = logit / T):
// teacher max mt, sum st = sum exp(at - mt), w = sum exp(at - mt) (at - as);
// student max ms, sum ss.
struct KLState {
  float mt, st, w, ms, ss;
};

__device__ __forceinline__ KLState EmptyState() {
  return {-INFINITY, 0.0f, 0.0f, -INFINITY, 0.0f};
}

__device__ __forceinline__ void Update(KLState& s, float at, float as) {
  if (as != -INFINITY) {
    if (as > s.ms) {
      s.ss = s.ss * __expf(s.ms - as) + 1.0f;
      s.ms = as;
    } else {
      s.ss += __expf(as - s.ms);
    }
  }
  if (at != -INFINITY) {
    const float d = at - as;
    // A class whose teacher weight underflows to 0 adds nothing to w, as on
    // the CPU (et == 0 is skipped there): its d may be +inf (student logit
    // -inf) and 0 * inf would make the loss NaN.
    if (at > s.mt) {
      const float e = __expf(s.mt - at);
      s.st = s.st * e + 1.0f;
      s.w = (e == 0.0f ? 0.0f : s.w * e) + d;
      s.mt = at;
    } else {
      const float e = __expf(at - s.mt);
      s.st += e;
      if (e != 0.0f) s.w += e * d;
    }
  }
}

// exp(m_part - m) for merging, 0 for an empty part.
__device__ __forceinline__ float Rescale(float m_part, float m) {
  return m_part == -INFINITY ? 0.0f : __expf(m_part - m);
}

__device__ __forceinline__ KLState Merge(const KLState& a, const KLState& b) {
  KLState r;
  r.mt = fmaxf(a.mt, b.mt);
  const float fa = Rescale(a.mt, r.mt), fb = Rescale(b.mt, r.mt);
  r.st = a.st * fa + b.st * fb;
  // Weights rescaled to 0 drop out of w (see Update).
  r.w = (fa == 0.0f ? 0.0f : a.w * fa) + (fb == 0.0f ? 0.0f : b.w * fb);
  r.ms = fmaxf(a.ms, b.ms);
  r.ss = a.ss * Rescale(a.ms, r.ms) + b.ss * Rescale(b.ms, r.ms);
  return r;
}

__device__ __forceinline__ KLState ShflXor(const KLState& s, int offset) {
  KLState r;
  r.mt = __shfl_xor_sync(0xffffffffu, s.mt, offset);
  r.st = __shfl_xor_sync(0xffffffffu, s.st, offset);
  r.w = __shfl_xor_sync(0xffffffffu, s.w, offset);
  r.ms = __shfl_xor_sync(0xffffffffu, s.ms, offset);
  r.ss = __shfl_xor_sync(0xffffffffu, s.ss, offset);
  return r;
}

__device__ __forceinline__ KLState WarpMerge(KLState s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    s = Merge(s, ShflXor(s, offset));
  }
  return s;
}

// Block of blockDim.x threads (multiple of 32) per row.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads)
    SoftmaxKLFwdKernel(SoftmaxKLFwdArgs<T> a) {
  using NT = NativeT<T>;
  __shared__ KLState warp_states[32];
  const float inv_t = 1.0f / a.temperature;
  const int64_t cols = a.cols;
  const int64_t nvec = cols / V;  // V divides cols
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const NT* t = reinterpret_cast<const NT*>(a.teacher) + row * cols;
    const NT* s = reinterpret_cast<const NT*>(a.student) + row * cols;
    KLState st = EmptyState();
    for (int64_t base = threadIdx.x; base < nvec;
         base += static_cast<int64_t>(blockDim.x) * kUnroll) {
      float vt[kUnroll][V], vs[kUnroll][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = base + static_cast<int64_t>(u) * blockDim.x;
        if (k < nvec) {
          LoadVec<NT, V>(t + k * V, vt[u]);
          LoadVec<NT, V>(s + k * V, vs[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = base + static_cast<int64_t>(u) * blockDim.x;
        if (k < nvec) {
#pragma unroll
          for (int e = 0; e < V; ++e) {
            // Rounded products (never fused into an FMA), as in the
            // backward pass: log q of the largest logit is then exact.
            Update(st, __fmul_rn(vt[u][e], inv_t), __fmul_rn(vs[u][e], inv_t));
          }
        }
      }
    }
    st = WarpMerge(st);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    __syncthreads();  // warp_states may still be read for the previous row
    if (lane == 0) warp_states[warp] = st;
    __syncthreads();
    if (warp == 0) {
      st = lane < warps ? warp_states[lane] : EmptyState();
      st = WarpMerge(st);
      if (lane == 0) {
        const float lse_t = st.mt + logf(st.st);
        const float lse_s = st.ms + logf(st.ss);
        a.loss[row] = st.w / st.st - lse_t + lse_s;
        a.teacher_lse[row] = lse_t;
        a.student_lse[row] = lse_s;
      }
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads)
    SoftmaxKLBwdKernel(SoftmaxKLBwdArgs<T> a) {
  using NT = NativeT<T>;
  const float inv_t = 1.0f / a.temperature;
  const int64_t cols = a.cols;
  const int64_t nvec = cols / V;
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const NT* t = reinterpret_cast<const NT*>(a.teacher) + row * cols;
    const NT* s = reinterpret_cast<const NT*>(a.student) + row * cols;
    NT* ds = reinterpret_cast<NT*>(a.dstudent) + row * cols;
    NT* dt = a.dteacher == nullptr
                 ? nullptr
                 : reinterpret_cast<NT*>(a.dteacher) + row * cols;
    const float lse_t = a.teacher_lse[row], lse_s = a.student_lse[row];
    const float loss = a.loss[row];
    const float g = a.dloss[row] * inv_t;
    for (int64_t base = threadIdx.x; base < nvec;
         base += static_cast<int64_t>(blockDim.x) * kUnroll) {
      float vt[kUnroll][V], vs[kUnroll][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = base + static_cast<int64_t>(u) * blockDim.x;
        if (k < nvec) {
          LoadVec<NT, V>(t + k * V, vt[u]);
          LoadVec<NT, V>(s + k * V, vs[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = base + static_cast<int64_t>(u) * blockDim.x;
        if (k < nvec) {
          float out_s[V], out_t[V];
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const float lp = __fmul_rn(vt[u][e], inv_t) - lse_t;
            const float lq = __fmul_rn(vs[u][e], inv_t) - lse_s;
            const float p = vt[u][e] == -INFINITY ? 0.0f : __expf(lp);
            const float q = vs[u][e] == -INFINITY ? 0.0f : __expf(lq);
            out_s[e] = g * (q - p);
            out_t[e] = p == 0.0f ? 0.0f : g * p * (lp - lq - loss);
          }
          StoreVec<NT, V>(ds + k * V, out_s);
          if (dt != nullptr) StoreVec<NT, V>(dt + k * V, out_t);
        }
      }
    }
  }
}

bool SizesOk(int64_t rows, int64_t cols, float temperature) {
  return rows >= 0 && cols >= 0 && temperature > 0.0f && temperature < INFINITY;
}

// Threads per row block: about kUnroll vectors per thread per sweep.
int RowThreads(int64_t nvec) {
  const int64_t t = CeilDiv(CeilDiv(nvec, kUnroll), 32) * 32;
  return static_cast<int>(
      std::min<int64_t>(std::max<int64_t>(t, 32), kMaxThreads));
}

int RowGrid(int64_t rows) {
  return static_cast<int>(std::min<int64_t>(rows, 0x7fffffff));
}

}  // namespace

template <typename T>
int LaunchSoftmaxKLFwd(const SoftmaxKLFwdArgs<T>& a, void* stream_ptr) {
  if (!SizesOk(a.rows, a.cols, a.temperature)) return kErrorInvalidArgument;
  if (a.rows == 0) return 0;
  if (a.cols == 0) return kErrorInvalidArgument;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  const bool vec = a.cols % kFull == 0 && IsAligned<T, kFull>(a.teacher) &&
                   IsAligned<T, kFull>(a.student);
  if (vec) {
    SoftmaxKLFwdKernel<T, kFull>
        <<<RowGrid(a.rows), RowThreads(a.cols / kFull), 0, stream>>>(a);
  } else {
    SoftmaxKLFwdKernel<T, 1>
        <<<RowGrid(a.rows), RowThreads(a.cols), 0, stream>>>(a);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

template <typename T>
int LaunchSoftmaxKLBwd(const SoftmaxKLBwdArgs<T>& a, void* stream_ptr) {
  if (!SizesOk(a.rows, a.cols, a.temperature)) return kErrorInvalidArgument;
  if (a.rows == 0 || a.cols == 0) return 0;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  constexpr int kFull = static_cast<int>(16 / sizeof(T));
  const bool vec = a.cols % kFull == 0 && IsAligned<T, kFull>(a.teacher) &&
                   IsAligned<T, kFull>(a.student) &&
                   IsAligned<T, kFull>(a.dstudent) &&
                   (a.dteacher == nullptr || IsAligned<T, kFull>(a.dteacher));
  if (vec) {
    SoftmaxKLBwdKernel<T, kFull>
        <<<RowGrid(a.rows), RowThreads(a.cols / kFull), 0, stream>>>(a);
  } else {
    SoftmaxKLBwdKernel<T, 1>
        <<<RowGrid(a.rows), RowThreads(a.cols), 0, stream>>>(a);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

#define KBM_INSTANTIATE_KL(T)                                            \
  template int LaunchSoftmaxKLFwd<T>(const SoftmaxKLFwdArgs<T>&, void*); \
  template int LaunchSoftmaxKLBwd<T>(const SoftmaxKLBwdArgs<T>&, void*);

KBM_INSTANTIATE_KL(float)
KBM_INSTANTIATE_KL(Half)
KBM_INSTANTIATE_KL(BFloat16)

#undef KBM_INSTANTIATE_KL

}  // namespace gpu
}  // namespace kbm
