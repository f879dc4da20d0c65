#if GOOGLE_CUDA
// GPU kernels of Kbm>FlashAttention, Kbm>FlashAttentionGrad and
// Kbm>AttentionDropoutMask: validation (attention_checks.h), then the CUDA
// launchers of attention_gpu.h on the op's stream. seed (and the mask op's
// shape) live in host memory.
#include "absl/strings/str_cat.h"
#include "cc/attention/kernels/attention_checks.h"
#include "cc/attention/kernels/attention_gpu.h"
#include "cc/common/kernel_utils.h"
#include "cc/common/tf_gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const bool* OptionalMask(const Tensor& t) {
  return t.NumElements() ? t.flat<bool>().data() : nullptr;
}

absl::Status CheckHeadDims(const ::kbm::gpu::AttentionParams& p) {
  if (p.head_dim > ::kbm::gpu::kMaxAttentionHeadDim ||
      p.value_dim > ::kbm::gpu::kMaxAttentionHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the GPU flash attention takes head_dim and value_dim up to ",
        ::kbm::gpu::kMaxAttentionHeadDim, ", got ", p.head_dim, " and ",
        p.value_dim));
  }
  return absl::OkStatus();
}

template <typename T>
class FlashAttentionGpuOp : public OpKernel {
 public:
  explicit FlashAttentionGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal", &causal_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal_top_left", &top_left_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dropout_rate", &rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& k = ctx->input(1);
    const Tensor& v = ctx->input(2);
    const Tensor& key_mask = ctx->input(3);
    const Tensor& mask = ctx->input(4);
    const Tensor& seed = ctx->input(5);
    ::kbm::gpu::AttentionParams p;
    OP_REQUIRES_OK(
        ctx, ReadAttentionParams(q, k, v, key_mask, mask, seed, scale_, causal_,
                                 top_left_, rate_, &p));
    OP_REQUIRES_OK(ctx, CheckHeadDims(p));
    Tensor* o = nullptr;
    Tensor* lse = nullptr;
    OP_REQUIRES_OK(
        ctx,
        ctx->allocate_output(
            0, TensorShape({p.batch, p.q_len, p.q_heads, p.value_dim}), &o));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(1, TensorShape({p.batch, p.q_heads, p.q_len}),
                                  &lse));
    if (o->NumElements() == 0 && lse->NumElements() == 0) return;
    ::kbm::gpu::FlashAttentionArgs<GpuTagT<T>> args;
    args.p = p;
    args.q = GpuPtr<T>(q);
    args.k = GpuPtr<T>(k);
    args.v = GpuPtr<T>(v);
    args.key_mask = OptionalMask(key_mask);
    args.mask = OptionalMask(mask);
    args.o = GpuPtr<T>(o);
    args.lse = lse->flat<float>().data();
    OP_REQUIRES_OK(
        ctx, FromGpuCode(::kbm::gpu::LaunchFlashAttention(args, GpuStream(ctx)),
                         "Kbm>FlashAttention"));
  }

 private:
  float scale_;
  bool causal_;
  bool top_left_;
  float rate_;
};

