// CPU kernels of the normalisation family (Kbm>FusedLayerNorm, Kbm>FusedRmsNorm
// and their gradients). Rows are spread over the intra-op thread pool; float32
// rows run the SIMD row functions of the active variant, half and bfloat16
// rows are widened to float32 first, float64 rows use the scalar template.
#define EIGEN_USE_THREADS

#include "absl/strings/str_cat.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "cc/normalization/kernels/normalization.h"
#include "cc/normalization/kernels/normalization_checks.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const NormRowKernels& RowKernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  return SelectIsa(avx::kNormRowKernels, avx2::kNormRowKernels);
#else
  return avx::kNormRowKernels;
#endif
}

// Cycles per element, for the thread pool's cost model.
constexpr int64_t kFwdCost = 8;
constexpr int64_t kBwdCost = 16;

// ---------------------------------------------------------------- LayerNorm

template <typename T, typename U>
class FusedLayerNormOp : public OpKernel {
 public:
  explicit FusedLayerNormOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES(ctx, epsilon_ >= 0.f,
                absl::InvalidArgumentError(
                    absl::StrCat("epsilon must be >= 0, got ", epsilon_)));
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
    const int64_t rows = x.NumElements() / c;
    const T* px = x.flat<T>().data();
    T* py = y->flat<T>().data();
    const U* pg = gamma.flat<U>().data();
    const U* pb = beta.flat<U>().data();
    U* pm = mean->flat<U>().data();
    U* pr = rstd->flat<U>().data();
    const float eps = epsilon_;
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(y->TotalBytes());
    ParallelFor(ctx, rows, c * kFwdCost, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<U, double>) {
        for (int64_t i = begin; i < end; ++i) {
          LayerNormFwdRowScalar<double>(px + i * c, pg, pb, c, eps, py + i * c,
                                        pm + i, pr + i);
        }
      } else {
        const NormRowKernels& k = RowKernels();
        FloatRows<T> rows_io(c, 1);
        for (int64_t i = begin; i < end; ++i) {
          const float* xi = rows_io.In(px + i * c, 0);
          k.layer_norm_fwd(xi, pg, pb, c, eps, rows_io.Out(py + i * c, 0),
                           pm + i, pr + i, stream);
          rows_io.Commit(py + i * c, 0);
        }
        if (stream) StreamingStoreFence();
      }
    });
  }

 private:
  float epsilon_;
};

template <typename T, typename U>
class FusedLayerNormGradOp : public OpKernel {
 public:
  explicit FusedLayerNormGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

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
    const int64_t blocks = NumRowBlocks(ctx, rows);
    if (blocks == 0) {
      dgamma->flat<U>().setZero();
      dbeta->flat<U>().setZero();
      return;
    }
    Tensor partials;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_temp(DataTypeToEnum<U>::value,
                                      TensorShape({blocks, 2, c}), &partials));
    const T* pdy = dy.flat<T>().data();
    const T* px = x.flat<T>().data();
    T* pdx = dx->flat<T>().data();
    const U* pg = gamma.flat<U>().data();
    const U* pm = mean.flat<U>().data();
    const U* pr = rstd.flat<U>().data();
    U* pp = partials.flat<U>().data();
    const int64_t block_cost = (rows / blocks + 1) * c * kBwdCost;
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(dx->TotalBytes());
    ParallelFor(ctx, blocks, block_cost, [&](int64_t b0, int64_t b1) {
      FloatRows<T> rows_io(c, 2);
      for (int64_t b = b0; b < b1; ++b) {
        U* dg = pp + (b * 2) * c;
        U* db = pp + (b * 2 + 1) * c;
        std::fill(dg, dg + 2 * c, U(0));
        const auto [r0, r1] = BlockRows(b, blocks, rows);
        for (int64_t i = r0; i < r1; ++i) {
          if constexpr (std::is_same_v<U, double>) {
            LayerNormBwdRowScalar<double>(pdy + i * c, px + i * c, pg, pm[i],
                                          pr[i], c, pdx + i * c, dg, db);
          } else {
            const float* dyi = rows_io.In(pdy + i * c, 0);
            const float* xi = rows_io.In(px + i * c, 1);
            RowKernels().layer_norm_bwd(dyi, xi, pg, pm[i], pr[i], c,
                                        rows_io.Out(pdx + i * c, 0), dg, db,
                                        stream);
            rows_io.Commit(pdx + i * c, 0);
          }
        }
      }
      if (stream) StreamingStoreFence();
    });
    ReducePartials<U, U>(ctx, pp, blocks, 2, c,
                         {dgamma->flat<U>().data(), dbeta->flat<U>().data()});
  }
};

