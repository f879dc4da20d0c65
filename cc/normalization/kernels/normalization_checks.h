// Input checks of the normalisation OpKernels, shared by the CPU kernels
// (normalization_kernels.cc) and the GPU kernels (normalization_gpu_kernels.cc)
// so both report bad input with the same messages.
#ifndef KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_CHECKS_H_
#define KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_CHECKS_H_

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc/common/kernel_utils.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {

// Checks x: [..., C] with C > 0 and each parameter a [C] vector. Returns C.
inline absl::Status CheckNormInputs(
    const Tensor& x, const char* x_name,
    std::initializer_list<std::pair<const char*, const Tensor*>> params,
    int64_t* c) {
  if (x.dims() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(x_name,
                     " must have rank >= 1 (normalisation is over its "
                     "last axis), got shape ",
                     ShapeString(x)));
  }
  *c = x.dim_size(x.dims() - 1);
  if (*c == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        x_name,
        " must have a non-empty last axis to normalise over, got shape ",
        ShapeString(x)));
  }
  for (const auto& [name, t] : params) {
    if (t->dims() != 1 || t->dim_size(0) != *c) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " must have shape [", *c, "] (the last axis of ", x_name, " ",
          ShapeString(x), "), got ", ShapeString(*t)));
    }
  }
  return absl::OkStatus();
}

inline absl::Status CheckSameShape(const Tensor& a, const char* a_name,
                                   const TensorShape& want, const char* what) {
  if (a.shape() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(a_name, " must have shape ", want.DebugString(), " (",
                     what, "), got ", ShapeString(a)));
  }
  return absl::OkStatus();
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_CHECKS_H_
