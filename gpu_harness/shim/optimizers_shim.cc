// C ABI over the optimizer family's launchers, for the TF-free harness
// (gpu_harness/ops_optimizers.py). Pointer lists are host arrays of device
// pointers; scalars and decay are device float32 tensors.
#include <cstddef>
#include <cstdint>

#include "cc/common/gpu/gpu_types.h"
#include "cc/optimizers/kernels/optimizers_gpu.h"

namespace {

using kbm::gpu::BFloat16;
using kbm::gpu::Half;

template <typename T>
T* const* Ptrs(void** p) {
  return reinterpret_cast<T* const*>(p);
}

template <typename T>
int Adam(int n, void** p, void** m, void** v, void** g, const int64_t* sizes,
         void* omb1, void* omb2, void* coef_a, void* bias2, void* coef_sgd,
         void* eps, void* decay, void* stream) {
  kbm::gpu::MultiAdamArgs<T> a;
  a.num_tensors = n;
  a.params = Ptrs<T>(p);
  a.m = Ptrs<T>(m);
  a.v = Ptrs<T>(v);
  a.grads = reinterpret_cast<const T* const*>(g);
  a.sizes = sizes;
  a.one_minus_beta_1 = static_cast<const float*>(omb1);
  a.one_minus_beta_2 = static_cast<const float*>(omb2);
  a.coef_adaptive = static_cast<const float*>(coef_a);
  a.bias_2 = static_cast<const float*>(bias2);
  a.coef_sgd = static_cast<const float*>(coef_sgd);
  a.epsilon = static_cast<const float*>(eps);
  a.decay = static_cast<const float*>(decay);
  return kbm::gpu::LaunchMultiAdam<T>(a, stream);
}

template <typename T>
int Lamb(int n, void** p, void** m, void** v, void** g, const int64_t* sizes,
         void* lr, void* omb1, void* omb2, void* bias1, void* bias2, void* eps,
         void* decay, void* workspace, void* stream) {
  kbm::gpu::MultiLambArgs<T> a;
  a.num_tensors = n;
  a.params = Ptrs<T>(p);
  a.m = Ptrs<T>(m);
  a.v = Ptrs<T>(v);
  a.grads = reinterpret_cast<const T* const*>(g);
  a.sizes = sizes;
  a.learning_rate = static_cast<const float*>(lr);
  a.one_minus_beta_1 = static_cast<const float*>(omb1);
  a.one_minus_beta_2 = static_cast<const float*>(omb2);
  a.bias_1 = static_cast<const float*>(bias1);
  a.bias_2 = static_cast<const float*>(bias2);
  a.epsilon = static_cast<const float*>(eps);
  a.decay = static_cast<const float*>(decay);
  return kbm::gpu::LaunchMultiLamb<T>(a, workspace, stream);
}

template <typename T>
int Lion(int n, void** p, void** m, void** g, const int64_t* sizes, void* lr,
         void* b1, void* b2, void* decay, void* stream) {
  kbm::gpu::MultiLionArgs<T> a;
  a.num_tensors = n;
  a.params = Ptrs<T>(p);
  a.m = Ptrs<T>(m);
  a.grads = reinterpret_cast<const T* const*>(g);
  a.sizes = sizes;
  a.learning_rate = static_cast<const float*>(lr);
  a.beta_1 = static_cast<const float*>(b1);
  a.beta_2 = static_cast<const float*>(b2);
  a.decay = static_cast<const float*>(decay);
  return kbm::gpu::LaunchMultiLion<T>(a, stream);
}

}  // namespace

extern "C" {

int kbm_optimizers_adam(int dtype, int n, void** p, void** m, void** v,
                        void** g, const int64_t* sizes, void* omb1,
                        void* omb2, void* coef_a, void* bias2, void* coef_sgd,
                        void* eps, void* decay, void* stream) {
  switch (dtype) {
    case kbm::gpu::kFloat32:
      return Adam<float>(n, p, m, v, g, sizes, omb1, omb2, coef_a, bias2,
                         coef_sgd, eps, decay, stream);
    case kbm::gpu::kFloat16:
      return Adam<Half>(n, p, m, v, g, sizes, omb1, omb2, coef_a, bias2,
                        coef_sgd, eps, decay, stream);
    case kbm::gpu::kBFloat16:
      return Adam<BFloat16>(n, p, m, v, g, sizes, omb1, omb2, coef_a, bias2,
                            coef_sgd, eps, decay, stream);
  }
  return kbm::gpu::kErrorUnsupported;
}

size_t kbm_optimizers_lamb_workspace(int n, const int64_t* sizes) {
  return kbm::gpu::MultiLambWorkspaceBytes(n, sizes);
}

int kbm_optimizers_lamb(int dtype, int n, void** p, void** m, void** v,
                        void** g, const int64_t* sizes, void* lr, void* omb1,
                        void* omb2, void* bias1, void* bias2, void* eps,
                        void* decay, void* workspace, void* stream) {
  switch (dtype) {
    case kbm::gpu::kFloat32:
      return Lamb<float>(n, p, m, v, g, sizes, lr, omb1, omb2, bias1, bias2,
                         eps, decay, workspace, stream);
    case kbm::gpu::kFloat16:
      return Lamb<Half>(n, p, m, v, g, sizes, lr, omb1, omb2, bias1, bias2,
                        eps, decay, workspace, stream);
    case kbm::gpu::kBFloat16:
      return Lamb<BFloat16>(n, p, m, v, g, sizes, lr, omb1, omb2, bias1,
                            bias2, eps, decay, workspace, stream);
  }
  return kbm::gpu::kErrorUnsupported;
}

int kbm_optimizers_lion(int dtype, int n, void** p, void** m, void** g,
                        const int64_t* sizes, void* lr, void* b1, void* b2,
                        void* decay, void* stream) {
  switch (dtype) {
    case kbm::gpu::kFloat32:
      return Lion<float>(n, p, m, g, sizes, lr, b1, b2, decay, stream);
    case kbm::gpu::kFloat16:
      return Lion<Half>(n, p, m, g, sizes, lr, b1, b2, decay, stream);
    case kbm::gpu::kBFloat16:
      return Lion<BFloat16>(n, p, m, g, sizes, lr, b1, b2, decay, stream);
  }
  return kbm::gpu::kErrorUnsupported;
}

}  // extern "C"
