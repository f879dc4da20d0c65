#if GOOGLE_CUDA
// GPU OpKernels of the normalisation family (Kbm>FusedLayerNorm,
// Kbm>FusedRmsNorm and their gradients) for float, half and bfloat16 inputs
// with float32 gamma / beta / statistics. The CUDA work is in
// normalization_gpu.cu.cc (launchers in normalization_gpu.h); this file only
// validates inputs (the same checks and messages as the CPU kernels),
// allocates outputs and scratch, and enqueues on the op's stream.
#include "cc/common/kernel_utils.h"
#include "cc/common/tf_gpu_glue.h"
#include "cc/normalization/kernels/normalization_checks.h"
#include "cc/normalization/kernels/normalization_gpu.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

namespace gpu = ::kbm::gpu;

absl::Status GetEpsilon(OpKernelConstruction* ctx, float* epsilon) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("epsilon", epsilon));
  if (!(*epsilon >= 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("epsilon must be >= 0, got ", *epsilon));
  }
  return absl::OkStatus();
}

template <typename T>
class FusedLayerNormGpuOp : public OpKernel {
 public:
  explicit FusedLayerNormGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, GetEpsilon(ctx, &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& gamma = ctx->input(1);
    const Tensor& beta = ctx->input(2);
    int64_t c = 0;
    OP_REQUIRES_OK(
        ctx, CheckNormInputs(x, "x", {{"gamma", &gamma}, {"beta", &beta}}, &c));
    Tensor* y = nullptr;
    Tensor* mean = nullptr;
    Tensor* rstd = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, LeadingShape(x), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, LeadingShape(x), &rstd));
    const gpu::NormFwdArgs<GpuTagT<T>> args{GpuPtr<T>(x),
                                            gamma.flat<float>().data(),
                                            beta.flat<float>().data(),
                                            GpuPtr<T>(y),
                                            mean->flat<float>().data(),
                                            rstd->flat<float>().data(),
                                            x.NumElements() / c,
                                            c,
                                            epsilon_};
    OP_REQUIRES_OK(ctx,
                   FromGpuCode(gpu::LaunchLayerNormFwd(args, GpuStream(ctx)),
                               "Kbm>FusedLayerNorm"));
  }

 private:
  float epsilon_;
};

template <typename T>
class FusedLayerNormGradGpuOp : public OpKernel {
 public:
  explicit FusedLayerNormGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    const Tensor& mean = ctx->input(3);
    const Tensor& rstd = ctx->input(4);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckNormInputs(x, "x", {{"gamma", &gamma}}, &c));
    OP_REQUIRES_OK(ctx, CheckSameShape(dy, "dy", x.shape(), "the shape of x"));
    OP_REQUIRES_OK(ctx, CheckSameShape(mean, "mean", LeadingShape(x),
                                       "x's shape without the last axis"));
    OP_REQUIRES_OK(ctx, CheckSameShape(rstd, "rstd", LeadingShape(x),
                                       "x's shape without the last axis"));
    Tensor* dx = nullptr;
    Tensor* dgamma = nullptr;
    Tensor* dbeta = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, gamma.shape(), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, gamma.shape(), &dbeta));
    const int64_t rows = x.NumElements() / c;
    Tensor scratch;
    void* workspace = nullptr;
    OP_REQUIRES_OK(
        ctx, AllocateWorkspace(
                 ctx, gpu::LayerNormBwdWorkspaceBytes<GpuTagT<T>>(rows, c),
                 &scratch, &workspace));
    const gpu::NormBwdArgs<GpuTagT<T>> args{GpuPtr<T>(dy),
                                            GpuPtr<T>(x),
                                            gamma.flat<float>().data(),
                                            mean.flat<float>().data(),
                                            rstd.flat<float>().data(),
                                            GpuPtr<T>(dx),
                                            dgamma->flat<float>().data(),
                                            dbeta->flat<float>().data(),
                                            rows,
                                            c};
    OP_REQUIRES_OK(ctx, FromGpuCode(gpu::LaunchLayerNormBwd(args, workspace,
                                                            GpuStream(ctx)),
                                    "Kbm>FusedLayerNormGrad"));
  }
};

template <typename T>
class FusedRmsNormGpuOp : public OpKernel {
 public:
  explicit FusedRmsNormGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, GetEpsilon(ctx, &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& gamma = ctx->input(1);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckNormInputs(x, "x", {{"gamma", &gamma}}, &c));
    Tensor* y = nullptr;
    Tensor* rstd = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, LeadingShape(x), &rstd));
    const gpu::NormFwdArgs<GpuTagT<T>> args{GpuPtr<T>(x),
                                            gamma.flat<float>().data(),
                                            nullptr,
                                            GpuPtr<T>(y),
                                            nullptr,
                                            rstd->flat<float>().data(),
                                            x.NumElements() / c,
                                            c,
                                            epsilon_};
    OP_REQUIRES_OK(ctx, FromGpuCode(gpu::LaunchRmsNormFwd(args, GpuStream(ctx)),
                                    "Kbm>FusedRmsNorm"));
  }

 private:
  float epsilon_;
};

template <typename T>
class FusedRmsNormGradGpuOp : public OpKernel {
 public:
  explicit FusedRmsNormGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    const Tensor& rstd = ctx->input(3);
    int64_t c = 0;
    OP_REQUIRES_OK(ctx, CheckNormInputs(x, "x", {{"gamma", &gamma}}, &c));
    OP_REQUIRES_OK(ctx, CheckSameShape(dy, "dy", x.shape(), "the shape of x"));
    OP_REQUIRES_OK(ctx, CheckSameShape(rstd, "rstd", LeadingShape(x),
                                       "x's shape without the last axis"));
    Tensor* dx = nullptr;
    Tensor* dgamma = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, gamma.shape(), &dgamma));
    const int64_t rows = x.NumElements() / c;
    Tensor scratch;
    void* workspace = nullptr;
    OP_REQUIRES_OK(ctx,
                   AllocateWorkspace(
                       ctx, gpu::RmsNormBwdWorkspaceBytes<GpuTagT<T>>(rows, c),
                       &scratch, &workspace));
    const gpu::NormBwdArgs<GpuTagT<T>> args{GpuPtr<T>(dy),
                                            GpuPtr<T>(x),
                                            gamma.flat<float>().data(),
                                            nullptr,
                                            rstd.flat<float>().data(),
                                            GpuPtr<T>(dx),
                                            dgamma->flat<float>().data(),
                                            nullptr,
                                            rows,
                                            c};
    OP_REQUIRES_OK(
        ctx, FromGpuCode(gpu::LaunchRmsNormBwd(args, workspace, GpuStream(ctx)),
                         "Kbm>FusedRmsNormGrad"));
  }
};

#define KBM_REGISTER_NORM_GPU(T)                           \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedLayerNorm")       \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          FusedLayerNormGpuOp<T>);         \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedLayerNormGrad")   \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          FusedLayerNormGradGpuOp<T>);     \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedRmsNorm")         \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          FusedRmsNormGpuOp<T>);           \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedRmsNormGrad")     \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          FusedRmsNormGradGpuOp<T>);

KBM_REGISTER_NORM_GPU(Eigen::half)
KBM_REGISTER_NORM_GPU(Eigen::bfloat16)
KBM_REGISTER_NORM_GPU(float)

#undef KBM_REGISTER_NORM_GPU

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
