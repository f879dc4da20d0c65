// CPU kernels of Kbm>SoftmaxKLDivergence and its gradient. Rows (all axes
// but the last) are spread over the intra-op thread pool; float32 rows run
// the SIMD functions of the active variant, half and bfloat16 rows are
// widened to float32, float64 rows use the scalar templates.
#define EIGEN_USE_THREADS

#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "cc/distillation/kernels/distillation.h"
#include "cc/distillation/kernels/distillation_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const DistillationKernels& SimdKernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  return SelectIsa(avx::kDistillationKernels, avx2::kDistillationKernels);
#else
  return avx::kDistillationKernels;
#endif
}

constexpr int64_t kFwdCost = 30;  // Cycles per class (two exps).
constexpr int64_t kBwdCost = 30;

template <typename T>
using ComputeT = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
class SoftmaxKLOp : public OpKernel {
 public:
  using U = ComputeT<T>;
  explicit SoftmaxKLOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    const T* pt = t.flat<T>().data();
    const T* ps = s.flat<T>().data();
    U* pl = loss->flat<U>().data();
    U* plt = lse_t->flat<U>().data();
    U* pls = lse_s->flat<U>().data();
    const U inv_t = U(1) / U(temperature_);
    ParallelFor(ctx, rows, c * kFwdCost, [&](int64_t begin, int64_t end) {
      FloatRows<T> io(c, 2);
      for (int64_t i = begin; i < end; ++i) {
        KLRow<U> r;
        if constexpr (std::is_same_v<T, double>) {
          r = KLForwardScalar<double>(pt + i * c, ps + i * c, c, inv_t);
        } else {
          r = SimdKernels().kl_fwd(io.In(pt + i * c, 0), io.In(ps + i * c, 1),
                                   c, inv_t);
        }
        pl[i] = r.loss;
        plt[i] = r.teacher_lse;
        pls[i] = r.student_lse;
      }
    });
  }

 private:
  float temperature_;
};

template <typename T>
class SoftmaxKLGradOp : public OpKernel {
 public:
  using U = ComputeT<T>;
  explicit SoftmaxKLGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    const U* pg = dloss.flat<U>().data();
    const T* pt = t.flat<T>().data();
    const T* ps = s.flat<T>().data();
    const U* pl = ctx->input(3).flat<U>().data();
    const U* plt = ctx->input(4).flat<U>().data();
    const U* pls = ctx->input(5).flat<U>().data();
    T* pdt = teacher_grad_ ? dteacher->flat<T>().data() : nullptr;
    T* pds = dstudent->flat<T>().data();
    const U inv_t = U(1) / U(temperature_);
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(dstudent->TotalBytes());
    ParallelFor(ctx, rows, c * kBwdCost, [&](int64_t begin, int64_t end) {
      FloatRows<T> io(c, 4);
      for (int64_t i = begin; i < end; ++i) {
        const KLRow<U> r{pl[i], plt[i], pls[i]};
        if constexpr (std::is_same_v<T, double>) {
          KLBackwardScalar<double>(pt + i * c, ps + i * c, c, inv_t, r, pg[i],
                                   pdt ? pdt + i * c : nullptr, pds + i * c);
        } else {
          const float* ti = io.In(pt + i * c, 0);
          const float* si = io.In(ps + i * c, 1);
          float* dti = pdt ? io.Out(pdt + i * c, 2) : nullptr;
          SimdKernels().kl_bwd(ti, si, c, inv_t, r, pg[i], dti,
                               io.Out(pds + i * c, 3), stream);
          if (pdt) io.Commit(pdt + i * c, 2);
          io.Commit(pds + i * c, 3);
        }
      }
      if (stream) StreamingStoreFence();
    });
  }

 private:
  float temperature_;
  bool teacher_grad_;
};

#define KBM_REGISTER_KL(T, U)                                 \
  REGISTER_KERNEL_BUILDER(Name("Kbm>SoftmaxKLDivergence")     \
                              .Device(DEVICE_CPU)             \
                              .TypeConstraint<T>("T")         \
                              .TypeConstraint<U>("U"),        \
                          SoftmaxKLOp<T>);                    \
  REGISTER_KERNEL_BUILDER(Name("Kbm>SoftmaxKLDivergenceGrad") \
                              .Device(DEVICE_CPU)             \
                              .TypeConstraint<T>("T")         \
                              .TypeConstraint<U>("U"),        \
                          SoftmaxKLGradOp<T>);

KBM_REGISTER_KL(Eigen::half, float)
KBM_REGISTER_KL(Eigen::bfloat16, float)
KBM_REGISTER_KL(float, float)
KBM_REGISTER_KL(double, double)

#undef KBM_REGISTER_KL

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
