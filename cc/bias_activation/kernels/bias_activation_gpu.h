// Launcher API of the bias + activation family's CUDA kernels
// (y = gelu(x + bias) and its gradient), framework-free (see
// cc/common/gpu/gpu_types.h). x is [rows, cols] row-major in T (float, Half
// or BFloat16), bias and dbias are [cols] in T. Launchers enqueue on
// `stream` only, never allocate or synchronise, and return 0 or an error
// code. y may alias x and dx may alias dy.
#ifndef KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_GPU_H_
#define KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_GPU_H_

#include <cstddef>
#include <cstdint>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

// y = gelu(x + bias): exact (erf) GELU, or the tanh approximation.
template <typename T>
struct BiasGeluFwdArgs {
  const T* x;
  const T* bias;
  T* y;
  int64_t rows;
  int64_t cols;
  bool approximate;
};

// dx = dy * gelu'(x + bias); dbias = dx summed over rows (float32
// accumulation, per-block partials reduced by a second kernel).
template <typename T>
struct BiasGeluBwdArgs {
  const T* dy;
  const T* x;
  const T* bias;
  T* dx;
  T* dbias;
  int64_t rows;
  int64_t cols;
  bool approximate;
};

template <typename T>
int LaunchBiasGeluFwd(const BiasGeluFwdArgs<T>& args, void* stream);

// Scratch bytes of LaunchBiasGeluBwd (depends on the current device).
template <typename T>
size_t BiasGeluBwdWorkspaceBytes(int64_t rows, int64_t cols);

template <typename T>
int LaunchBiasGeluBwd(const BiasGeluBwdArgs<T>& args, void* workspace,
                      void* stream);

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_GPU_H_
