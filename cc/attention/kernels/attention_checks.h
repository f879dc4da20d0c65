// Input validation of the flash-attention ops, shared by the CPU kernel
// (attention_kernels.cc) and the GPU kernels (attention_gpu_kernels.cc).
// TensorFlow headers, no CUDA headers.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_CHECKS_H_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_CHECKS_H_

#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cc/attention/kernels/attention_gpu.h"
#include "cc/common/kernel_utils.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {

// Validates q, k, v, key_mask, the dense mask, seed and the attributes; fills
// the launcher parameters `p`.
inline absl::Status ReadAttentionParams(const Tensor& q, const Tensor& k,
                                        const Tensor& v, const Tensor& key_mask,
                                        const Tensor& mask, const Tensor& seed,
                                        float scale, bool causal, bool top_left,
                                        float rate,
                                        ::kbm::gpu::AttentionParams* p) {
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    if (t->dims() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          name,
          " must have rank 4 ([batch, length, heads, head_dim]), got "
          "shape ",
          ShapeString(*t)));
    }
  }
  p->batch = q.dim_size(0);
  p->q_len = q.dim_size(1);
  p->q_heads = q.dim_size(2);
  p->head_dim = q.dim_size(3);
  p->kv_len = k.dim_size(1);
  p->kv_heads = k.dim_size(2);
  p->value_dim = v.dim_size(3);
  p->scale = scale;
  p->causal = causal;
  p->causal_top_left = top_left;
  if (k.dim_size(0) != p->batch || v.dim_size(0) != p->batch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q, k and v must have the same batch size, got q ", ShapeString(q),
        ", k ", ShapeString(k), ", v ", ShapeString(v)));
  }
  if (k.dim_size(3) != p->head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("k must have the head_dim of q (", p->head_dim,
                     "), got k ", ShapeString(k), " and q ", ShapeString(q)));
  }
  if (v.dim_size(1) != p->kv_len || v.dim_size(2) != p->kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("v must have the length and heads of k, got v ",
                     ShapeString(v), " and k ", ShapeString(k)));
  }
  if (p->kv_heads == 0 || p->q_heads % p->kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the number of query heads (", p->q_heads,
                     ") must be a multiple of the number of key/value heads (",
                     p->kv_heads, ")"));
  }
  if (key_mask.NumElements() != 0 &&
      (key_mask.dims() != 2 || key_mask.dim_size(0) != p->batch ||
       key_mask.dim_size(1) != p->kv_len)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_mask must have shape [", p->batch, ",", p->kv_len,
        "] ([batch, key length]) or be empty, got ", ShapeString(key_mask)));
  }
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale must be finite, got ", scale));
  }
  p->mask_batch = 1;
  if (mask.NumElements() != 0) {
    if (mask.dims() != 3 ||
        (mask.dim_size(0) != 1 && mask.dim_size(0) != p->batch) ||
        mask.dim_size(1) != p->q_len || mask.dim_size(2) != p->kv_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "mask must have shape [", p->batch, " or 1,", p->q_len, ",",
          p->kv_len, "] ([batch, query length, key length]) or be empty, got ",
          ShapeString(mask)));
    }
    p->mask_batch = mask.dim_size(0);
  }
  if (!(rate >= 0.f && rate < 1.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dropout_rate must be in [0, 1), got ", rate));
  }
  p->dropout_rate = rate;
  if (rate > 0.f) {
    if (seed.dims() != 1 || seed.NumElements() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("seed must have shape [2] when dropout_rate > 0, got ",
                       ShapeString(seed)));
    }
    p->seed0 = static_cast<uint64_t>(seed.flat<int64_t>()(0));
    p->seed1 = static_cast<uint64_t>(seed.flat<int64_t>()(1));
  }
  return absl::OkStatus();
}

// Checks the backward pass's d_o, o ([batch, q_len, q_heads, value_dim]) and
// lse ([batch, q_heads, q_len]) against the sizes of the forward inputs.
inline absl::Status CheckGradShapes(const Tensor& d_o, const Tensor& o,
                                    const Tensor& lse, int64_t batch,
                                    int64_t q_len, int64_t q_heads,
                                    int64_t value_dim) {
  const TensorShape o_shape({batch, q_len, q_heads, value_dim});
  const TensorShape lse_shape({batch, q_heads, q_len});
  for (const auto& [name, t, want] :
       {std::tuple<const char*, const Tensor*, const TensorShape*>{"d_o", &d_o,
                                                                   &o_shape},
        {"o", &o, &o_shape},
        {"lse", &lse, &lse_shape}}) {
    if (t->shape() != *want) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must have shape ", want->DebugString(), ", got ",
                       ShapeString(*t)));
    }
  }
  return absl::OkStatus();
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_CHECKS_H_
