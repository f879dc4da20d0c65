// CPU kernels of the fused optimizer family: Kbm>MultiApplyAdam,
// Kbm>MultiApplyLamb and Kbm>MultiApplyLion.
//
// Each op takes N variables (and their slot variables) as resource handles
// and updates them in place, under the variables' locks (taken in address
// order, as TensorFlow's own training ops do; a variable whose buffer is
// shared with a pending read is copied first). The work of all N variables
// is cut into chunks of kChunk elements that are spread over the intra-op
// thread pool, so many small variables cost one op call, not N. float32 runs
// the SIMD functions of the active variant; half and bfloat16 are widened to
// float32 per chunk; float64 runs the scalar templates.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "cc/optimizers/kernels/optimizers.h"
#include "cc/optimizers/kernels/optimizers_inputs.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace tensorflow {
namespace kbm {
namespace {

using CPUDevice = Eigen::ThreadPoolDevice;

const OptimizerKernels& SimdKernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  return SelectIsa(avx::kOptimizerKernels, avx2::kOptimizerKernels);
#else
  return avx::kOptimizerKernels;
#endif
}

// Elements per unit of parallel work.
constexpr int64_t kChunk = 1 << 15;
// Elements per widened block for half and bfloat16.
constexpr int64_t kBlock = 1024;

struct Chunk {
  int var;
  int64_t begin, end;
};

// The variables of one op call, locked, checked and ready to update.
template <typename T>
class VariableGroups {
 public:
  // `slot_lists` names the resource list inputs (vars first), `grads` the
  // gradient list input.
  absl::Status Init(OpKernelContext* ctx,
                    const std::vector<const char*>& slot_lists,
                    const char* grads_name) {
    OpInputList grads;
    TF_RETURN_IF_ERROR(ctx->input_list(grads_name, &grads));
    const int n = grads.size();
    std::vector<int> ids;
    std::vector<std::pair<int, int>> ranges;
    for (const char* name : slot_lists) {
      int start, stop;
      TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange(name, &start, &stop));
      ranges.emplace_back(start, stop);
      for (int i = start; i < stop; ++i) ids.push_back(i);
    }
    // A variable of another dtype is rejected here, before
    // GetInputTensorFromVariable<T>: its copy-on-write path CHECK-fails on
    // it, aborting the process. (The dtype of a resource variable is fixed
    // when it is created, so reading it before locking is safe.)
    for (size_t s = 0; s < slot_lists.size(); ++s) {
      for (int i = 0; i < n; ++i) {
        core::RefCountPtr<Var> var;
        TF_RETURN_IF_ERROR(LookupResource(
            ctx, HandleFromInput(ctx, ranges[s].first + i), &var));
        const DataType dtype = var->tensor()->dtype();
        if (dtype != DataTypeToEnum<T>::value) {
          return absl::InvalidArgumentError(
              absl::StrCat(slot_lists[s], "[", i, "] has dtype ",
                           DataTypeString(dtype), " but the gradients are ",
                           DataTypeString(DataTypeToEnum<T>::value)));
        }
      }
    }
    lock_ = std::make_unique<VariableInputLockHolder>(
        MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(ctx, true, false,
                                                           ids));
    tensors_.assign(slot_lists.size(), std::vector<Tensor>(n));
    for (size_t s = 0; s < slot_lists.size(); ++s) {
      for (int i = 0; i < n; ++i) {
        TF_RETURN_IF_ERROR(GetInputTensorFromVariable<CPUDevice, T>(
            ctx, ranges[s].first + i, true, false, &tensors_[s][i]));
      }
    }
    TF_RETURN_IF_ERROR(CheckGroups(slot_lists, tensors_, grads_name, grads,
                                   DataTypeToEnum<T>::value));
    grads_.resize(n);
    for (int i = 0; i < n; ++i) {
      grads_[i] = grads[i];
      const int64_t size = grads_[i].NumElements();
      for (int64_t b = 0; b < size; b += kChunk) {
        chunks_.push_back({i, b, std::min(size, b + kChunk)});
      }
    }
    return absl::OkStatus();
  }

  int size() const { return static_cast<int>(grads_.size()); }
  T* slot(int s, int i) { return tensors_[s][i].flat<T>().data(); }
  const T* grad(int i) const { return grads_[i].flat<T>().data(); }
  const std::vector<Chunk>& chunks() const { return chunks_; }

 private:
  std::unique_ptr<VariableInputLockHolder> lock_;
  std::vector<std::vector<Tensor>> tensors_;
  std::vector<Tensor> grads_;
  std::vector<Chunk> chunks_;
};