// ------------------------------------------------------------------ RMSNorm

template <typename T, typename U>
class FusedRmsNormOp : public OpKernel {
 public:
  explicit FusedRmsNormOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES(ctx, epsilon_ >= 0.f,
                absl::InvalidArgumentError(
                    absl::StrCat("epsilon must be >= 0, got ", epsilon_)));
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
    const int64_t rows = x.NumElements() / c;
    const T* px = x.flat<T>().data();
    T* py = y->flat<T>().data();
    const U* pg = gamma.flat<U>().data();
    U* pr = rstd->flat<U>().data();
    const float eps = epsilon_;
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(y->TotalBytes());
    ParallelFor(ctx, rows, c * kFwdCost, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<U, double>) {
        for (int64_t i = begin; i < end; ++i) {
          RmsNormFwdRowScalar<double>(px + i * c, pg, c, eps, py + i * c,
                                      pr + i);
        }
      } else {
        const NormRowKernels& k = RowKernels();
        FloatRows<T> rows_io(c, 1);
        for (int64_t i = begin; i < end; ++i) {
          const float* xi = rows_io.In(px + i * c, 0);
          k.rms_norm_fwd(xi, pg, c, eps, rows_io.Out(py + i * c, 0), pr + i,
                         stream);
          rows_io.Commit(py + i * c, 0);
        }
        if (stream) StreamingStoreFence();
      }
    });
  }

 private:
  float epsilon_;
};

template <typename T, typename U>
class FusedRmsNormGradOp : public OpKernel {
 public:
  explicit FusedRmsNormGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

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
    const int64_t blocks = NumRowBlocks(ctx, rows);
    if (blocks == 0) {
      dgamma->flat<U>().setZero();
      return;
    }
    Tensor partials;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_temp(DataTypeToEnum<U>::value,
                                      TensorShape({blocks, 1, c}), &partials));
    const T* pdy = dy.flat<T>().data();
    const T* px = x.flat<T>().data();
    T* pdx = dx->flat<T>().data();
    const U* pg = gamma.flat<U>().data();
    const U* pr = rstd.flat<U>().data();
    U* pp = partials.flat<U>().data();
    const int64_t block_cost = (rows / blocks + 1) * c * kBwdCost;
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(dx->TotalBytes());
    ParallelFor(ctx, blocks, block_cost, [&](int64_t b0, int64_t b1) {
      FloatRows<T> rows_io(c, 2);
      for (int64_t b = b0; b < b1; ++b) {
        U* dg = pp + b * c;
        std::fill(dg, dg + c, U(0));
        const auto [r0, r1] = BlockRows(b, blocks, rows);
        for (int64_t i = r0; i < r1; ++i) {
          if constexpr (std::is_same_v<U, double>) {
            RmsNormBwdRowScalar<double>(pdy + i * c, px + i * c, pg, pr[i], c,
                                        pdx + i * c, dg);
          } else {
            const float* dyi = rows_io.In(pdy + i * c, 0);
            const float* xi = rows_io.In(px + i * c, 1);
            RowKernels().rms_norm_bwd(dyi, xi, pg, pr[i], c,
                                      rows_io.Out(pdx + i * c, 0), dg, stream);
            rows_io.Commit(pdx + i * c, 0);
          }
        }
      }
      if (stream) StreamingStoreFence();
    });
    ReducePartials<U, U>(ctx, pp, blocks, 1, c, {dgamma->flat<U>().data()});
  }
};

#define KBM_REGISTER_NORM(T, U)                          \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedLayerNorm")     \
                              .Device(DEVICE_CPU)        \
                              .TypeConstraint<T>("T")    \
                              .TypeConstraint<U>("U"),   \
                          FusedLayerNormOp<T, U>);       \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedLayerNormGrad") \
                              .Device(DEVICE_CPU)        \
                              .TypeConstraint<T>("T")    \
                              .TypeConstraint<U>("U"),   \
                          FusedLayerNormGradOp<T, U>);   \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedRmsNorm")       \
                              .Device(DEVICE_CPU)        \
                              .TypeConstraint<T>("T")    \
                              .TypeConstraint<U>("U"),   \
                          FusedRmsNormOp<T, U>);         \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FusedRmsNormGrad")   \
                              .Device(DEVICE_CPU)        \
                              .TypeConstraint<T>("T")    \
                              .TypeConstraint<U>("U"),   \
                          FusedRmsNormGradOp<T, U>);

KBM_REGISTER_NORM(Eigen::half, float)
KBM_REGISTER_NORM(Eigen::bfloat16, float)
KBM_REGISTER_NORM(float, float)
KBM_REGISTER_NORM(double, double)

#undef KBM_REGISTER_NORM

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
