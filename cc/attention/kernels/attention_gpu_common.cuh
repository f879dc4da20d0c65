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
  // Grid y and z are limited to 65535 blocks: a launch covers heads
  // [head0, head0 + grid_heads) (query heads, kv heads for dK/dV) on
  // blockIdx.y and batch elements [batch0, batch0 + grid_batch) on
  // blockIdx.z; LaunchKind issues as many launches as needed.
  int64_t head0, batch0;
  unsigned grid_heads, grid_batch;
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
// head dim (32, 64, 96, 128 or 256); variant: AttentionParams::variant.
int LaunchMmaF16(int kind, int pad, int variant, const KParams<uint16_t>& p,
                 const VecFlags& vf, cudaStream_t stream);
int LaunchMmaBf16(int kind, int pad, int variant, const KParams<uint16_t>& p,
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
  const uint64_t flat =
      static_cast<uint64_t>(((b * p.Hq + h) * p.Tq + i) * p.Tk + j);
  return kbm_philox::AttentionDropoutKeep(p.seed0, p.seed1, flat, p.threshold)
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
        val = __ldg(
            reinterpret_cast<const uint4*>(g + (r0 + r) * row_stride + c));
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

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 16-bit matrices from shared memory; lane l gives the row address
// of matrix l / 8, row l % 8 (16-byte aligned).
__device__ __forceinline__ void LdMatrixX4(uint32_t r[4], const uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p))
               : "memory");
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t r[4],
                                                const uint16_t* p) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(SmemAddr(p))
      : "memory");
}

// 16 bytes global -> shared without staging in registers; zero-fill when
// !pred (`g` must still be a valid address).
__device__ __forceinline__ void CpAsync16(void* s, const void* g, bool pred) {
  asm volatile(
      "cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(s)),
      "l"(g), "r"(pred ? 16 : 0)
      : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// LoadTile through cp.async when `vec` (complete after CpAsyncCommit +
// CpAsyncWaitAll + __syncthreads), else synchronously.
template <int R, int P, int LD>
__device__ __forceinline__ void LoadTileAsync(uint16_t* s, const uint16_t* g,
                                              int64_t row_stride, int64_t r0,
                                              int64_t n_rows, int64_t n_cols,
                                              bool vec) {
  if (vec) {
    constexpr int kChunks = P / 8;
    for (int idx = threadIdx.x; idx < R * kChunks; idx += blockDim.x) {
      const int r = idx / kChunks, c = (idx % kChunks) * 8;
      const bool in = r0 + r < n_rows && c < n_cols;
      CpAsync16(s + r * LD + c, in ? g + (r0 + r) * row_stride + c : g, in);
    }
  } else {
    LoadTile<R, P, LD>(s, g, row_stride, r0, n_rows, n_cols, false);
  }
}

// mma fragments from a shared-memory tile with rows of LD elements.
// A (16 x 16) at (r0, c0): a[0..3] as in attention_gpu_mma.cuh.
template <int LD>
__device__ __forceinline__ void FragA(uint32_t a[4], const uint16_t* s, int r0,
                                      int c0) {
  const int lane = threadIdx.x & 31;
  LdMatrixX4(a, s + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 +
                    (lane >> 4) * 8);
}
// B fragments of two n-tiles from a tile stored [n][k] (rows n0..n0+15, k
// columns k0..k0+15): b[0], b[1] of n-tile n0; b[2], b[3] of n-tile n0 + 8.
template <int LD>
__device__ __forceinline__ void FragBNK(uint32_t b[4], const uint16_t* s,
                                        int n0, int k0) {
  const int lane = threadIdx.x & 31;
  LdMatrixX4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * LD + k0 +
                    ((lane >> 3) & 1) * 8);
}
// B fragments of two n-tiles from a tile stored [k][n] (rows k0..k0+15, n
// columns n0..n0+15): b[0], b[1] of n-tile n0; b[2], b[3] of n-tile n0 + 8.
template <int LD>
__device__ __forceinline__ void FragBKN(uint32_t b[4], const uint16_t* s,
                                        int k0, int n0) {
  const int lane = threadIdx.x & 31;
  LdMatrixX4Trans(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 +
                         (lane >> 4) * 8);
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