template <typename T>
class FlashAttentionGradGpuOp : public OpKernel {
 public:
  explicit FlashAttentionGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal", &causal_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal_top_left", &top_left_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dropout_rate", &rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& d_o = ctx->input(0);
    const Tensor& q = ctx->input(1);
    const Tensor& k = ctx->input(2);
    const Tensor& v = ctx->input(3);
    const Tensor& key_mask = ctx->input(4);
    const Tensor& mask = ctx->input(5);
    const Tensor& seed = ctx->input(6);
    const Tensor& o = ctx->input(7);
    const Tensor& lse = ctx->input(8);
    ::kbm::gpu::AttentionParams p;
    OP_REQUIRES_OK(
        ctx, ReadAttentionParams(q, k, v, key_mask, mask, seed, scale_, causal_,
                                 top_left_, rate_, &p));
    OP_REQUIRES_OK(ctx, CheckHeadDims(p));
    OP_REQUIRES_OK(ctx, CheckGradShapes(d_o, o, lse, p.batch, p.q_len,
                                        p.q_heads, p.value_dim));
    Tensor* dq = nullptr;
    Tensor* dk = nullptr;
    Tensor* dv = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, q.shape(), &dq));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, k.shape(), &dk));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, v.shape(), &dv));
    if (dq->NumElements() == 0 && dk->NumElements() == 0 &&
        dv->NumElements() == 0) {
      return;
    }
    Tensor workspace;
    void* ws = nullptr;
    OP_REQUIRES_OK(
        ctx,
        AllocateWorkspace(ctx, ::kbm::gpu::FlashAttentionGradWorkspaceBytes(p),
                          &workspace, &ws));
    ::kbm::gpu::FlashAttentionGradArgs<GpuTagT<T>> args;
    args.p = p;
    args.d_o = GpuPtr<T>(d_o);
    args.q = GpuPtr<T>(q);
    args.k = GpuPtr<T>(k);
    args.v = GpuPtr<T>(v);
    args.key_mask = OptionalMask(key_mask);
    args.mask = OptionalMask(mask);
    args.o = GpuPtr<T>(o);
    args.lse = lse.flat<float>().data();
    args.dq = GpuPtr<T>(dq);
    args.dk = GpuPtr<T>(dk);
    args.dv = GpuPtr<T>(dv);
    OP_REQUIRES_OK(ctx, FromGpuCode(::kbm::gpu::LaunchFlashAttentionGrad(
                                        args, ws, GpuStream(ctx)),
                                    "Kbm>FlashAttentionGrad"));
  }

 private:
  float scale_;
  bool causal_;
  bool top_left_;
  float rate_;
};

class AttentionDropoutMaskGpuOp : public OpKernel {
 public:
  explicit AttentionDropoutMaskGpuOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rate", &rate_));
    OP_REQUIRES_OK(ctx, CheckDropoutRate(rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seed = ctx->input(0);
    const Tensor& shape_t = ctx->input(1);
    uint64_t seed0 = 0, seed1 = 0;
    OP_REQUIRES_OK(ctx, ReadDropoutSeed(seed, &seed0, &seed1));
    OP_REQUIRES(ctx, shape_t.dims() == 1 && shape_t.NumElements() == 4,
                absl::InvalidArgumentError(absl::StrCat(
                    "shape must have shape [4] ([B, H, Tq, Tk]), got ",
                    ShapeString(shape_t))));
    TensorShape shape;
    int64_t dims[4];
    for (int i = 0; i < 4; ++i) {
      dims[i] = shape_t.flat<int64_t>()(i);
      OP_REQUIRES(ctx, dims[i] >= 0,
                  absl::InvalidArgumentError(absl::StrCat(
                      "shape must be non-negative, got ", dims[i], " at ", i)));
      OP_REQUIRES_OK(ctx, shape.AddDimWithStatus(dims[i]));
    }
    Tensor* keep = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &keep));
    if (keep->NumElements() == 0) return;
    OP_REQUIRES_OK(
        ctx, FromGpuCode(::kbm::gpu::LaunchAttentionDropoutMask(
                             seed0, seed1, dims[0], dims[1], dims[2], dims[3],
                             rate_, keep->flat<bool>().data(), GpuStream(ctx)),
                         "Kbm>AttentionDropoutMask"));
  }

 private:
  float rate_;
};

#define KBM_REGISTER_ATTENTION_GPU(T)                     \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FlashAttention")      \
                              .Device(DEVICE_GPU)         \
                              .TypeConstraint<T>("T")     \
                              .TypeConstraint<float>("U") \
                              .HostMemory("seed"),        \
                          FlashAttentionGpuOp<T>);        \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FlashAttentionGrad")  \
                              .Device(DEVICE_GPU)         \
                              .TypeConstraint<T>("T")     \
                              .TypeConstraint<float>("U") \
                              .HostMemory("seed"),        \
                          FlashAttentionGradGpuOp<T>);

KBM_REGISTER_ATTENTION_GPU(float)
KBM_REGISTER_ATTENTION_GPU(Eigen::half)
KBM_REGISTER_ATTENTION_GPU(bfloat16)
#undef KBM_REGISTER_ATTENTION_GPU

REGISTER_KERNEL_BUILDER(Name("Kbm>AttentionDropoutMask")
                            .Device(DEVICE_GPU)
                            .HostMemory("seed")
                            .HostMemory("shape"),
                        AttentionDropoutMaskGpuOp);

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
