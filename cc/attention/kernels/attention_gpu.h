// CUDA flash attention: launcher API (no TensorFlow and no CUDA headers).
//
// Layouts as the CPU kernel: q [B, Tq, Hq, D], k [B, Tk, Hkv, D],
// v [B, Tk, Hkv, Dv], o [B, Tq, Hq, Dv], lse [B, Hq, Tq] (float32),
// key_mask [B, Tk] (true = attend, optional), mask [Bm, Tq, Tk] with Bm in
// {1, B} (true = attend, optional). Query head h reads key/value head
// h / (Hq / Hkv) in place. Causal: query i sees keys j <= i + Tk - Tq
// (bottom-right) or j <= i (top-left). A query that sees no key gets zeros
// and lse = +inf, and zero gradients. Dropout (rate > 0) keeps element
// (b, h, i, j) per kbm_philox::AttentionDropoutKeep with the flat index
// ((b * Hq + h) * Tq + i) * Tk + j; kept probabilities are scaled by
// 1 / (1 - rate); lse is the normaliser without dropout.
//
// float16 / bfloat16 run tensor-core (mma.sync) kernels for head dims up to
// 256 (padded internally to 32, 64, 96, 128 or 256); float32 runs SIMT
// kernels. The backward pass is deterministic (no atomics): dK/dV per key
// tile summed over the query heads of its group in one block, dQ in a
// separate pass over query tiles.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_H_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_H_

#include <cstddef>
#include <cstdint>

#include "cc/common/gpu/gpu_types.h"

namespace kbm {
namespace gpu {

// Sizes and attributes shared by the forward and backward launchers.
struct AttentionParams {
  int64_t batch = 0;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t value_dim = 0;
  int64_t mask_batch = 1;  // the dense mask's first dimension (1 or batch)
  float scale = 1.0f;
  bool causal = false;
  bool causal_top_left = false;
  float dropout_rate = 0.0f;  // 0 <= rate < 1
  uint64_t seed0 = 0;
  uint64_t seed1 = 0;
  // Tensor-core kernel variant, for tests and benchmarks: 0 the default,
  // 1 the plain kernels (a cross-check), 2 ldmatrix + cp.async kernels,
  // 3 as 2 with 32 query rows per warp in the forward pass (head dims 64
  // and 128), 4 as 3 with double-buffered backward kernels (64 and 128).
  int variant = 0;
};

template <typename T>
struct FlashAttentionArgs {
  AttentionParams p;
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const bool* key_mask = nullptr;  // null: none
  const bool* mask = nullptr;      // null: none
  T* o = nullptr;
  float* lse = nullptr;
};

template <typename T>
struct FlashAttentionGradArgs {
  AttentionParams p;
  const T* d_o = nullptr;
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const bool* key_mask = nullptr;
  const bool* mask = nullptr;
  const T* o = nullptr;
  const float* lse = nullptr;
  T* dq = nullptr;
  T* dk = nullptr;
  T* dv = nullptr;
};

// The largest head_dim / value_dim the kernels take.
constexpr int64_t kMaxAttentionHeadDim = 256;

// Forward: writes o and lse. No workspace.
template <typename T>
int LaunchFlashAttention(const FlashAttentionArgs<T>& args, void* stream);

// Backward scratch: rowsum(dO * O) as float32 [B, Hq, Tq].
size_t FlashAttentionGradWorkspaceBytes(const AttentionParams& p);

// Backward: writes dq, dk, dv.
template <typename T>
int LaunchFlashAttentionGrad(const FlashAttentionGradArgs<T>& args,
                             void* workspace, void* stream);

// The dropout keep mask [B, H, Tq, Tk] the kernels use (bool, 1 = kept),
// from the same device code.
int LaunchAttentionDropoutMask(uint64_t seed0, uint64_t seed1, int64_t batch,
                               int64_t heads, int64_t q_len, int64_t kv_len,
                               float rate, bool* keep, void* stream);

}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_H_
