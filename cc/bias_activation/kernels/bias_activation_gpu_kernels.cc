#if GOOGLE_CUDA
// GPU OpKernels of Kbm>BiasGelu and Kbm>BiasGeluGrad for float, half and
// bfloat16. The CUDA work is in bias_activation_gpu.cu.cc (launchers in
// bias_activation_gpu.h); this file validates inputs (the checks and messages
// of the CPU kernels), allocates outputs and scratch, and enqueues on the
// op's stream.
#include "cc/bias_activation/kernels/bias_activation_checks.h"
#include "cc/bias_activation/kernels/bias_activation_gpu.h"
#include "cc/common/kernel_utils.h"
#include "cc/common/tf_gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

namespace gpu = ::kbm::gpu;

template <typename T>
class BiasGeluGpuOp : public OpKernel {
 public:
  explicit BiasGeluGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("approximate", &approximate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& bias = ctx->input(1);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckBiasInputs(x, bias, &c));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    if (x.NumElements() == 0) return;
    const gpu::BiasGeluFwdArgs<GpuTagT<T>> args{
        GpuPtr<T>(x), GpuPtr<T>(bias), GpuPtr<T>(y), x.NumElements() / c, c,
        approximate_};
    OP_REQUIRES_OK(ctx,
                   FromGpuCode(gpu::LaunchBiasGeluFwd(args, GpuStream(ctx)),
                               "Kbm>BiasGelu"));
  }

 private:
  bool approximate_;
};

template <typename T>
class BiasGeluGradGpuOp : public OpKernel {
 public:
  explicit BiasGeluGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("approximate", &approximate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& bias = ctx->input(2);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckBiasInputs(x, bias, &c));
    OP_REQUIRES_OK(ctx, CheckBiasGradInputs(dy, x));
    Tensor* dx = nullptr;
    Tensor* dbias = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, bias.shape(), &dbias));
    if (c == 0) return;
    const int64_t rows = x.NumElements() / c;
    Tensor scratch;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx,
                   AllocateWorkspace(
                       ctx, gpu::BiasGeluBwdWorkspaceBytes<GpuTagT<T>>(rows, c),
                       &scratch, &workspace));
    const gpu::BiasGeluBwdArgs<GpuTagT<T>> args{GpuPtr<T>(dy),
                                                GpuPtr<T>(x),
                                                GpuPtr<T>(bias),
                                                GpuPtr<T>(dx),
                                                GpuPtr<T>(dbias),
                                                rows,
                                                c,
                                                approximate_};
    OP_REQUIRES_OK(ctx, FromGpuCode(gpu::LaunchBiasGeluBwd(args, workspace,
                                                           GpuStream(ctx)),
                                    "Kbm>BiasGeluGrad"));
  }

 private:
  bool approximate_;
};

#define KBM_REGISTER_BIAS_GELU_GPU(T)                                     \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("Kbm>BiasGelu").Device(DEVICE_GPU).TypeConstraint<T>("T"),     \
      BiasGeluGpuOp<T>);                                                  \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("Kbm>BiasGeluGrad").Device(DEVICE_GPU).TypeConstraint<T>("T"), \
      BiasGeluGradGpuOp<T>);

KBM_REGISTER_BIAS_GELU_GPU(Eigen::half)
KBM_REGISTER_BIAS_GELU_GPU(Eigen::bfloat16)
KBM_REGISTER_BIAS_GELU_GPU(float)

#undef KBM_REGISTER_BIAS_GELU_GPU

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