// The values of the named scalar inputs and the decay vector.
template <typename U, int K>
absl::Status ReadScalars(OpKernelContext* ctx, const char* const (&names)[K],
                         int n, U (&values)[K], const U** decay) {
  const Tensor* t[K];
  TF_RETURN_IF_ERROR(ScalarInputs(ctx, names, t));
  for (int k = 0; k < K; ++k) values[k] = t[k]->template scalar<U>()();
  const Tensor* d;
  TF_RETURN_IF_ERROR(DecayInput(ctx, n, &d));
  *decay = d->flat<U>().data();
  return absl::OkStatus();
}

// Runs `fn(float* slots[k], const float* g, n)` over chunk c, widening half
// and bfloat16 to float32 blocks (k slot pointers, then the gradient).
template <typename T, int K, typename Fn>
void ForChunkAsFloat(VariableGroups<T>& groups, const Chunk& c, Fn fn) {
  if constexpr (std::is_same_v<T, float>) {
    float* slots[K];
    for (int s = 0; s < K; ++s) slots[s] = groups.slot(s, c.var) + c.begin;
    fn(slots, groups.grad(c.var) + c.begin, c.end - c.begin);
  } else {
    float buf[(K + 1) * kBlock];
    for (int64_t b = c.begin; b < c.end; b += kBlock) {
      const int64_t n = std::min(kBlock, c.end - b);
      float* slots[K];
      for (int s = 0; s < K; ++s) {
        slots[s] = buf + s * kBlock;
        const T* src = groups.slot(s, c.var) + b;
        for (int64_t i = 0; i < n; ++i)
          slots[s][i] = static_cast<float>(src[i]);
      }
      float* g = buf + K * kBlock;
      const T* gsrc = groups.grad(c.var) + b;
      for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(gsrc[i]);
      fn(slots, g, n);
      for (int s = 0; s < K; ++s) {
        T* dst = groups.slot(s, c.var) + b;
        for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(slots[s][i]);
      }
    }
  }
}

template <typename T>
using ScalarT = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ------------------------------------------------------------------- Adam

template <typename T>
class MultiApplyAdamOp : public OpKernel {
 public:
  using U = ScalarT<T>;
  explicit MultiApplyAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    VariableGroups<T> groups;
    OP_REQUIRES_OK(ctx, groups.Init(ctx, {"vars", "ms", "vs"}, "grads"));
    U sc[6];
    const U* decay;
    OP_REQUIRES_OK(
        ctx, ReadScalars(ctx, kAdamScalarNames, groups.size(), sc, &decay));
    const AdamScalars<U> s{sc[0], sc[1], sc[2], sc[3], sc[4], sc[5]};
    const auto& chunks = groups.chunks();
    ParallelFor(ctx, chunks.size(), kChunk * 6, [&](int64_t b0, int64_t b1) {
      for (int64_t ci = b0; ci < b1; ++ci) {
        const Chunk& c = chunks[ci];
        if constexpr (std::is_same_v<T, double>) {
          const int64_t o = c.begin;
          AdamScalar<double>(groups.slot(0, c.var) + o,
                             groups.slot(1, c.var) + o,
                             groups.slot(2, c.var) + o, groups.grad(c.var) + o,
                             c.end - c.begin, s, decay[c.var]);
        } else {
          ForChunkAsFloat<T, 3>(
              groups, c, [&](float** x, const float* g, int64_t n) {
                SimdKernels().adam(x[0], x[1], x[2], g, n, s, decay[c.var]);
              });
        }
      }
    });
  }
};

// ------------------------------------------------------------------- LAMB

