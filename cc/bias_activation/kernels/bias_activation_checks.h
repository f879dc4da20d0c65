// Input checks of the bias + activation OpKernels, shared by the CPU
// kernels (bias_activation_kernels.cc) and the GPU kernels
// (bias_activation_gpu_kernels.cc) so both report bad input alike.
#ifndef KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_CHECKS_H_
#define KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_CHECKS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc/common/kernel_utils.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {

// Checks x: [..., C] and bias: [C]. Returns C.
inline absl::Status CheckBiasInputs(const Tensor& x, const Tensor& bias,
                                    int64_t* c) {
  if (x.dims() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "x must have rank >= 1 (bias is added over its last axis), got shape ",
        ShapeString(x)));
  }
  *c = x.dim_size(x.dims() - 1);
  if (bias.dims() != 1 || bias.dim_size(0) != *c) {
    return absl::InvalidArgumentError(
        absl::StrCat("bias must have shape [", *c, "] (the last axis of x ",
                     ShapeString(x), "), got ", ShapeString(bias)));
  }
  return absl::OkStatus();
}

// Checks dy against x's shape (the gradient op).
inline absl::Status CheckBiasGradInputs(const Tensor& dy, const Tensor& x) {
  if (dy.shape() != x.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dy must have the shape of x ", ShapeString(x), ", got ",
                     ShapeString(dy)));
  }
  return absl::OkStatus();
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_CHECKS_H_
