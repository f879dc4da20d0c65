// Kbm>LibraryInfo: reports how this op library was built and which SIMD
// variant is active, for kbm.ops.kernels_available() and the benchmarks.
#include "absl/strings/str_cat.h"
#include "cc/common/cpu_isa.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

REGISTER_OP("Kbm>LibraryInfo")
    .Output("info: string")
    .SetShapeFn(shape_inference::ScalarShape)
    .Doc("Returns 'active_isa=<isa>;compiled_isas=<isa,...>'.");

class LibraryInfoOp : public OpKernel {
 public:
  explicit LibraryInfoOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tstring>()() = absl::StrCat("active_isa=", IsaName(ActiveIsa()),
                                            ";compiled_isas=", CompiledIsas());
  }
};

REGISTER_KERNEL_BUILDER(Name("Kbm>LibraryInfo").Device(DEVICE_CPU),
                        LibraryInfoOp);

}  // namespace kbm
}  // namespace tensorflow