template <typename T>
class MultiApplyLambOp : public OpKernel {
 public:
  using U = ScalarT<T>;
  explicit MultiApplyLambOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    VariableGroups<T> groups;
    OP_REQUIRES_OK(ctx, groups.Init(ctx, {"vars", "ms", "vs"}, "grads"));
    U sc[6];
    const U* decay;
    OP_REQUIRES_OK(
        ctx, ReadScalars(ctx, kLambScalarNames, groups.size(), sc, &decay));
    const LambScalars<U> s{sc[0], sc[1], sc[2], sc[3], sc[4], sc[5]};
    const auto& chunks = groups.chunks();
    // Pass 1: moments, and per-chunk squared norms of p and of the update.
    std::vector<double> w2(chunks.size(), 0.0), u2(chunks.size(), 0.0);
    ParallelFor(ctx, chunks.size(), kChunk * 8, [&](int64_t b0, int64_t b1) {
      for (int64_t ci = b0; ci < b1; ++ci) {
        const Chunk& c = chunks[ci];
        if constexpr (std::is_same_v<T, double>) {
          const int64_t o = c.begin;
          LambMomentsScalar<double>(
              groups.slot(0, c.var) + o, groups.slot(1, c.var) + o,
              groups.slot(2, c.var) + o, groups.grad(c.var) + o,
              c.end - c.begin, s, decay[c.var], &w2[ci], &u2[ci]);
        } else {
          ForChunkAsFloat<T, 3>(
              groups, c, [&](float** x, const float* g, int64_t n) {
                SimdKernels().lamb_moments(x[0], x[1], x[2], g, n, s,
                                           decay[c.var], &w2[ci], &u2[ci]);
              });
        }
      }
    });
    // Trust ratio per variable.
    std::vector<double> wn(groups.size(), 0.0), un(groups.size(), 0.0);
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      wn[chunks[ci].var] += w2[ci];
      un[chunks[ci].var] += u2[ci];
    }
    std::vector<U> ratio_lr(groups.size());
    for (int i = 0; i < groups.size(); ++i) {
      const U w = static_cast<U>(std::sqrt(wn[i]));
      const U u = static_cast<U>(std::sqrt(un[i]));
      const U ratio = (w > U(0) && u > U(0)) ? w / u : U(1);
      ratio_lr[i] = ratio * s.lr;
    }
    // Pass 2: the update.
    ParallelFor(ctx, chunks.size(), kChunk * 6, [&](int64_t b0, int64_t b1) {
      for (int64_t ci = b0; ci < b1; ++ci) {
        const Chunk& c = chunks[ci];
        if constexpr (std::is_same_v<T, double>) {
          const int64_t o = c.begin;
          LambApplyScalar<double>(
              groups.slot(0, c.var) + o, groups.slot(1, c.var) + o,
              groups.slot(2, c.var) + o, groups.grad(c.var) + o,
              c.end - c.begin, s, decay[c.var], ratio_lr[c.var]);
        } else {
          ForChunkAsFloat<T, 3>(
              groups, c, [&](float** x, const float* g, int64_t n) {
                SimdKernels().lamb_apply(x[0], x[1], x[2], g, n, s,
                                         decay[c.var], ratio_lr[c.var]);
              });
        }
      }
    });
  }
};

// ------------------------------------------------------------------- Lion

template <typename T>
class MultiApplyLionOp : public OpKernel {
 public:
  using U = ScalarT<T>;
  explicit MultiApplyLionOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    VariableGroups<T> groups;
    OP_REQUIRES_OK(ctx, groups.Init(ctx, {"vars", "ms"}, "grads"));
    U sc[3];
    const U* decay;
    OP_REQUIRES_OK(
        ctx, ReadScalars(ctx, kLionScalarNames, groups.size(), sc, &decay));
    const LionScalars<U> s{sc[0], sc[1], sc[2]};
    const auto& chunks = groups.chunks();
    ParallelFor(ctx, chunks.size(), kChunk * 4, [&](int64_t b0, int64_t b1) {
      for (int64_t ci = b0; ci < b1; ++ci) {
        const Chunk& c = chunks[ci];
        if constexpr (std::is_same_v<T, double>) {
          const int64_t o = c.begin;
          LionScalar<double>(groups.slot(0, c.var) + o,
                             groups.slot(1, c.var) + o, groups.grad(c.var) + o,
                             c.end - c.begin, s, decay[c.var]);
        } else {
          ForChunkAsFloat<T, 2>(
              groups, c, [&](float** x, const float* g, int64_t n) {
                SimdKernels().lion(x[0], x[1], g, n, s, decay[c.var]);
              });
        }
      }
    });
  }
};

#define KBM_REGISTER_OPTIMIZERS(T, U)                  \
  REGISTER_KERNEL_BUILDER(Name("Kbm>MultiApplyAdam")   \
                              .Device(DEVICE_CPU)      \
                              .TypeConstraint<T>("T")  \
                              .TypeConstraint<U>("U"), \
                          MultiApplyAdamOp<T>);        \
  REGISTER_KERNEL_BUILDER(Name("Kbm>MultiApplyLamb")   \
                              .Device(DEVICE_CPU)      \
                              .TypeConstraint<T>("T")  \
                              .TypeConstraint<U>("U"), \
                          MultiApplyLambOp<T>);        \
  REGISTER_KERNEL_BUILDER(Name("Kbm>MultiApplyLion")   \
                              .Device(DEVICE_CPU)      \
                              .TypeConstraint<T>("T")  \
                              .TypeConstraint<U>("U"), \
                          MultiApplyLionOp<T>);

KBM_REGISTER_OPTIMIZERS(Eigen::half, float)
KBM_REGISTER_OPTIMIZERS(Eigen::bfloat16, float)
KBM_REGISTER_OPTIMIZERS(float, float)
KBM_REGISTER_OPTIMIZERS(double, double)

#undef KBM_REGISTER_OPTIMIZERS

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
