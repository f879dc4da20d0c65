// Deterministic column sums of per-block partials: the second pass of the
// dgamma / dbeta / dbias reductions (no float atomics). CUDA headers only.
#ifndef KERAS_BIGMODELS_CC_COMMON_GPU_COLUMN_SUM_CUH_
#define KERAS_BIGMODELS_CC_COMMON_GPU_COLUMN_SUM_CUH_

#include <cstdint>

#include "cc/common/gpu/device_utils.cuh"

namespace kbm {
namespace gpu {

constexpr int kColumnSumX = 32;  // columns per block
constexpr int kColumnSumY = 16;  // partial rows read in parallel per column

// out_k[c] = sum over p < parts of partials[(k * parts + p) * cols + c], for
// k = blockIdx.y (0 -> out0, 1 -> out1). Block (kColumnSumX, kColumnSumY),
// grid (CeilDiv(cols, kColumnSumX), number of outputs). The summation order
// is fixed, so results do not depend on scheduling. parts == 0 gives zeros.
template <typename O>
__global__ void __launch_bounds__(kColumnSumX* kColumnSumY)
    ColumnSumKernel(const float* __restrict__ partials, int64_t parts,
                    int64_t cols, O* __restrict__ out0, O* __restrict__ out1) {
  __shared__ float tile[kColumnSumY][kColumnSumX + 1];
  const int64_t c =
      static_cast<int64_t>(blockIdx.x) * kColumnSumX + threadIdx.x;
  const float* base = partials + blockIdx.y * parts * cols;
  float acc = 0.0f;
  if (c < cols) {
    for (int64_t p = threadIdx.y; p < parts; p += kColumnSumY) {
      acc += base[p * cols + c];
    }
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float s = 0.0f;
#pragma unroll
    for (int y = 0; y < kColumnSumY; ++y) s += tile[y][threadIdx.x];
    O* out = blockIdx.y == 0 ? out0 : out1;
    out[c] = FromFloat<O>(s);
  }
}

// Enqueues ColumnSumKernel for `outputs` (1 or 2) reductions.
template <typename O>
int LaunchColumnSum(const float* partials, int64_t parts, int64_t cols, O* out0,
                    O* out1, int outputs, cudaStream_t stream) {
  if (cols <= 0) return 0;
  const dim3 grid(static_cast<unsigned>(CeilDiv(cols, kColumnSumX)), outputs);
  const dim3 block(kColumnSumX, kColumnSumY);
  ColumnSumKernel<O>
      <<<grid, block, 0, stream>>>(partials, parts, cols, out0, out1);
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_COMMON_GPU_COLUMN_SUM_CUH_
