// CPU kernel of Kbm>Dropout. Blocks of 64 elements (16 Philox groups) are
// spread over the intra-op thread pool; each block's keep decisions come
// from the active SIMD variant as a 64-bit mask (dropout_simd.cc). float32
// is scaled by the variant's masked multiply; half and bfloat16 go through
// float32, float64 is scaled in double.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "cc/bias_activation/kernels/dropout.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "cc/common/philox.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const DropoutKernels& Kernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  if (ActiveIsa() == Isa::kAvx512Vnni) return avx512vnni::kDropoutKernels;
  return SelectIsa(avx::kDropoutKernels, avx2::kDropoutKernels);
#else
  return avx::kDropoutKernels;
#endif
}

constexpr int64_t kBlockCost = 4 * kDropoutBlock;  // Cycles per block.

// scale: 1 / (1 - rate) in double; float32, half and bfloat16 multiply by
// it rounded to float32.
template <typename T>
void ApplyBlock(const DropoutKernels& k, const T* x, uint64_t bits, int64_t n,
                double scale, T* y) {
  if constexpr (std::is_same_v<T, float>) {
    k.apply(x, bits, n, static_cast<float>(scale), y);
  } else if constexpr (std::is_same_v<T, double>) {
    for (int64_t e = 0; e < n; ++e) {
      y[e] = (bits >> e) & 1 ? x[e] * scale : 0.0;
    }
  } else {
    float buf[kDropoutBlock];
    for (int64_t e = 0; e < n; ++e) buf[e] = static_cast<float>(x[e]);
    k.apply(buf, bits, n, static_cast<float>(scale), buf);
    for (int64_t e = 0; e < n; ++e) y[e] = static_cast<T>(buf[e]);
  }
}

template <typename T>
class DropoutOp : public OpKernel {
 public:
  explicit DropoutOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rate", &rate_));
    OP_REQUIRES_OK(ctx, CheckDropoutRate(rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& seed = ctx->input(1);
    uint64_t seed0 = 0, seed1 = 0;
    OP_REQUIRES_OK(ctx, ReadDropoutSeed(seed, &seed0, &seed1));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const uint32_t threshold = kbm_philox::DropoutThreshold(rate_);
    const double scale = 1.0 / (1.0 - static_cast<double>(rate_));
    const T* px = x.flat<T>().data();
    T* py = y->flat<T>().data();
    const DropoutKernels& k = Kernels();
    const int64_t blocks = (n + kDropoutBlock - 1) / kDropoutBlock;
    ParallelFor(ctx, blocks, kBlockCost, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t start = b * kDropoutBlock;
        const int64_t len = std::min(kDropoutBlock, n - start);
        const uint64_t bits = k.keep_bits(seed0, seed1, b, threshold);
        ApplyBlock(k, px + start, bits, len, scale, py + start);
      }
    });
  }

 private:
  float rate_;
};

#define KBM_REGISTER_DROPOUT(T)                        \
  REGISTER_KERNEL_BUILDER(Name("Kbm>Dropout")          \
                              .Device(DEVICE_CPU)      \
                              .HostMemory("seed")      \
                              .TypeConstraint<T>("T"), \
                          DropoutOp<T>);

KBM_REGISTER_DROPOUT(Eigen::half)
KBM_REGISTER_DROPOUT(Eigen::bfloat16)
KBM_REGISTER_DROPOUT(float)
KBM_REGISTER_DROPOUT(double)

#undef KBM_REGISTER_DROPOUT

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
