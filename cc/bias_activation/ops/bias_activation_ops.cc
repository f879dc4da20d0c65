// Op definitions of the bias + activation family.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// x: [..., C] (rank >= 1) and bias: [C]. Sets *out to x's shape with C merged.
absl::Status BiasInputShapes(InferenceContext* c, int x_index, int bias_index,
                             ShapeHandle* out) {
  ShapeHandle x, bias;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(x_index), 1, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(bias_index), 1, &bias));
  DimensionHandle last;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, -1), c->Dim(bias, 0), &last));
  return c->ReplaceDim(x, -1, last, out);
}

}  // namespace

REGISTER_OP("Kbm>BiasGelu")
    .Input("x: T")
    .Input("bias: T")
    .Output("y: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("approximate: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle y;
      TF_RETURN_IF_ERROR(BiasInputShapes(c, 0, 1, &y));
      c->set_output(0, y);
      return absl::OkStatus();
    })
    .Doc(R"doc(
y = gelu(x + bias), bias broadcast over the last axis of x. Exact (erf) GELU,
or the tanh approximation when approximate is true. half and bfloat16 are
computed in float32.
)doc");

REGISTER_OP("Kbm>BiasGeluGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("bias: T")
    .Output("dx: T")
    .Output("dbias: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("approximate: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, dy;
      TF_RETURN_IF_ERROR(BiasInputShapes(c, 1, 2, &x));
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), x, &dy));
      c->set_output(0, dy);
      c->set_output(1, c->Vector(c->Dim(dy, -1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of Kbm>BiasGelu: dx = dy * gelu'(x + bias) and dbias = dx summed over
every axis but the last.
)doc");

REGISTER_OP("Kbm>Dropout")
    .Input("x: T")
    .Input("seed: int64")
    .Output("y: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("rate: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle seed;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &seed));
      DimensionHandle two;
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(seed, 0), 2, &two));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Inverted dropout: y = x / (1 - rate) where kept, else 0. Element f of the
flattened x is kept when draw f % 4 of Philox4x32-10 with key seed[0] and
counter (f / 4, seed[1]) is at least rate * 2^32 (the stream of
Kbm>AttentionDropoutMask). The op is linear in x: its gradient is the same op
applied to dy with the same seed and rate.
)doc");

}  // namespace kbm
}  // namespace tensorflow
