#if GOOGLE_CUDA
// GPU OpKernels of Kbm>SoftmaxKLDivergence and its gradient for float, half
// and bfloat16 logits (U = float). The CUDA work is in
// distillation_gpu.cu.cc (launchers in distillation_gpu.h); this file
// validates inputs (the checks and messages of the CPU kernels), allocates
// outputs and enqueues on the op's stream.
#include "cc/common/kernel_utils.h"
#include "cc/common/tf_gpu_glue.h"
#include "cc/distillation/kernels/distillation_checks.h"
#include "cc/distillation/kernels/distillation_gpu.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

namespace gpu = ::kbm::gpu;

template <typename T>
class SoftmaxKLGpuOp : public OpKernel {
 public:
  explicit SoftmaxKLGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("temperature", &temperature_));
    OP_REQUIRES_OK(ctx, CheckTemperature(temperature_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& t = ctx->input(0);
    const Tensor& s = ctx->input(1);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckLogits(t, s, &c));
    Tensor* loss = nullptr;
    Tensor* lse_t = nullptr;
    Tensor* lse_s = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, LeadingShape(t), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, LeadingShape(t), &lse_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, LeadingShape(t), &lse_s));
    const int64_t rows = loss->NumElements();
    if (rows == 0) return;
    const gpu::SoftmaxKLFwdArgs<GpuTagT<T>> args{GpuPtr<T>(t),
                                                 GpuPtr<T>(s),
                                                 loss->flat<float>().data(),
                                                 lse_t->flat<float>().data(),
                                                 lse_s->flat<float>().data(),
                                                 rows,
                                                 c,
                                                 temperature_};
    OP_REQUIRES_OK(ctx,
                   FromGpuCode(gpu::LaunchSoftmaxKLFwd(args, GpuStream(ctx)),
                               "Kbm>SoftmaxKLDivergence"));
  }

 private:
  float temperature_;
};

template <typename T>
class SoftmaxKLGradGpuOp : public OpKernel {
 public:
  explicit SoftmaxKLGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("temperature", &temperature_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("teacher_gradient", &teacher_grad_));
    OP_REQUIRES_OK(ctx, CheckTemperature(temperature_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dloss = ctx->input(0);
    const Tensor& t = ctx->input(1);
    const Tensor& s = ctx->input(2);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckLogits(t, s, &c));
    const TensorShape rows_shape = LeadingShape(t);
    OP_REQUIRES_OK(ctx, CheckKLGradRowInputs(ctx, rows_shape));
    Tensor* dteacher = nullptr;
    Tensor* dstudent = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(
                 0, teacher_grad_ ? t.shape() : TensorShape({0}), &dteacher));
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({2}, 1, s.shape(),
                                                              &dstudent));
    const int64_t rows = rows_shape.num_elements();
    if (rows == 0 || c == 0) return;
    const gpu::SoftmaxKLBwdArgs<GpuTagT<T>> args{
        dloss.flat<float>().data(),
        GpuPtr<T>(t),
        GpuPtr<T>(s),
        ctx->input(3).flat<float>().data(),
        ctx->input(4).flat<float>().data(),
        ctx->input(5).flat<float>().data(),
        teacher_grad_ ? GpuPtr<T>(dteacher) : nullptr,
        GpuPtr<T>(dstudent),
        rows,
        c,
        temperature_};
    OP_REQUIRES_OK(ctx,
                   FromGpuCode(gpu::LaunchSoftmaxKLBwd(args, GpuStream(ctx)),
                               "Kbm>SoftmaxKLDivergenceGrad"));
  }

 private:
  float temperature_;
  bool teacher_grad_;
};

#define KBM_REGISTER_KL_GPU(T)                                \
  REGISTER_KERNEL_BUILDER(Name("Kbm>SoftmaxKLDivergence")     \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .TypeConstraint<float>("U"),    \
                          SoftmaxKLGpuOp<T>);                 \
  REGISTER_KERNEL_BUILDER(Name("Kbm>SoftmaxKLDivergenceGrad") \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .TypeConstraint<float>("U"),    \
                          SoftmaxKLGradGpuOp<T>);

KBM_REGISTER_KL_GPU(Eigen::half)
KBM_REGISTER_KL_GPU(Eigen::bfloat16)
KBM_REGISTER_KL_GPU(float)

#undef KBM_REGISTER_KL_GPU

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
