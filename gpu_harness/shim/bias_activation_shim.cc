// C ABI of the bias + GELU launchers for the TF-free harness (ctypes).
// dtype: 0 float32, 1 float16, 2 bfloat16. Returns the launcher's code.
#include <cstddef>
#include <cstdint>

#include "cc/bias_activation/kernels/bias_activation_gpu.h"

namespace {

using kbm::gpu::BFloat16;
using kbm::gpu::BiasGeluBwdArgs;
using kbm::gpu::BiasGeluFwdArgs;
using kbm::gpu::Half;

template <typename T>
int Fwd(void* x, void* bias, void* y, int64_t rows, int64_t cols,
        int approximate, void* stream) {
  BiasGeluFwdArgs<T> a{static_cast<const T*>(x), static_cast<const T*>(bias),
                       static_cast<T*>(y), rows, cols, approximate != 0};
  return kbm::gpu::LaunchBiasGeluFwd<T>(a, stream);
}

template <typename T>
int Bwd(void* dy, void* x, void* bias, void* dx, void* dbias, int64_t rows,
        int64_t cols, int approximate, void* workspace, void* stream) {
  BiasGeluBwdArgs<T> a{static_cast<const T*>(dy),
                       static_cast<const T*>(x),
                       static_cast<const T*>(bias),
                       static_cast<T*>(dx),
                       static_cast<T*>(dbias),
                       rows,
                       cols,
                       approximate != 0};
  return kbm::gpu::LaunchBiasGeluBwd<T>(a, workspace, stream);
}

template <typename T>
size_t Workspace(int64_t rows, int64_t cols) {
  return kbm::gpu::BiasGeluBwdWorkspaceBytes<T>(rows, cols);
}

#define KBM_DISPATCH(dtype, fn, ...)                            \
  switch (dtype) {                                              \
    case kbm::gpu::kFloat32: return fn<float>(__VA_ARGS__);     \
    case kbm::gpu::kFloat16: return fn<Half>(__VA_ARGS__);      \
    case kbm::gpu::kBFloat16: return fn<BFloat16>(__VA_ARGS__); \
    default: break;                                             \
  }

}  // namespace

extern "C" {

int kbm_bias_activation_bias_gelu_fwd(int dtype, void* x, void* bias, void* y,
                                      int64_t rows, int64_t cols,
                                      int approximate, void* stream) {
  KBM_DISPATCH(dtype, Fwd, x, bias, y, rows, cols, approximate, stream)
  return kbm::gpu::kErrorUnsupported;
}

size_t kbm_bias_activation_bias_gelu_bwd_workspace(int dtype, int64_t rows,
                                                   int64_t cols) {
  KBM_DISPATCH(dtype, Workspace, rows, cols)
  return 0;
}

int kbm_bias_activation_bias_gelu_bwd(int dtype, void* dy, void* x,
                                      void* bias, void* dx, void* dbias,
                                      int64_t rows, int64_t cols,
                                      int approximate, void* workspace,
                                      void* stream) {
  KBM_DISPATCH(dtype, Bwd, dy, x, bias, dx, dbias, rows, cols, approximate,
               workspace, stream)
  return kbm::gpu::kErrorUnsupported;
}

}  // extern "C"
