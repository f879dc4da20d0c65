// Input checks shared by the CPU and GPU OpKernels of the optimizer family:
// the named scalar inputs, the per-variable decay vector, and the
// (variable, slots, gradient) groups once their tensors are taken.
#ifndef KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_INPUTS_H_
#define KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_INPUTS_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {
namespace kbm {

// Scalar inputs of each op, in the order of the fields of AdamScalars,
// LambScalars and LionScalars (optimizers.h).
inline constexpr const char* kAdamScalarNames[] = {
    "one_minus_beta_1", "one_minus_beta_2", "coef_adaptive",
    "bias_2",           "coef_sgd",         "epsilon"};
inline constexpr const char* kLambScalarNames[] = {
    "learning_rate", "one_minus_beta_1", "one_minus_beta_2",
    "bias_1",        "bias_2",           "epsilon"};
inline constexpr const char* kLionScalarNames[] = {"learning_rate", "beta_1",
                                                   "beta_2"};

// The named inputs, each checked to be a scalar.
template <int K>
absl::Status ScalarInputs(OpKernelContext* ctx, const char* const (&names)[K],
                          const Tensor* (&out)[K]) {
  for (int k = 0; k < K; ++k) {
    TF_RETURN_IF_ERROR(ctx->input(names[k], &out[k]));
    if (!TensorShapeUtils::IsScalar(out[k]->shape())) {
      return absl::InvalidArgumentError(
          absl::StrCat(names[k], " must be a scalar, got shape ",
                       out[k]->shape().DebugString()));
    }
  }
  return absl::OkStatus();
}

// The `decay` input, checked to have shape [n].
inline absl::Status DecayInput(OpKernelContext* ctx, int n,
                               const Tensor** out) {
  TF_RETURN_IF_ERROR(ctx->input("decay", out));
  if ((*out)->dims() != 1 || (*out)->NumElements() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("decay must have shape [", n, "], got ",
                     (*out)->shape().DebugString()));
  }
  return absl::OkStatus();
}

// Checks the variables' tensors (`tensors[s][i]`: slot list s, named
// `slot_lists[s]`, variable i; list 0 holds the variables) against each
// other and against the gradients: initialized, of dtype `dtype`, all of
// the variable's shape.
inline absl::Status CheckGroups(const std::vector<const char*>& slot_lists,
                                const std::vector<std::vector<Tensor>>& tensors,
                                const char* grads_name,
                                const OpInputList& grads, DataType dtype) {
  const int n = grads.size();
  for (size_t s = 0; s < slot_lists.size(); ++s) {
    for (int i = 0; i < n; ++i) {
      const Tensor& t = tensors[s][i];
      if (!t.IsInitialized()) {
        return absl::FailedPreconditionError(absl::StrCat(
            slot_lists[s], "[", i, "] is an uninitialized variable"));
      }
      if (t.dtype() != dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            slot_lists[s], "[", i, "] has dtype ", DataTypeString(t.dtype()),
            " but the gradients are ", DataTypeString(dtype)));
      }
      if (t.shape() != tensors[0][i].shape()) {
        return absl::InvalidArgumentError(absl::StrCat(
            slot_lists[s], "[", i, "] must have the shape of ", slot_lists[0],
            "[", i, "] ", tensors[0][i].shape().DebugString(), ", got ",
            t.shape().DebugString()));
      }
    }
  }
  for (int i = 0; i < n; ++i) {
    if (grads[i].shape() != tensors[0][i].shape()) {
      return absl::InvalidArgumentError(absl::StrCat(
          grads_name, "[", i, "] must have the shape of its variable ",
          tensors[0][i].shape().DebugString(), ", got ",
          grads[i].shape().DebugString()));
    }
  }
  return absl::OkStatus();
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_INPUTS_H_
