// Op definitions of the fused optimizer family. Each op updates many
// (variable, slots, gradient) groups in place through resource handles, in
// one pass over memory per variable (two for LAMB, which needs per-variable
// norms between the passes). Scalars that depend on the step (bias
// corrections, learning rate) are computed by the Python optimizer and
// passed as named scalar inputs; `decay[i]` is variable i's decoupled weight
// decay factor (learning_rate * weight_decay, or 0).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// Inputs [first, first + count) are scalars; the next one, decay, is [n].
absl::Status ScalarsShape(InferenceContext* c, int first, int count) {
  int n;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  ShapeHandle s;
  for (int i = first; i < first + count; ++i) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &s));
  }
  shape_inference::DimensionHandle d;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + count), 1, &s));
  return c->WithValue(c->Dim(s, 0), n, &d);
}

}  // namespace

REGISTER_OP("Kbm>MultiApplyAdam")
    .Input("vars: N * resource")
    .Input("ms: N * resource")
    .Input("vs: N * resource")
    .Input("grads: N * T")
    .Input("one_minus_beta_1: U")
    .Input("one_minus_beta_2: U")
    .Input("coef_adaptive: U")
    .Input("bias_2: U")
    .Input("coef_sgd: U")
    .Input("epsilon: U")
    .Input("decay: U")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      return ScalarsShape(c, 4 * n, 6);
    })
    .Doc(R"doc(
Adam-family update (AdamW, RAdam) of N variables in place. For each variable
p with slots m, v, gradient g and decay d = decay[i], elementwise, in this
order (float32 math for half and bfloat16 variables):
  m = m + (g - m) * one_minus_beta_1
  v = v + (g * g - v) * one_minus_beta_2
  p = p - p * d
  p = p - ((m * coef_adaptive) / (sqrt(v / bias_2) + epsilon) + m * coef_sgd)
All scalar inputs are scalars; decay is [N]. AdamW (Keras's arithmetic):
coef_adaptive = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), bias_2 = 1,
coef_sgd = 0. RAdam sets coef_adaptive and coef_sgd for its rectified and
un-rectified steps and bias_2 = 1 - beta_2^t.
)doc");

REGISTER_OP("Kbm>MultiApplyLamb")
    .Input("vars: N * resource")
    .Input("ms: N * resource")
    .Input("vs: N * resource")
    .Input("grads: N * T")
    .Input("learning_rate: U")
    .Input("one_minus_beta_1: U")
    .Input("one_minus_beta_2: U")
    .Input("bias_1: U")
    .Input("bias_2: U")
    .Input("epsilon: U")
    .Input("decay: U")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      return ScalarsShape(c, 4 * n, 6);
    })
    .Doc(R"doc(
LAMB update of N variables in place. For each variable p with slots m, v,
gradient g and decay d = decay[i], elementwise:
  m = m + (g - m) * one_minus_beta_1
  v = v + (g * g - v) * one_minus_beta_2
  p = p - p * d
  u = (m / bias_1) / (sqrt(v / bias_2) + epsilon)
then r = ||p|| / ||u|| over the whole variable (p after the decay; r = 1
if either norm is 0) and p = p - (r * learning_rate) * u.
bias_k = 1 - beta_k^t. All scalar inputs are scalars; decay is [N].
)doc");

REGISTER_OP("Kbm>MultiApplyLion")
    .Input("vars: N * resource")
    .Input("ms: N * resource")
    .Input("grads: N * T")
    .Input("learning_rate: U")
    .Input("beta_1: U")
    .Input("beta_2: U")
    .Input("decay: U")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      return ScalarsShape(c, 3 * n, 3);
    })
    .Doc(R"doc(
Lion update of N variables in place. For each variable p with slot m,
gradient g and decay d = decay[i], elementwise:
  c = m * beta_1 + g * (1 - beta_1)
  p = (p - p * d) - learning_rate * sign(c)   (sign(0) = 0, NaN stays NaN)
  m = m * beta_2 + g * (1 - beta_2)
All scalar inputs are scalars; decay is [N].
)doc");

}  // namespace kbm
}  // namespace tensorflow
