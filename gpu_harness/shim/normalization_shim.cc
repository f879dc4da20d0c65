// C ABI of the normalisation launchers for the TF-free harness (ctypes).
// dtype: 0 float32, 1 float16, 2 bfloat16 (kbm::gpu::DType). Returns the
// launcher's code (0 on success).
#include <cstddef>
#include <cstdint>

#include "cc/normalization/kernels/normalization_gpu.h"

namespace {

using kbm::gpu::BFloat16;
using kbm::gpu::Half;
using kbm::gpu::NormBwdArgs;
using kbm::gpu::NormFwdArgs;

template <typename T>
int Fwd(bool rms, void* x, void* gamma, void* beta, void* y, void* mean,
        void* rstd, int64_t rows, int64_t cols, float epsilon, void* stream) {
  NormFwdArgs<T> a{static_cast<const T*>(x),
                   static_cast<const float*>(gamma),
                   static_cast<const float*>(beta),
                   static_cast<T*>(y),
                   static_cast<float*>(mean),
                   static_cast<float*>(rstd),
                   rows,
                   cols,
                   epsilon};
  return rms ? kbm::gpu::LaunchRmsNormFwd<T>(a, stream)
             : kbm::gpu::LaunchLayerNormFwd<T>(a, stream);
}

template <typename T>
int Bwd(bool rms, void* dy, void* x, void* gamma, void* mean, void* rstd,
        void* dx, void* dgamma, void* dbeta, int64_t rows, int64_t cols,
        void* workspace, void* stream) {
  NormBwdArgs<T> a{static_cast<const T*>(dy),
                   static_cast<const T*>(x),
                   static_cast<const float*>(gamma),
                   static_cast<const float*>(mean),
                   static_cast<const float*>(rstd),
                   static_cast<T*>(dx),
                   static_cast<float*>(dgamma),
                   static_cast<float*>(dbeta),
                   rows,
                   cols};
  return rms ? kbm::gpu::LaunchRmsNormBwd<T>(a, workspace, stream)
             : kbm::gpu::LaunchLayerNormBwd<T>(a, workspace, stream);
}

template <typename T>
size_t Workspace(bool rms, int64_t rows, int64_t cols) {
  return rms ? kbm::gpu::RmsNormBwdWorkspaceBytes<T>(rows, cols)
             : kbm::gpu::LayerNormBwdWorkspaceBytes<T>(rows, cols);
}

#define KBM_DISPATCH(dtype, fn, ...)                          \
  switch (dtype) {                                            \
    case kbm::gpu::kFloat32: return fn<float>(__VA_ARGS__);   \
    case kbm::gpu::kFloat16: return fn<Half>(__VA_ARGS__);    \
    case kbm::gpu::kBFloat16: return fn<BFloat16>(__VA_ARGS__); \
    default: break;                                           \
  }

}  // namespace

extern "C" {

int kbm_normalization_layer_norm_fwd(int dtype, void* x, void* gamma,
                                     void* beta, void* y, void* mean,
                                     void* rstd, int64_t rows, int64_t cols,
                                     float epsilon, void* stream) {
  KBM_DISPATCH(dtype, Fwd, false, x, gamma, beta, y, mean, rstd, rows, cols,
               epsilon, stream)
  return kbm::gpu::kErrorUnsupported;
}

int kbm_normalization_rms_norm_fwd(int dtype, void* x, void* gamma, void* y,
                                   void* rstd, int64_t rows, int64_t cols,
                                   float epsilon, void* stream) {
  KBM_DISPATCH(dtype, Fwd, true, x, gamma, nullptr, y, nullptr, rstd, rows,
               cols, epsilon, stream)
  return kbm::gpu::kErrorUnsupported;
}

size_t kbm_normalization_layer_norm_bwd_workspace(int dtype, int64_t rows,
                                                  int64_t cols) {
  KBM_DISPATCH(dtype, Workspace, false, rows, cols)
  return 0;
}

size_t kbm_normalization_rms_norm_bwd_workspace(int dtype, int64_t rows,
                                                int64_t cols) {
  KBM_DISPATCH(dtype, Workspace, true, rows, cols)
  return 0;
}

int kbm_normalization_layer_norm_bwd(int dtype, void* dy, void* x,
                                     void* gamma, void* mean, void* rstd,
                                     void* dx, void* dgamma, void* dbeta,
                                     int64_t rows, int64_t cols,
                                     void* workspace, void* stream) {
  KBM_DISPATCH(dtype, Bwd, false, dy, x, gamma, mean, rstd, dx, dgamma, dbeta,
               rows, cols, workspace, stream)
  return kbm::gpu::kErrorUnsupported;
}

int kbm_normalization_rms_norm_bwd(int dtype, void* dy, void* x, void* gamma,
                                   void* rstd, void* dx, void* dgamma,
                                   int64_t rows, int64_t cols, void* workspace,
                                   void* stream) {
  KBM_DISPATCH(dtype, Bwd, true, dy, x, gamma, nullptr, rstd, dx, dgamma,
               nullptr, rows, cols, workspace, stream)
  return kbm::gpu::kErrorUnsupported;
}

}  // extern "C"
