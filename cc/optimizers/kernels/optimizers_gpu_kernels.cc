#if GOOGLE_CUDA
// GPU OpKernels of the fused optimizer family: Kbm>MultiApplyAdam,
// Kbm>MultiApplyLamb and Kbm>MultiApplyLion for float16, bfloat16 and
// float32 variables (float32 scalars), over the multi-tensor launchers of
// optimizers_gpu.h.
//
// Variables are locked as TensorFlow's training ops lock them (exclusive
// locks in mutex address order, held for the op) and, like
// PrepareToUpdateVariable, a variable whose buffer is shared with a pending
// read (or that is in copy-on-read mode) is first copied, here with a
// device-to-device copy on the op's stream (TensorFlow's own helper needs a
// GPU functor that the framework library does not export). The scalar inputs
// stay in device memory: the kernels read them there.
#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/common/tf_gpu_glue.h"
#include "cc/optimizers/kernels/optimizers_gpu.h"
#include "cc/optimizers/kernels/optimizers_inputs.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "xla/stream_executor/device_address.h"

namespace tensorflow {
namespace kbm {
namespace {

// The variables of one op call, locked, made exclusive and checked.
template <typename T>
class GpuVariableGroups {
 public:
  absl::Status Init(OpKernelContext* ctx,
                    const std::vector<const char*>& slot_lists,
                    const char* grads_name) {
    TF_RETURN_IF_ERROR(ctx->input_list(grads_name, &grads_));
    const int n = grads_.size();
    std::vector<Var*> vars;  // one per input, referenced
    std::vector<tsl::mutex*> mutexes;
    for (const char* name : slot_lists) {
      int start, stop;
      TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange(name, &start, &stop));
      for (int i = start; i < stop; ++i) {
        core::RefCountPtr<Var> var;
        absl::Status s = LookupResource(ctx, HandleFromInput(ctx, i), &var);
        if (!s.ok()) {
          for (Var* v : vars) v->Unref();
          return s;
        }
        mutexes.push_back(var->mu());
        vars.push_back(var.release());
      }
    }
    std::sort(mutexes.begin(), mutexes.end());
    mutexes.erase(std::unique(mutexes.begin(), mutexes.end()), mutexes.end());
    auto locks = std::make_unique<std::vector<tsl::mutex_lock>>();
    locks->reserve(mutexes.size());
    for (tsl::mutex* mu : mutexes) locks->emplace_back(*mu);
    lock_ = std::make_unique<VariableInputLockHolder>(vars, std::move(locks),
                                                      nullptr);
    tensors_.assign(slot_lists.size(), std::vector<Tensor>(n));
    for (size_t s = 0; s < slot_lists.size(); ++s) {
      for (int i = 0; i < n; ++i) {
        Var* var = vars[s * n + i];
        TF_RETURN_IF_ERROR(PrepareToUpdate(ctx, var));
        tensors_[s][i] = *var->tensor();
      }
    }
    return CheckGroups(slot_lists, tensors_, grads_name, grads_,
                       DataTypeToEnum<T>::value);
  }

  int size() const { return grads_.size(); }

  // Device pointers of slot list s (s = 0: the variables), and their sizes.
  std::vector<GpuTagT<T>*> slot(int s) {
    std::vector<GpuTagT<T>*> out(size());
    for (int i = 0; i < size(); ++i) out[i] = GpuPtr<T>(&tensors_[s][i]);
    return out;
  }
  std::vector<const GpuTagT<T>*> grads() const {
    std::vector<const GpuTagT<T>*> out(size());
    for (int i = 0; i < size(); ++i) out[i] = GpuPtr<T>(grads_[i]);
    return out;
  }
  std::vector<int64_t> sizes() const {
    std::vector<int64_t> out(size());
    for (int i = 0; i < size(); ++i) out[i] = grads_[i].NumElements();
    return out;
  }

 private:
  // Gives `var` a buffer of its own (see the file comment).
  static absl::Status PrepareToUpdate(OpKernelContext* ctx, Var* var) {
    Tensor* t = var->tensor();
    if (!t->IsInitialized()) return absl::OkStatus();
    if (!var->copy_on_read_mode.load() && t->RefCountIsOne()) {
      return absl::OkStatus();
    }
    Tensor tmp;
    AllocatorAttributes attr;
    attr.set_gpu_compatible(true);
    attr.set_nic_compatible(true);
    TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &tmp, attr));
    const uint64_t bytes = t->TotalBytes();
    if (bytes > 0) {
      stream_executor::DeviceAddressBase dst(
          const_cast<char*>(tmp.tensor_data().data()), bytes);
      stream_executor::DeviceAddressBase src(
          const_cast<char*>(t->tensor_data().data()), bytes);
      TF_RETURN_IF_ERROR(
          ctx->op_device_context()->stream()->MemcpyD2D(&dst, src, bytes));
    }
    *t = tmp;
    return absl::OkStatus();
  }

  std::unique_ptr<VariableInputLockHolder> lock_;
  std::vector<std::vector<Tensor>> tensors_;
  OpInputList grads_;
};

// Device pointers of the named float32 scalar inputs and of decay.
template <int K>
absl::Status DeviceScalars(OpKernelContext* ctx, const char* const (&names)[K],
                           int n, const float* (&values)[K],
                           const float** decay) {
  const Tensor* t[K];
  TF_RETURN_IF_ERROR(ScalarInputs(ctx, names, t));
  for (int k = 0; k < K; ++k) values[k] = t[k]->template flat<float>().data();
  const Tensor* d;
  TF_RETURN_IF_ERROR(DecayInput(ctx, n, &d));
  *decay = d->flat<float>().data();
  return absl::OkStatus();
}

