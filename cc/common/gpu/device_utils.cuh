// Device helpers shared by kbm's CUDA kernels: native 16-bit types, float
// conversion, vector loads, warp and block reductions, launch checks.
// CUDA headers only; include from *_gpu.cu.cc files, never from g++ code.
#ifndef KERAS_BIGMODELS_CC_COMMON_GPU_DEVICE_UTILS_CUH_
#define KERAS_BIGMODELS_CC_COMMON_GPU_DEVICE_UTILS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

// Launcher tag type -> the CUDA type kernels compute with.
template <typename T>
struct Native {
  using type = T;
};
template <>
struct Native<Half> {
  using type = __half;
};
template <>
struct Native<BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using NativeT = typename Native<T>::type;

static_assert(sizeof(__half) == sizeof(Half), "half layout");
static_assert(sizeof(__nv_bfloat16) == sizeof(BFloat16), "bfloat16 layout");

template <typename T>
const NativeT<T>* AsNative(const T* p) {
  return reinterpret_cast<const NativeT<T>*>(p);
}
template <typename T>
NativeT<T>* AsNative(T* p) {
  return reinterpret_cast<NativeT<T>*>(p);
}

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N elements of T in one aligned load/store (16 bytes when sizeof(T)*N==16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// True when `p` is aligned for a Vec<T, N> access.
template <typename T, int N>
__host__ __device__ __forceinline__ bool IsAligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 floats of shared memory; the
// call synchronises the block.
__device__ __forceinline__ float BlockSum(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  x = WarpSum(x);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(x);
}

__device__ __forceinline__ float BlockMax(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  x = WarpMax(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(x);
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A grid size for `work_items` independent items of `per_block` each,
// capped at `waves` full waves of the device (grid-stride loops do the rest).
inline int GridSize(int64_t work_items, int per_block, int waves = 8) {
  const int64_t blocks = CeilDiv(work_items, per_block);
  const int64_t cap = static_cast<int64_t>(MultiProcessorCount()) * waves;
  const int64_t g = cap > 0 && blocks > cap ? cap : blocks;
  return static_cast<int>(g < 1 ? 1 : g);
}

}  // namespace gpu
}  // namespace kbm

// Returns the launch error of the previous kernel, if any, from a launcher.
#define KBM_RETURN_IF_LAUNCH_ERROR()                \
  do {                                              \
    const cudaError_t kbm_err = cudaGetLastError(); \
    if (kbm_err != cudaSuccess) return kbm_err;     \
  } while (0)

#endif  // KERAS_BIGMODELS_CC_COMMON_GPU_DEVICE_UTILS_CUH_
