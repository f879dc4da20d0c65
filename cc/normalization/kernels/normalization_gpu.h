// Launcher API of the normalisation family's CUDA kernels (LayerNorm and
// RMSNorm over the last axis, forward and backward).
//
// Framework-free (see cc/common/gpu/gpu_types.h): the TF OpKernels
// (normalization_gpu_kernels.cc) and the TF-free harness shim both call these.
// x is [rows, cols] row-major in T (float, Half or BFloat16); gamma, beta,
// mean, rstd, dgamma and dbeta are float32. Launchers enqueue on `stream`
// (a cudaStream_t) only, never allocate and never synchronise; they return
// 0 or an error code (gpu_types.h). y may alias x and dx may alias dy.
#ifndef KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_GPU_H_
#define KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_GPU_H_

#include <cstddef>
#include <cstdint>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

// y = (x - mean) * rstd * gamma + beta (LayerNorm), or y = x * rstd * gamma
// (RMSNorm: beta and mean are null and ignored).
template <typename T>
struct NormFwdArgs {
  const T* x;
  const float* gamma;
  const float* beta;  // LayerNorm only.
  T* y;
  float* mean;  // [rows]; LayerNorm only.
  float* rstd;  // [rows]
  int64_t rows;
  int64_t cols;
  float epsilon;
};

// dx, and dgamma (and dbeta for LayerNorm) summed over rows, from the
// forward's saved mean (LayerNorm) and rstd.
template <typename T>
struct NormBwdArgs {
  const T* dy;
  const T* x;
  const float* gamma;
  const float* mean;  // LayerNorm only.
  const float* rstd;
  T* dx;
  float* dgamma;
  float* dbeta;  // LayerNorm only.
  int64_t rows;
  int64_t cols;
};

template <typename T>
int LaunchLayerNormFwd(const NormFwdArgs<T>& args, void* stream);
template <typename T>
int LaunchRmsNormFwd(const NormFwdArgs<T>& args, void* stream);

// Scratch bytes of the backward launchers (per-block dgamma/dbeta partials,
// reduced by a second kernel: deterministic, no float atomics). Depends on
// the current device (its multiprocessor count).
template <typename T>
size_t LayerNormBwdWorkspaceBytes(int64_t rows, int64_t cols);
template <typename T>
size_t RmsNormBwdWorkspaceBytes(int64_t rows, int64_t cols);

template <typename T>
int LaunchLayerNormBwd(const NormBwdArgs<T>& args, void* workspace,
                       void* stream);
template <typename T>
int LaunchRmsNormBwd(const NormBwdArgs<T>& args, void* workspace, void* stream);

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_GPU_H_