template <typename T>
class MultiApplyAdamGpuOp : public OpKernel {
 public:
  explicit MultiApplyAdamGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    GpuVariableGroups<T> groups;
    OP_REQUIRES_OK(ctx, groups.Init(ctx, {"vars", "ms", "vs"}, "grads"));
    const float* sc[6];
    const float* decay;
    OP_REQUIRES_OK(
        ctx, DeviceScalars(ctx, kAdamScalarNames, groups.size(), sc, &decay));
    auto p = groups.slot(0), m = groups.slot(1), v = groups.slot(2);
    const auto g = groups.grads();
    const auto sizes = groups.sizes();
    ::kbm::gpu::MultiAdamArgs<GpuTagT<T>> a;
    a.num_tensors = groups.size();
    a.params = p.data();
    a.m = m.data();
    a.v = v.data();
    a.grads = g.data();
    a.sizes = sizes.data();
    a.one_minus_beta_1 = sc[0];
    a.one_minus_beta_2 = sc[1];
    a.coef_adaptive = sc[2];
    a.bias_2 = sc[3];
    a.coef_sgd = sc[4];
    a.epsilon = sc[5];
    a.decay = decay;
    OP_REQUIRES_OK(ctx,
                   FromGpuCode(::kbm::gpu::LaunchMultiAdam(a, GpuStream(ctx)),
                               "Kbm>MultiApplyAdam"));
  }
};

template <typename T>
class MultiApplyLambGpuOp : public OpKernel {
 public:
  explicit MultiApplyLambGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    GpuVariableGroups<T> groups;
    OP_REQUIRES_OK(ctx, groups.Init(ctx, {"vars", "ms", "vs"}, "grads"));
    const float* sc[6];
    const float* decay;
    OP_REQUIRES_OK(
        ctx, DeviceScalars(ctx, kLambScalarNames, groups.size(), sc, &decay));
    auto p = groups.slot(0), m = groups.slot(1), v = groups.slot(2);
    const auto g = groups.grads();
    const auto sizes = groups.sizes();
    ::kbm::gpu::MultiLambArgs<GpuTagT<T>> a;
    a.num_tensors = groups.size();
    a.params = p.data();
    a.m = m.data();
    a.v = v.data();
    a.grads = g.data();
    a.sizes = sizes.data();
    a.learning_rate = sc[0];
    a.one_minus_beta_1 = sc[1];
    a.one_minus_beta_2 = sc[2];
    a.bias_1 = sc[3];
    a.bias_2 = sc[4];
    a.epsilon = sc[5];
    a.decay = decay;
    Tensor holder;
    void* workspace;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx,
                                          ::kbm::gpu::MultiLambWorkspaceBytes(
                                              groups.size(), sizes.data()),
                                          &holder, &workspace));
    OP_REQUIRES_OK(ctx, FromGpuCode(::kbm::gpu::LaunchMultiLamb(a, workspace,
                                                                GpuStream(ctx)),
                                    "Kbm>MultiApplyLamb"));
  }
};

template <typename T>
class MultiApplyLionGpuOp : public OpKernel {
 public:
  explicit MultiApplyLionGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    GpuVariableGroups<T> groups;
    OP_REQUIRES_OK(ctx, groups.Init(ctx, {"vars", "ms"}, "grads"));
    const float* sc[3];
    const float* decay;
    OP_REQUIRES_OK(
        ctx, DeviceScalars(ctx, kLionScalarNames, groups.size(), sc, &decay));
    auto p = groups.slot(0), m = groups.slot(1);
    const auto g = groups.grads();
    const auto sizes = groups.sizes();
    ::kbm::gpu::MultiLionArgs<GpuTagT<T>> a;
    a.num_tensors = groups.size();
    a.params = p.data();
    a.m = m.data();
    a.grads = g.data();
    a.sizes = sizes.data();
    a.learning_rate = sc[0];
    a.beta_1 = sc[1];
    a.beta_2 = sc[2];
    a.decay = decay;
    OP_REQUIRES_OK(ctx,
                   FromGpuCode(::kbm::gpu::LaunchMultiLion(a, GpuStream(ctx)),
                               "Kbm>MultiApplyLion"));
  }
};

#define KBM_REGISTER_OPTIMIZERS_GPU(T)                     \
  REGISTER_KERNEL_BUILDER(Name("Kbm>MultiApplyAdam")       \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          MultiApplyAdamGpuOp<T>);         \
  REGISTER_KERNEL_BUILDER(Name("Kbm>MultiApplyLamb")       \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          MultiApplyLambGpuOp<T>);         \
  REGISTER_KERNEL_BUILDER(Name("Kbm>MultiApplyLion")       \
                              .Device(DEVICE_GPU)          \
                              .TypeConstraint<T>("T")      \
                              .TypeConstraint<float>("U"), \
                          MultiApplyLionGpuOp<T>);

KBM_REGISTER_OPTIMIZERS_GPU(Eigen::half)
KBM_REGISTER_OPTIMIZERS_GPU(Eigen::bfloat16)
KBM_REGISTER_OPTIMIZERS_GPU(float)

#undef KBM_REGISTER_OPTIMIZERS_GPU

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
