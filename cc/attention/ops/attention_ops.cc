// Op definitions of the attention family: tiled flash attention, its
// gradient, and the attention-dropout mask the kernels draw.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace kbm {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// Checks q [B, Tq, Hq, D], k [B, Tk, Hkv, D], v [B, Tk, Hkv, Dv] starting at
// input `first`; sets o's shape [B, Tq, Hq, Dv] and lse's [B, Hq, Tq].
absl::Status AttentionShapes(InferenceContext* c, int first, ShapeHandle* o,
                             ShapeHandle* lse) {
  ShapeHandle q, k, v;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first), 4, &q));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + 1), 4, &k));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + 2), 4, &v));
  DimensionHandle batch, kv_len, kv_heads, head_dim;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(q, 0), c->Dim(k, 0), &batch));
  TF_RETURN_IF_ERROR(c->Merge(batch, c->Dim(v, 0), &batch));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(k, 1), c->Dim(v, 1), &kv_len));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(k, 2), c->Dim(v, 2), &kv_heads));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(q, 3), c->Dim(k, 3), &head_dim));
  *o = c->MakeShape({batch, c->Dim(q, 1), c->Dim(q, 2), c->Dim(v, 3)});
  *lse = c->MakeShape({batch, c->Dim(q, 2), c->Dim(q, 1)});
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("Kbm>FlashAttention")
    .Input("q: T")
    .Input("k: T")
    .Input("v: T")
    .Input("key_mask: bool")
    .Input("mask: bool")
    .Input("seed: int64")
    .Output("o: T")
    .Output("lse: U")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double} = DT_FLOAT")
    .Attr("scale: float")
    .Attr("causal: bool = false")
    .Attr("causal_top_left: bool = false")
    .Attr("dropout_rate: float = 0.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle o, lse;
      TF_RETURN_IF_ERROR(AttentionShapes(c, 0, &o, &lse));
      c->set_output(0, o);
      c->set_output(1, lse);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Softmax attention softmax(scale * q k^T + mask) v without materialising the
score matrix. q: [B, Tq, Hq, D]; k: [B, Tk, Hkv, D]; v: [B, Tk, Hkv, Dv],
with Hq a multiple of Hkv (query head h uses key/value head h / (Hq/Hkv)).
key_mask: [B, Tk] (true = attend) or an empty tensor for no mask. mask:
[Bm, Tq, Tk] with Bm 1 or B (true = attend; broadcast over the batch when
Bm is 1, shared by all heads) or an empty tensor. causal: query i sees keys
j <= i + Tk - Tq (bottom-right aligned), or j <= i when causal_top_left
(Keras's use_causal_mask). A query that sees no key gets zeros and
lse = +inf. lse ([B, Hq, Tq], float32, or float64 for float64 inputs: U) is
the log-sum-exp of each row's visible scaled scores (without dropout).
dropout_rate r in [0, 1): probability p_ij is kept, times 1 / (1 - r), when
Kbm>AttentionDropoutMask(seed, rate=r) is true at [b, h, i, j] (a
counter-based Philox stream keyed by seed [2]; seed is read only when
r > 0), else dropped.
)doc");

REGISTER_OP("Kbm>FlashAttentionGrad")
    .Input("d_o: T")
    .Input("q: T")
    .Input("k: T")
    .Input("v: T")
    .Input("key_mask: bool")
    .Input("mask: bool")
    .Input("seed: int64")
    .Input("o: T")
    .Input("lse: U")
    .Output("dq: T")
    .Output("dk: T")
    .Output("dv: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("U: {float, double} = DT_FLOAT")
    .Attr("scale: float")
    .Attr("causal: bool = false")
    .Attr("causal_top_left: bool = false")
    .Attr("dropout_rate: float = 0.0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle o, lse, unused;
      TF_RETURN_IF_ERROR(AttentionShapes(c, 1, &o, &lse));
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), o, &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->input(7), o, &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->input(8), lse, &unused));
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(3));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of Kbm>FlashAttention w.r.t. q, k and v. Scores are recomputed tile
by tile from q, k and lse, and the dropout mask is regenerated from seed; o
(the dropped-out output) is used for rowsum(d_o * o).
)doc");

REGISTER_OP("Kbm>AttentionDropoutMask")
    .Input("seed: int64")
    .Input("shape: int64")
    .Output("keep: bool")
    .Attr("rate: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle seed, out;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &seed));
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(seed, 0), 2, &unused));
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(1, &out));
      TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc(R"doc(
The attention-dropout keep mask [B, H, Tq, Tk] (shape = [B, H, Tq, Tk]) that
Kbm>FlashAttention draws for seed [2] and dropout_rate = rate: element
[b, h, i, j] is kept when the Philox4x32-10 draw of its flat index is at
least rate * 2^32 (cc/common/philox.h documents the stream).
)doc");

}  // namespace kbm
}  // namespace tensorflow
