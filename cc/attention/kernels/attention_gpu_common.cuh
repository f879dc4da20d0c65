// Device code shared by the CUDA flash-attention kernels: kernel parameters,
// visibility (masks, causal), dropout keep factors, tile loads, mma.sync.
// CUDA headers only; included by the attention *_gpu.cu.cc files.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_COMMON_CUH_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cc/attention/kernels/attention_gpu.h"
#include "cc/common/gpu/device_utils.cuh"
#include "cc/common/philox.h"

namespace kbm {
namespace gpu {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Everything a kernel needs, by value. E is the element storage type
// (uint16_t bits for float16/bfloat16, float for float32).
template <typename E>
struct KParams {
  const E* q;
  const E* k;
  const E* v;
  const E* d_o;
  const E* o;
  const bool* key_mask;
  const bool* mask;
  const float* lse_in;
  const float* delta;
  E* out;  // o (forward) or unused
  float* lse_out;
  E* dq;
  E* dk;
  E* dv;
  int64_t B, Tq, Tk, Hq, Hkv, D, Dv, mask_batch, group;
  int64_t causal_offset;
  bool causal;
  float scale;
  float scale_log2;  // scale * log2(e)
  float rate;
  uint32_t threshold;
  float keep_scale;  // 1 / (1 - rate)
  uint64_t seed0, seed1;
};

// Which tensors may use 16-byte loads.
struct VecFlags {
  bool q, k, v, d_o;
};

// The tensor-core kernels of one 16-bit type (attention_f16_gpu.cu.cc,
// attention_bf16_gpu.cu.cc). kind: 0 forward, 1 dQ, 2 dK/dV; pad: the padded
// head dim (32, 64, 96, 128 or 256).
int LaunchMmaF16(int kind, int pad, const KParams<uint16_t>& p,
                 const VecFlags& vf, cudaStream_t stream);
int LaunchMmaBf16(int kind, int pad, const KParams<uint16_t>& p,
                  const VecFlags& vf, cudaStream_t stream);

// Whether query i of batch b sees key j (bounds, masks, causal).
template <typename E>
__device__ __forceinline__ bool Visible(const KParams<E>& p, int64_t b,
                                        int64_t i, int64_t j) {
  if (i < 0 || i >= p.Tq || j < 0 || j >= p.Tk) return false;
  if (p.causal && j > i + p.causal_offset) return false;
  if (p.key_mask != nullptr && !p.key_mask[b * p.Tk + j]) return false;
  if (p.mask != nullptr &&
      !p.mask[((p.mask_batch == 1 ? 0 : b) * p.Tq + i) * p.Tk + j]) {
    return false;
  }
  return true;
}

// keep / (1 - rate) for element (b, h, i, j); 1 without dropout.
template <typename E>
__device__ __forceinline__ float KeepScale(const KParams<E>& p, int64_t b,
                                           int64_t h, int64_t i, int64_t j) {
  if (!(p.rate > 0.0f)) return 1.0f;
  const uint64_t flat = static_cast<uint64_t>(
      ((b * p.Hq + h) * p.Tq + i) * p.Tk + j);
  return kbm_philox::AttentionDropoutKeep(p.seed0, p.seed1, flat,
                                          p.threshold)
             ? p.keep_scale
             : 0.0f;
}

// Copies rows [r0, r0 + R) (of n_rows) and columns [0, n_cols) of a strided
// 16-bit matrix into shared memory rows of LD elements; zero elsewhere up to
// column P. `vec`: 16-byte loads (n_cols, row_stride multiples of 8, base
// 16-byte aligned).
template <int R, int P, int LD>
__device__ __forceinline__ void LoadTile(uint16_t* s, const uint16_t* g,
                                         int64_t row_stride, int64_t r0,
                                         int64_t n_rows, int64_t n_cols,
                                         bool vec) {
  if (vec) {
    constexpr int kChunks = P / 8;
    for (int idx = threadIdx.x; idx < R * kChunks; idx += blockDim.x) {
      const int r = idx / kChunks, c = (idx % kChunks) * 8;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (r0 + r < n_rows && c < n_cols) {
        val = __ldg(reinterpret_cast<const uint4*>(g + (r0 + r) * row_stride +
                                                   c));
      }
      *reinterpret_cast<uint4*>(s + r * LD + c) = val;
    }
  } else {
    for (int idx = threadIdx.x; idx < R * P; idx += blockDim.x) {
      const int r = idx / P, c = idx % P;
      uint16_t val = 0;
      if (r0 + r < n_rows && c < n_cols) val = g[(r0 + r) * row_stride + c];
      s[r * LD + c] = val;
    }
  }
}

__device__ __forceinline__ uint32_t Ld32(const uint16_t* s) {
  return *reinterpret_cast<const uint32_t*>(s);
}
__device__ __forceinline__ uint32_t Ld2x16(const uint16_t* lo,
                                           const uint16_t* hi) {
  return static_cast<uint32_t>(*lo) | (static_cast<uint32_t>(*hi) << 16);
}

template <bool kBf16>
__device__ __forceinline__ uint32_t PackF2(float lo, float hi) {
  if constexpr (kBf16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

template <bool kBf16>
__device__ __forceinline__ uint16_t FloatToBits(float x) {
  if constexpr (kBf16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  } else {
    return __half_as_ushort(__float2half_rn(x));
  }
}

// c += a * b for one m16n8k16 tile (row-major A, column-major B, fp32 C).
template <bool kBf16>
__device__ __forceinline__ void Mma(float c[4], uint32_t a0, uint32_t a1,
                                    uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Max / sum over the 4 lanes that share a row of an mma C fragment.
__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace attn
}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_COMMON_CUH_
