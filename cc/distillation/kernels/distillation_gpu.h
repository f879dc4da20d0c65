// Launcher API of the distillation family's CUDA kernels (temperature-scaled
// softmax KL divergence between teacher and student logits, per row, and its
// gradient), framework-free (see cc/common/gpu/gpu_types.h). Logits are
// [rows, cols] row-major in T (float, Half or BFloat16); loss, lse and dloss
// are float32 [rows]. Launchers enqueue on `stream` only, never allocate or
// synchronise, and return 0 or an error code. dstudent may alias
// student_logits and dteacher teacher_logits.
#ifndef KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_GPU_H_
#define KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_GPU_H_

#include <cstddef>
#include <cstdint>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

// With t = teacher / temperature, s = student / temperature, p = softmax(t),
// q = softmax(s): loss = sum_j p_j (log p_j - log q_j), teacher_lse =
// logsumexp(t), student_lse = logsumexp(s). Classes whose teacher logit is
// -inf, or whose teacher weight underflows to 0, contribute 0 (as on the
// CPU, also where the student logit is -inf).
template <typename T>
struct SoftmaxKLFwdArgs {
  const T* teacher;
  const T* student;
  float* loss;
  float* teacher_lse;
  float* student_lse;
  int64_t rows;
  int64_t cols;
  float temperature;
};

// dstudent = dloss * (q - p) / temperature; dteacher (when not null) =
// dloss * p * (log p - log q - loss) / temperature.
template <typename T>
struct SoftmaxKLBwdArgs {
  const float* dloss;
  const T* teacher;
  const T* student;
  const float* loss;
  const float* teacher_lse;
  const float* student_lse;
  T* dteacher;  // null: no teacher gradient
  T* dstudent;
  int64_t rows;
  int64_t cols;
  float temperature;
};

template <typename T>
int LaunchSoftmaxKLFwd(const SoftmaxKLFwdArgs<T>& args, void* stream);
template <typename T>
int LaunchSoftmaxKLBwd(const SoftmaxKLBwdArgs<T>& args, void* stream);

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_GPU_H_
