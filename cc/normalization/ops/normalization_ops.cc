// Op definitions of the normalisation family: LayerNorm and RMSNorm over the
// last axis, each with an explicit gradient op.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// x: [..., C] (rank >= 1). Each name in `param_inputs` is a [C] vector.
// Sets `*x_out` to x's shape with the last dim merged with the params', and
// `*rows_out` to x's shape without its last dim.
absl::Status NormInputShapes(InferenceContext* c, int x_index,
                             std::initializer_list<int> param_indices,
                             ShapeHandle* x_out, ShapeHandle* rows_out) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(x_index), 1, &x));
  DimensionHandle last = c->Dim(x, -1);
  for (int i : param_indices) {
    ShapeHandle p;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &p));
    TF_RETURN_IF_ERROR(c->Merge(last, c->Dim(p, 0), &last));
  }
  TF_RETURN_IF_ERROR(c->ReplaceDim(x, -1, last, x_out));
  return c->Subshape(*x_out, 0, -1, rows_out);
}

}  // namespace

REGISTER_OP("Kbm>FusedLayerNorm")
    .Input("x: T")
    .Input("gamma: U")
    .Input("beta: U")
    .Output("y: T")
    .Output("mean: U")
    .Output("rstd: U")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .Attr("epsilon: float = 0.001")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows;
      TF_RETURN_IF_ERROR(NormInputShapes(c, 0, {1, 2}, &x, &rows));
      c->set_output(0, x);
      c->set_output(1, rows);
      c->set_output(2, rows);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Layer normalisation over the last axis of x:
y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + epsilon).
half and bfloat16 inputs are computed in float32 (U = float); float64 in
float64. mean and rstd (shape x.shape[:-1]) are returned for the gradient.
)doc");

REGISTER_OP("Kbm>FusedLayerNormGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("gamma: U")
    .Input("mean: U")
    .Input("rstd: U")
    .Output("dx: T")
    .Output("dgamma: U")
    .Output("dbeta: U")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    // The forward op's epsilon. The kernel uses mean and rstd instead; the
    // attr is kept for the second-order gradient, which recomputes them.
    .Attr("epsilon: float = 0.001")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows, dy;
      TF_RETURN_IF_ERROR(NormInputShapes(c, 1, {2}, &x, &rows));
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), x, &dy));
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->Merge(c->input(3), rows, &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->input(4), rows, &unused));
      c->set_output(0, dy);
      c->set_output(1, c->Vector(c->Dim(dy, -1)));
      c->set_output(2, c->Vector(c->Dim(dy, -1)));
      return absl::OkStatus();
    })
    .Doc("Gradient of Kbm>FusedLayerNorm w.r.t. x, gamma and beta.");

REGISTER_OP("Kbm>FusedRmsNorm")
    .Input("x: T")
    .Input("gamma: U")
    .Output("y: T")
    .Output("rstd: U")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .Attr("epsilon: float = 1e-6")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows;
      TF_RETURN_IF_ERROR(NormInputShapes(c, 0, {1}, &x, &rows));
      c->set_output(0, x);
      c->set_output(1, rows);
      return absl::OkStatus();
    })
    .Doc(R"doc(
RMS normalisation over the last axis of x:
y = x * rstd * gamma, rstd = 1 / sqrt(mean(x^2) + epsilon).
)doc");

REGISTER_OP("Kbm>FusedRmsNormGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("gamma: U")
    .Input("rstd: U")
    .Output("dx: T")
    .Output("dgamma: U")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double}")
    .Attr("epsilon: float = 1e-6")  // As in Kbm>FusedLayerNormGrad.
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows, dy, unused;
      TF_RETURN_IF_ERROR(NormInputShapes(c, 1, {2}, &x, &rows));
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), x, &dy));
      TF_RETURN_IF_ERROR(c->Merge(c->input(3), rows, &unused));
      c->set_output(0, dy);
      c->set_output(1, c->Vector(c->Dim(dy, -1)));
      return absl::OkStatus();
    })
    .Doc("Gradient of Kbm>FusedRmsNorm w.r.t. x and gamma.");

}  // namespace kbm
}  // namespace tensorflow
