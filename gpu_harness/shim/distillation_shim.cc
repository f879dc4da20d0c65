// C ABI of the softmax-KL launchers for the TF-free harness (ctypes).
// dtype: 0 float32, 1 float16, 2 bfloat16. Returns the launcher's code.
// dteacher may be null (no teacher gradient).
#include <cstddef>
#include <cstdint>

#include "cc/distillation/kernels/distillation_gpu.h"

namespace {

using kbm::gpu::BFloat16;
using kbm::gpu::Half;
using kbm::gpu::SoftmaxKLBwdArgs;
using kbm::gpu::SoftmaxKLFwdArgs;

template <typename T>
int Fwd(void* teacher, void* student, void* loss, void* teacher_lse,
        void* student_lse, int64_t rows, int64_t cols, float temperature,
        void* stream) {
  SoftmaxKLFwdArgs<T> a{static_cast<const T*>(teacher),
                        static_cast<const T*>(student),
                        static_cast<float*>(loss),
                        static_cast<float*>(teacher_lse),
                        static_cast<float*>(student_lse),
                        rows,
                        cols,
                        temperature};
  return kbm::gpu::LaunchSoftmaxKLFwd<T>(a, stream);
}

template <typename T>
int Bwd(void* dloss, void* teacher, void* student, void* loss,
        void* teacher_lse, void* student_lse, void* dteacher, void* dstudent,
        int64_t rows, int64_t cols, float temperature, void* stream) {
  SoftmaxKLBwdArgs<T> a{static_cast<const float*>(dloss),
                        static_cast<const T*>(teacher),
                        static_cast<const T*>(student),
                        static_cast<const float*>(loss),
                        static_cast<const float*>(teacher_lse),
                        static_cast<const float*>(student_lse),
                        static_cast<T*>(dteacher),
                        static_cast<T*>(dstudent),
                        rows,
                        cols,
                        temperature};
  return kbm::gpu::LaunchSoftmaxKLBwd<T>(a, stream);
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

int kbm_distillation_softmax_kl_fwd(int dtype, void* teacher, void* student,
                                    void* loss, void* teacher_lse,
                                    void* student_lse, int64_t rows,
                                    int64_t cols, float temperature,
                                    void* stream) {
  KBM_DISPATCH(dtype, Fwd, teacher, student, loss, teacher_lse, student_lse,
               rows, cols, temperature, stream)
  return kbm::gpu::kErrorUnsupported;
}

int kbm_distillation_softmax_kl_bwd(int dtype, void* dloss, void* teacher,
                                    void* student, void* loss,
                                    void* teacher_lse, void* student_lse,
                                    void* dteacher, void* dstudent,
                                    int64_t rows, int64_t cols,
                                    float temperature, void* stream) {
  KBM_DISPATCH(dtype, Bwd, dloss, teacher, student, loss, teacher_lse,
               student_lse, dteacher, dstudent, rows, cols, temperature,
               stream)
  return kbm::gpu::kErrorUnsupported;
}

}  // extern "C"
