// Launcher API of the optimizer family's CUDA kernels: multi-tensor, in-place
// AdamW (Adam family), LAMB and Lion over many variables at once.
//
// The arrays of pointers and sizes are host arrays (read during the call);
// the tensors they point to, the scalars and `decay` are device memory. The
// kernels read the scalars from device memory, so a step's learning rate or
// bias correction computed on the GPU never goes through the host.
//
// Element arithmetic: the CPU kernels' (optimizers.h), in float32 for every
// variable type (float16 and bfloat16 values are widened on load and rounded
// to nearest even on store). Gradients have the variable's type.
//
// Variables are packed into tables of at most kMaxTensorsPerLaunch tensors
// passed as kernel parameters (no host->device copy, no allocation); each
// table is one launch whose blocks each update one chunk of
// kChunkElements elements of one tensor. LAMB runs three launches per table:
// moments and per-chunk squared norms into the workspace, one block per
// tensor summing its chunks' partials in a fixed order (float64) into the
// trust ratio, and the update. All reductions are deterministic.
#ifndef KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_GPU_H_
#define KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_GPU_H_

#include <cstddef>
#include <cstdint>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

inline constexpr int kMaxTensorsPerLaunch = 80;
inline constexpr int64_t kChunkElements = 8192;

// Adam family: m += (g - m) * omb1; v += (g*g - v) * omb2; p -= p * decay;
// p -= (m * coef_adaptive) / (sqrt(v / bias_2) + epsilon) + m * coef_sgd.
template <typename T>
struct MultiAdamArgs {
  int num_tensors = 0;
  T* const* params = nullptr;  // [num_tensors] device pointers
  T* const* m = nullptr;
  T* const* v = nullptr;
  const T* const* grads = nullptr;
  const int64_t* sizes = nullptr;  // [num_tensors] element counts
  // Device scalars (float32).
  const float* one_minus_beta_1 = nullptr;
  const float* one_minus_beta_2 = nullptr;
  const float* coef_adaptive = nullptr;
  const float* bias_2 = nullptr;
  const float* coef_sgd = nullptr;
  const float* epsilon = nullptr;
  const float* decay = nullptr;  // device [num_tensors]
};

// LAMB: m, v as Adam; p -= p * decay; u = (m / bias_1) / (sqrt(v / bias_2) +
// epsilon); r = ||p|| / ||u|| per tensor (1 if either is 0);
// p -= (r * learning_rate) * u.
template <typename T>
struct MultiLambArgs {
  int num_tensors = 0;
  T* const* params = nullptr;
  T* const* m = nullptr;
  T* const* v = nullptr;
  const T* const* grads = nullptr;
  const int64_t* sizes = nullptr;
  const float* learning_rate = nullptr;
  const float* one_minus_beta_1 = nullptr;
  const float* one_minus_beta_2 = nullptr;
  const float* bias_1 = nullptr;
  const float* bias_2 = nullptr;
  const float* epsilon = nullptr;
  const float* decay = nullptr;
};

// Lion: p -= p * decay; p -= learning_rate * sign(m * beta_1 + g * (1 -
// beta_1)); m = m * beta_2 + g * (1 - beta_2).
template <typename T>
struct MultiLionArgs {
  int num_tensors = 0;
  T* const* params = nullptr;
  T* const* m = nullptr;
  const T* const* grads = nullptr;
  const int64_t* sizes = nullptr;
  const float* learning_rate = nullptr;
  const float* beta_1 = nullptr;
  const float* beta_2 = nullptr;
  const float* decay = nullptr;
};

template <typename T>
int LaunchMultiAdam(const MultiAdamArgs<T>& args, void* stream);

// Workspace of LaunchMultiLamb: per-chunk partial norms and per-tensor
// ratios, for tensors of these sizes.
size_t MultiLambWorkspaceBytes(int num_tensors, const int64_t* sizes);

template <typename T>
int LaunchMultiLamb(const MultiLambArgs<T>& args, void* workspace,
                    void* stream);

template <typename T>
int LaunchMultiLion(const MultiLionArgs<T>& args, void* stream);

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_GPU_H_
