// Op definitions of the fused optimizer family. Each op updates many
// (variable, slots, gradient) groups in place through resource handles, in
// one pass over memory per variable (two for LAMB, which needs per-variable
// norms between the passes). Scalars that depend on the step (bias
// corrections, learning rate) are computed by the Python optimizer and
// passed in `scalars`; `decay[i]` is variable i's decoupled weight decay
// factor (learning_rate * weight_decay, or 0).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// scalars: [count]; decay (the next input): [n], one per variable.
absl::Status ScalarsShape(InferenceContext* c, int scalars, int count,
                          int n) {
  ShapeHandle s;
  shape_inference::DimensionHandle d;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(scalars), 1, &s));
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(s, 0), count, &d));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(scalars + 1), 1, &s));
  return c->WithValue(c->Dim(s, 0), n, &d);
}

}  // namespace

REGISTER_OP("Kbm>MultiApplyAdam")
    .Input("vars: N * resource")
    .Input("ms: N * resource")
    .Input("vs: N * resource")
    .Input("grads: N * T")
    .Input("scalars: U")
    .Input("decay: U")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      return ScalarsShape(c, 4 * n, 6, n);
    })
    .Doc(R"doc(
Adam-family update (AdamW, RAdam), for each i:
  m += (g - m) * one_minus_beta_1;  v += (g * g - v) * one_minus_beta_2
  p -= p * decay[i]
  p -= m * coef_adaptive / (sqrt(v * inv_bias_2) + epsilon) + m * coef_sgd
scalars = [one_minus_beta_1, one_minus_beta_2, coef_adaptive, inv_bias_2,
coef_sgd, epsilon]. AdamW: coef_adaptive = lr * sqrt(1 - b2^t) / (1 - b1^t),
inv_bias_2 = 1, coef_sgd = 0 (Keras's arithmetic).
)doc");

REGISTER_OP("Kbm>MultiApplyLamb")
    .Input("vars: N * resource")
    .Input("ms: N * resource")
    .Input("vs: N * resource")
    .Input("grads: N * T")
    .Input("scalars: U")
    .Input("decay: U")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      return ScalarsShape(c, 4 * n, 6, n);
    })
    .Doc(R"doc(
LAMB update, for each i: m, v as in Adam; p -= p * decay[i];
u = (m * inv_bias_1) / (sqrt(v * inv_bias_2) + epsilon);
r = ||p|| / ||u|| (1 if either is 0); p -= r * lr * u.
scalars = [lr, one_minus_beta_1, one_minus_beta_2, inv_bias_1, inv_bias_2,
epsilon].
)doc");

REGISTER_OP("Kbm>MultiApplyLion")
    .Input("vars: N * resource")
    .Input("ms: N * resource")
    .Input("grads: N * T")
    .Input("scalars: U")
    .Input("decay: U")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      return ScalarsShape(c, 3 * n, 3, n);
    })
    .Doc(R"doc(
Lion update, for each i: p -= p * decay[i];
p -= lr * sign(m * beta_1 + g * (1 - beta_1)); m = m * beta_2 + g * (1 - beta_2).
scalars = [lr, beta_1, beta_2].
)doc");

}  // namespace kbm
}  // namespace tensorflow
