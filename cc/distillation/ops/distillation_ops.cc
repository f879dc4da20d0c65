// Op definitions of the distillation family: the temperature-scaled softmax
// KL divergence between teacher and student logits, and its gradient.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// teacher, student: [..., C] with the same shape; sets rows = [...].
absl::Status LogitShapes(InferenceContext* c, int teacher, int student,
                         ShapeHandle* logits, ShapeHandle* rows) {
  ShapeHandle t, s;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(teacher), 1, &t));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(student), 1, &s));
  TF_RETURN_IF_ERROR(c->Merge(t, s, logits));
  return c->Subshape(*logits, 0, -1, rows);
}

}  // namespace

REGISTER_OP("Kbm>SoftmaxKLDivergence")
    .Input("teacher_logits: T")
    .Input("student_logits: T")
    .Output("loss: U")
    .Output("teacher_lse: U")
    .Output("student_lse: U")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double} = DT_FLOAT")
    .Attr("temperature: float = 1.0")
    // Read by the registered gradient: whether to compute dteacher.
    .Attr("teacher_gradient: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle logits, rows;
      TF_RETURN_IF_ERROR(LogitShapes(c, 0, 1, &logits, &rows));
      c->set_output(0, rows);
      c->set_output(1, rows);
      c->set_output(2, rows);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Per row (last axis = classes): with t = teacher_logits / temperature,
s = student_logits / temperature, p = softmax(t), q = softmax(s):
loss = KL(p || q) = sum_j p_j (log p_j - log q_j), in one pass over both
rows (online log-sum-exp) plus one to accumulate. Classes whose teacher
logit is -inf contribute 0. teacher_lse and student_lse are the rows'
log-sum-exp of t and s, for the gradient.
)doc");

REGISTER_OP("Kbm>SoftmaxKLDivergenceGrad")
    .Input("dloss: U")
    .Input("teacher_logits: T")
    .Input("student_logits: T")
    .Input("loss: U")
    .Input("teacher_lse: U")
    .Input("student_lse: U")
    .Output("dteacher: T")
    .Output("dstudent: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double} = DT_FLOAT")
    .Attr("temperature: float = 1.0")
    // When false, dteacher is an empty tensor (the teacher is frozen).
    .Attr("teacher_gradient: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle logits, rows, unused;
      TF_RETURN_IF_ERROR(LogitShapes(c, 1, 2, &logits, &rows));
      for (int i : {0, 3, 4, 5}) {
        TF_RETURN_IF_ERROR(c->Merge(c->input(i), rows, &unused));
      }
      bool teacher_gradient;
      TF_RETURN_IF_ERROR(c->GetAttr("teacher_gradient", &teacher_gradient));
      c->set_output(0, teacher_gradient ? logits : c->Vector(0));
      c->set_output(1, logits);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of Kbm>SoftmaxKLDivergence: dstudent = dloss * (q - p) / temperature
and dteacher = dloss * p * (log p - log q - loss) / temperature, per row.
)doc");

}  // namespace kbm
}  // namespace tensorflow
