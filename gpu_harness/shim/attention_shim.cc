// C ABI over the flash-attention launchers for the TF-free harness (ctypes).
// dtype: 0 float32, 1 float16, 2 bfloat16. Boolean masks may be null.
// variant: AttentionParams::variant (0 default kernels, 1 plain kernels).
#include <cstddef>
#include <cstdint>

#include "cc/attention/kernels/attention_gpu.h"

namespace {

using kbm::gpu::AttentionParams;

AttentionParams Params(int64_t batch, int64_t q_len, int64_t kv_len,
                       int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                       int64_t value_dim, int64_t mask_batch, float scale,
                       int causal, int causal_top_left, float dropout_rate,
                       uint64_t seed0, uint64_t seed1, int variant) {
  AttentionParams p;
  p.batch = batch;
  p.q_len = q_len;
  p.kv_len = kv_len;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.value_dim = value_dim;
  p.mask_batch = mask_batch;
  p.scale = scale;
  p.causal = causal != 0;
  p.causal_top_left = causal_top_left != 0;
  p.dropout_rate = dropout_rate;
  p.seed0 = seed0;
  p.seed1 = seed1;
  p.variant = variant;
  return p;
}

template <typename T>
int Forward(const AttentionParams& p, void* q, void* k, void* v,
            void* key_mask, void* mask, void* o, void* lse, void* stream) {
  kbm::gpu::FlashAttentionArgs<T> a;
  a.p = p;
  a.q = static_cast<const T*>(q);
  a.k = static_cast<const T*>(k);
  a.v = static_cast<const T*>(v);
  a.key_mask = static_cast<const bool*>(key_mask);
  a.mask = static_cast<const bool*>(mask);
  a.o = static_cast<T*>(o);
  a.lse = static_cast<float*>(lse);
  return kbm::gpu::LaunchFlashAttention<T>(a, stream);
}

template <typename T>
int Backward(const AttentionParams& p, void* d_o, void* q, void* k, void* v,
             void* key_mask, void* mask, void* o, void* lse, void* dq,
             void* dk, void* dv, void* workspace, void* stream) {
  kbm::gpu::FlashAttentionGradArgs<T> a;
  a.p = p;
  a.d_o = static_cast<const T*>(d_o);
  a.q = static_cast<const T*>(q);
  a.k = static_cast<const T*>(k);
  a.v = static_cast<const T*>(v);
  a.key_mask = static_cast<const bool*>(key_mask);
  a.mask = static_cast<const bool*>(mask);
  a.o = static_cast<const T*>(o);
  a.lse = static_cast<const float*>(lse);
  a.dq = static_cast<T*>(dq);
  a.dk = static_cast<T*>(dk);
  a.dv = static_cast<T*>(dv);
  return kbm::gpu::LaunchFlashAttentionGrad<T>(a, workspace, stream);
}

}  // namespace

extern "C" {

int kbm_attention_forward(int dtype, void* q, void* k, void* v,
                          void* key_mask, void* mask, void* o, void* lse,
                          int64_t batch, int64_t q_len, int64_t kv_len,
                          int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                          int64_t value_dim, int64_t mask_batch, float scale,
                          int causal, int causal_top_left, float dropout_rate,
                          uint64_t seed0, uint64_t seed1, int variant,
                          void* stream) {
  const AttentionParams p =
      Params(batch, q_len, kv_len, q_heads, kv_heads, head_dim, value_dim,
             mask_batch, scale, causal, causal_top_left, dropout_rate, seed0,
             seed1, variant);
  switch (dtype) {
    case kbm::gpu::kFloat32:
      return Forward<float>(p, q, k, v, key_mask, mask, o, lse, stream);
    case kbm::gpu::kFloat16:
      return Forward<kbm::gpu::Half>(p, q, k, v, key_mask, mask, o, lse,
                                     stream);
    case kbm::gpu::kBFloat16:
      return Forward<kbm::gpu::BFloat16>(p, q, k, v, key_mask, mask, o, lse,
                                         stream);
    default:
      return kbm::gpu::kErrorUnsupported;
  }
}

size_t kbm_attention_backward_workspace(int64_t batch, int64_t q_len,
                                        int64_t q_heads) {
  AttentionParams p;
  p.batch = batch;
  p.q_len = q_len;
  p.q_heads = q_heads;
  return kbm::gpu::FlashAttentionGradWorkspaceBytes(p);
}

int kbm_attention_backward(int dtype, void* d_o, void* q, void* k, void* v,
                           void* key_mask, void* mask, void* o, void* lse,
                           void* dq, void* dk, void* dv, int64_t batch,
                           int64_t q_len, int64_t kv_len, int64_t q_heads,
                           int64_t kv_heads, int64_t head_dim,
                           int64_t value_dim, int64_t mask_batch, float scale,
                           int causal, int causal_top_left, float dropout_rate,
                           uint64_t seed0, uint64_t seed1, int variant,
                           void* workspace, void* stream) {
  const AttentionParams p =
      Params(batch, q_len, kv_len, q_heads, kv_heads, head_dim, value_dim,
             mask_batch, scale, causal, causal_top_left, dropout_rate, seed0,
             seed1, variant);
  switch (dtype) {
    case kbm::gpu::kFloat32:
      return Backward<float>(p, d_o, q, k, v, key_mask, mask, o, lse, dq, dk,
                             dv, workspace, stream);
    case kbm::gpu::kFloat16:
      return Backward<kbm::gpu::Half>(p, d_o, q, k, v, key_mask, mask, o, lse,
                                      dq, dk, dv, workspace, stream);
    case kbm::gpu::kBFloat16:
      return Backward<kbm::gpu::BFloat16>(p, d_o, q, k, v, key_mask, mask, o,
                                          lse, dq, dk, dv, workspace, stream);
    default:
      return kbm::gpu::kErrorUnsupported;
  }
}

int kbm_attention_dropout_mask(uint64_t seed0, uint64_t seed1, int64_t batch,
                               int64_t heads, int64_t q_len, int64_t kv_len,
                               float rate, void* keep, void* stream) {
  return kbm::gpu::LaunchAttentionDropoutMask(seed0, seed1, batch, heads,
                                              q_len, kv_len, rate,
                                              static_cast<bool*>(keep), stream);
}

}  // extern "C"
