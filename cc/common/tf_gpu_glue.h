// TensorFlow-side helpers for kbm's GPU OpKernels (*_gpu_kernels.cc):
// the op's CUDA stream, launcher error codes as Status, 16-bit type mapping,
// workspace allocation. No CUDA headers: g++ compiles this with
// -DGOOGLE_CUDA=1 and the launchers are plain functions (gpu_types.h).
#ifndef KERAS_BIGMODELS_CC_COMMON_TF_GPU_GLUE_H_
#define KERAS_BIGMODELS_CC_COMMON_TF_GPU_GLUE_H_

#if GOOGLE_CUDA

#include <string>

#include "absl/strings/str_cat.h"
#include "cc/common/gpu/gpu_types.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "xla/stream_executor/stream.h"

namespace tensorflow {
namespace kbm {

// The CUDA stream (a cudaStream_t) the op must enqueue its kernels on.
inline void* GpuStream(OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

// A launcher's return code as a Status naming the op and what failed.
inline absl::Status FromGpuCode(int code, const std::string& what) {
  if (code == ::kbm::gpu::kSuccess) return absl::OkStatus();
  const std::string text = ::kbm::gpu::ErrorString(code);
  if (code == ::kbm::gpu::kErrorInvalidArgument) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", text));
  }
  return absl::InternalError(
      absl::StrCat(what, " failed on the GPU (code ", code, ": ", text,
                   "); rebuild the op library for this GPU with KBM_CUDA=1 "
                   "or disable the GPU kernels"));
}

// TensorFlow element type -> the launcher's type tag.
template <typename T>
struct GpuTag {
  using type = T;
};
template <>
struct GpuTag<Eigen::half> {
  using type = ::kbm::gpu::Half;
};
template <>
struct GpuTag<bfloat16> {
  using type = ::kbm::gpu::BFloat16;
};
template <typename T>
using GpuTagT = typename GpuTag<T>::type;

template <typename T>
const GpuTagT<T>* GpuPtr(const Tensor& t) {
  return reinterpret_cast<const GpuTagT<T>*>(t.flat<T>().data());
}
template <typename T>
GpuTagT<T>* GpuPtr(Tensor* t) {
  return reinterpret_cast<GpuTagT<T>*>(t->flat<T>().data());
}

// Allocates `bytes` of device scratch for a launcher (null when 0 bytes).
inline absl::Status AllocateWorkspace(OpKernelContext* ctx, size_t bytes,
                                      Tensor* holder, void** ptr) {
  *ptr = nullptr;
  if (bytes == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      DT_INT8, TensorShape({static_cast<int64_t>(bytes)}), holder));
  *ptr = holder->flat<int8_t>().data();
  return absl::OkStatus();
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
#endif  // KERAS_BIGMODELS_CC_COMMON_TF_GPU_GLUE_H_
