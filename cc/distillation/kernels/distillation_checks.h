// Input checks of the distillation OpKernels, shared by the CPU kernels
// (distillation_kernels.cc) and the GPU kernels (distillation_gpu_kernels.cc)
// so both report bad input alike.
#ifndef KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_CHECKS_H_
#define KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_CHECKS_H_

#include <cmath>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc/common/kernel_utils.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {

// Checks teacher and student logits [..., C] of one shape. Returns C.
inline absl::Status CheckLogits(const Tensor& t, const Tensor& s, int64_t* c) {
  if (t.dims() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "teacher_logits must have rank >= 1 ([..., classes]), got shape ",
        ShapeString(t)));
  }
  if (t.shape() != s.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat("student_logits must have the shape of teacher_logits ",
                     ShapeString(t), ", got ", ShapeString(s)));
  }
  *c = t.dim_size(t.dims() - 1);
  if (*c == 0 && LeadingShape(t).num_elements() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the logits need at least one class, got shape ", ShapeString(t)));
  }
  return absl::OkStatus();
}

inline absl::Status CheckTemperature(float temperature) {
  if (!(temperature > 0.f && std::isfinite(temperature))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be a positive number, got ", temperature));
  }
  return absl::OkStatus();
}

// Checks the per-row inputs of the gradient op (dloss, loss, teacher_lse,
// student_lse: inputs 0, 3, 4, 5) against the logits' leading shape.
inline absl::Status CheckKLGradRowInputs(OpKernelContext* ctx,
                                         const TensorShape& rows_shape) {
  // Named after the op's inputs (Kbm>SoftmaxKLDivergenceGrad).
  constexpr std::pair<int, const char*> kRowInputs[] = {
      {0, "dloss"}, {3, "loss"}, {4, "teacher_lse"}, {5, "student_lse"}};
  for (const auto& [i, name] : kRowInputs) {
    if (ctx->input(i).shape() != rows_shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " must have shape ", rows_shape.DebugString(),
          " (the logits' leading axes), got ", ShapeString(ctx->input(i))));
    }
  }
  return absl::OkStatus();
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_CHECKS_H_
