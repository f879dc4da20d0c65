// CPU kernels of Kbm>BiasGelu and Kbm>BiasGeluGrad. Rows are spread over the
// intra-op thread pool; float32 rows run the SIMD row functions of the active
// variant, half and bfloat16 rows are widened to float32 first, float64 rows
// use the scalar templates. dbias is reduced over all leading axes here, in
// per-block float partials summed in double.
#define EIGEN_USE_THREADS

#include <type_traits>

#include "absl/strings/str_cat.h"
#include "cc/bias_activation/kernels/bias_activation.h"
#include "cc/bias_activation/kernels/bias_activation_checks.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const BiasGeluRowKernels& RowKernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  return SelectIsa(avx::kBiasGeluRowKernels, avx2::kBiasGeluRowKernels);
#else
  return avx::kBiasGeluRowKernels;
#endif
}

constexpr int64_t kFwdCost = 24;  // Cycles per element (exp + division).
constexpr int64_t kBwdCost = 32;

// The accumulation type of dbias partials.
template <typename T>
using AccT = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
class BiasGeluOp : public OpKernel {
 public:
  explicit BiasGeluOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    const int64_t rows = x.NumElements() / c;
    const T* px = x.flat<T>().data();
    const T* pb = bias.flat<T>().data();
    T* py = y->flat<T>().data();
    const bool approx = approximate_;
    // Widened bias, shared by all shards.
    FloatRows<T> bias_io(c, 1);
    const float* bias_f = nullptr;
    if constexpr (!std::is_same_v<T, double>) bias_f = bias_io.In(pb, 0);
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(y->TotalBytes());
    ParallelFor(ctx, rows, c * kFwdCost, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<T, double>) {
        for (int64_t i = begin; i < end; ++i) {
          for (int64_t j = 0; j < c; ++j) {
            py[i * c + j] = GeluScalar<double>(px[i * c + j] + pb[j], approx);
          }
        }
      } else {
        const BiasGeluRowKernels& k = RowKernels();
        FloatRows<T> rows_io(c, 1);
        for (int64_t i = begin; i < end; ++i) {
          k.fwd(rows_io.In(px + i * c, 0), bias_f, c, approx,
                rows_io.Out(py + i * c, 0), stream);
          rows_io.Commit(py + i * c, 0);
        }
        if (stream) StreamingStoreFence();
      }
    });
  }

 private:
  bool approximate_;
};

template <typename T>
class BiasGeluGradOp : public OpKernel {
 public:
  explicit BiasGeluGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    const int64_t rows = c == 0 ? 0 : x.NumElements() / c;
    const int64_t blocks = NumRowBlocks(ctx, rows);
    if (blocks == 0 || c == 0) {
      dbias->flat<T>().setZero();
      return;
    }
    using Acc = AccT<T>;
    Tensor partials;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_temp(DataTypeToEnum<Acc>::value,
                                      TensorShape({blocks, c}), &partials));
    const T* pdy = dy.flat<T>().data();
    const T* px = x.flat<T>().data();
    const T* pb = bias.flat<T>().data();
    T* pdx = dx->flat<T>().data();
    Acc* pp = partials.flat<Acc>().data();
    const bool approx = approximate_;
    FloatRows<T> bias_io(c, 1);
    const float* bias_f = nullptr;
    if constexpr (!std::is_same_v<T, double>) bias_f = bias_io.In(pb, 0);
    const int64_t block_cost = (rows / blocks + 1) * c * kBwdCost;
    const bool stream =
        std::is_same_v<T, float> && UseStreamingStores(dx->TotalBytes());
    ParallelFor(ctx, blocks, block_cost, [&](int64_t b0, int64_t b1) {
      FloatRows<T> rows_io(c, 2);
      for (int64_t b = b0; b < b1; ++b) {
        Acc* db = pp + b * c;
        std::fill(db, db + c, Acc(0));
        const auto [r0, r1] = BlockRows(b, blocks, rows);
        for (int64_t i = r0; i < r1; ++i) {
          if constexpr (std::is_same_v<T, double>) {
            for (int64_t j = 0; j < c; ++j) {
              const double d =
                  pdy[i * c + j] *
                  GeluGradScalar<double>(px[i * c + j] + pb[j], approx);
              pdx[i * c + j] = d;
              db[j] += d;
            }
          } else {
            const float* dyi = rows_io.In(pdy + i * c, 0);
            const float* xi = rows_io.In(px + i * c, 1);
            RowKernels().bwd(dyi, xi, bias_f, c, approx,
                             rows_io.Out(pdx + i * c, 0), db, stream);
            rows_io.Commit(pdx + i * c, 0);
          }
        }
      }
      if (stream) StreamingStoreFence();
    });
    ReducePartials<Acc, T>(ctx, pp, blocks, 1, c, {dbias->flat<T>().data()});
  }

 private:
  bool approximate_;
};

#define KBM_REGISTER_BIAS_GELU(T)                                         \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("Kbm>BiasGelu").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      BiasGeluOp<T>);                                                     \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("Kbm>BiasGeluGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      BiasGeluGradOp<T>);

KBM_REGISTER_BIAS_GELU(Eigen::half)
KBM_REGISTER_BIAS_GELU(Eigen::bfloat16)
KBM_REGISTER_BIAS_GELU(float)
KBM_REGISTER_BIAS_GELU(double)

#undef KBM_REGISTER_BIAS_GELU

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
