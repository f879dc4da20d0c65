// Op definitions of the quantized matmul family: W8A8 (dynamic int8
// activations x int8 weights) and weight-only (float x int8/int4 weights).
// Inference ops: no gradient op (the Python wrapper gives x the
// straight-through gradient through the reference math).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// x: [..., K], kernel_q: [ceil(N/8), kb, 8, 4], kernel_scale: [N] or
// [groups, N] (max_scale_rank), bias: [N] or [0]. y: [..., N].
absl::Status QuantizedMatMulShape(InferenceContext* c, int max_scale_rank) {
  ShapeHandle x, packed, scale, bias, y;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &packed));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(packed, 2), 8, &unused));
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(packed, 3), 4, &unused));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(2), 1, &scale));
  TF_RETURN_IF_ERROR(c->WithRankAtMost(scale, max_scale_rank, &scale));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &bias));
  TF_RETURN_IF_ERROR(c->ReplaceDim(x, -1, c->Dim(scale, -1), &y));
  c->set_output(0, y);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("Kbm>QuantizedMatMul")
    .Input("x: T")
    .Input("kernel_q: int8")
    .Input("kernel_scale: float")
    .Input("bias: float")
    .Output("y: output_dtype")
    .Attr("T: {half, bfloat16, float}")
    .Attr("output_dtype: {half, bfloat16, float}")
    .Attr("activation: {'linear', 'relu', 'gelu', 'gelu_tanh'} = 'linear'")
    .SetShapeFn([](InferenceContext* c) { return QuantizedMatMulShape(c, 1); })
    .Doc(R"doc(
y = act(float(q_x @ q_w) * (s_x * kernel_scale) + bias), W8A8. Each row of x
is quantized to int8 (s_x = max|row| / 127, q_x = round-half-even of
x * (127 / max|row|)); the int32 sums are exact. kernel_q is the packed
[ceil(N/8), ceil(K/4), 8, 4] int8 kernel; kernel_scale [N]; bias [N] or
empty. Rows with NaN or Inf give NaN rows; rows with max|x| < 2^-120 count
as zeros. kernel_q's values must lie in [-127, 127]. output_dtype is T or
float.
)doc");

REGISTER_OP("Kbm>WeightOnlyMatMul")
    .Input("x: T")
    .Input("kernel_q: int8")
    .Input("kernel_scale: float")
    .Input("bias: float")
    .Output("y: output_dtype")
    .Attr("T: {half, bfloat16, float}")
    .Attr("output_dtype: {half, bfloat16, float}")
    .Attr("bits: int = 8")
    .Attr("group_size: int = 0")
    .Attr("activation: {'linear', 'relu', 'gelu', 'gelu_tanh'} = 'linear'")
    .SetShapeFn([](InferenceContext* c) { return QuantizedMatMulShape(c, 2); })
    .Doc(R"doc(
y = act(x @ (q * kernel_scale) + bias) in float32, with q the int8 (bits=8)
or int4 (bits=4, two values per byte along K, low nibble first) values of the
packed [ceil(N/8), ceil(K'/4), 8, 4] kernel_q (K' = K or K/2). kernel_scale
is [N] (group_size 0) or [K / group_size, N]; bias [N] or empty.
)doc");

}  // namespace kbm
}  // namespace tensorflow
