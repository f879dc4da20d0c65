// Flash attention: shapes, the SIMD table, and the float64 entry points.
//
// Layouts: q [B, Tq, Hq, D], k [B, Tk, Hkv, D], v [B, Tk, Hkv, Dv],
// o [B, Tq, Hq, Dv], lse [B, Hq, Tq], key_mask [B, Tk] (optional), mask
// [Bm, Tq, Tk] (optional, Bm 1 or B). Query head h reads key/value head
// h / (Hq / Hkv). Causal masking: query i sees keys j <= i + causal_offset.
// Attention dropout keeps probability [b, h, i, j] when the Philox draw of
// its flat index ((b * Hq + h) * Tq + i) * Tk + j is >= dropout_threshold
// (cc/common/philox.h), and scales kept ones by dropout_scale = 1 / (1 - r).
//
// The tiled algorithm itself is in attention_tiles.h; this header must stay
// free of TensorFlow headers (attention_simd.cc includes it).
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_H_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_H_

#include <cstdint>
#include <limits>

namespace tensorflow {
namespace kbm {

struct AttentionShape {
  int64_t batch = 0;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t value_dim = 0;
  float scale = 1.f;
  bool causal = false;
  // With causal: query i sees keys j <= i + causal_offset (Tk - Tq when
  // bottom-right aligned, 0 when top-left aligned).
  int64_t causal_offset = 0;
  // Number of key-tile chunks the backward pass is split into (>= 1).
  int64_t kv_chunks = 1;
  // Elements between the batch slices of the dense mask: 0 when one [Tq, Tk]
  // mask is shared by the batch, else Tq * Tk.
  int64_t mask_batch_stride = 0;
  bool dropout = false;
  uint32_t dropout_threshold = 0;
  double dropout_scale = 1.0;
  uint64_t seed0 = 0;
  uint64_t seed1 = 0;
};

// Tile sizes: queries per tile and keys per tile.
constexpr int64_t kAttnQueryTile = 64;
constexpr int64_t kAttnKeyTile = 64;

// |lse| beyond which lse = m + log(l), rounded to F, may be off by more than
// 2^-12 (half its ulp there), which the backward pass's P = exp(S - lse)
// would carry as a relative error; with scores near 1e27 the rounding drops
// log(l) altogether (P = 1 for each of l tied keys). The backward pass
// recomputes m and l for such rows (AttentionBackwardIO::inv_sum).
template <typename F>
constexpr F kLseExactLimit =
    F(1) / (F(8192) * std::numeric_limits<F>::epsilon());

// How much of a (query tile, key tile) block of the dense mask is visible:
// a causal or key-padding mask given densely has few kMaskSome blocks, and
// kMaskNone blocks are skipped.
constexpr uint8_t kMaskAll = 0;
constexpr uint8_t kMaskSome = 1;
constexpr uint8_t kMaskNone = 2;

namespace {  // NOLINT(build/namespaces): no weak symbols (cpu_isa.h).
inline int64_t AttnNumQueryTiles(const AttentionShape& s) {
  return (s.q_len + kAttnQueryTile - 1) / kAttnQueryTile;
}
inline int64_t AttnNumKeyTiles(const AttentionShape& s) {
  return (s.kv_len + kAttnKeyTile - 1) / kAttnKeyTile;
}
}  // namespace

// Inputs and outputs of one op call, as element pointers of type F.
template <typename F>
struct AttentionForwardIO {
  const F* q;
  const F* k;
  const F* v;
  const bool* key_mask;  // nullptr: no mask.
  const bool* mask;      // [Bm, Tq, Tk]; nullptr: no mask.
  // [Bm, n_qt, n_kt] with mask: each (query tile, key tile) block of the
  // mask is kMaskAll (all visible), kMaskSome or kMaskNone.
  const uint8_t* mask_tiles;
  F* o;
  F* lse;  // [B, Hq, Tq]; +inf for a query that sees no key.
  // Row statistics only (the backward pass's exact rows, see
  // AttentionBackwardIO::inv_sum): with o and lse null, a unit skips dropout
  // and the P V product and writes its rows' max m and sum l here instead.
  F* row_max = nullptr;  // [B, Hq, Tq]
  F* row_sum = nullptr;  // [B, Hq, Tq]
};

template <typename F>
struct AttentionBackwardIO {
  const F* q;
  const F* k;
  const F* v;
  const bool* key_mask;
  const bool* mask;           // [Bm, Tq, Tk]; nullptr: no mask.
  const uint8_t* mask_tiles;  // As in AttentionForwardIO.
  const F* d_o;               // [B, Tq, Hq, Dv]
  const F* lse;               // [B, Hq, Tq]
  // P = exp(S - shift) * inv_sum. Where lse = m + log(l) is stored exactly
  // enough, shift is lse and inv_sum null (or 1). Where |lse| is so large
  // that its rounding would lose log(l) (kLseExactLimit), the caller
  // recomputes the row's max m and sum l: shift = m, inv_sum = 1 / l.
  const F* shift;    // [B, Hq, Tq]
  const F* inv_sum;  // [B, Hq, Tq], or nullptr: all ones.
  const F* delta;    // [B, Hq, Tq]: rowsum(dO * O), see AttentionDelta.
  F* dq_partial;     // [kv_chunks, B, Hq, Tq, D], zeroed by the caller.
  F* dk;             // [B, Tk, Hkv, D]
  F* dv;             // [B, Tk, Hkv, Dv]
};

// Per-call packed keys/values, tile by tile. Tile t of (b, g) starts at
// ((b * kv_heads + g) * n_kt + t) times the tile size. Keys beyond kv_len are
// zero, with key_bias -inf.
template <typename F>
struct PackedKV {
  F* kt = nullptr;                    // [D x kKT] per tile (K transposed).
  F* k = nullptr;                     // [kKT x Dp] per tile (backward).
  F* v = nullptr;                     // [kKT x Dvp] per tile (forward).
  F* vt = nullptr;                    // [Dv x kKT] per tile (backward).
  F* key_bias = nullptr;              // [B, n_kt, kKT]: 0 (attend) or -inf.
  uint8_t* has_masked_key = nullptr;  // [B, n_kt]
};

// Per-call packed queries and output gradients (backward), tile by tile.
template <typename F>
struct PackedQ {
  F* qs = nullptr;    // [kQT x Dp] per tile, times scale.
  F* qst = nullptr;   // [D x kQT] per tile (qs transposed).
  F* d_o = nullptr;   // [kQT x Dvp] per tile.
  F* d_ot = nullptr;  // [Dv x kQT] per tile.
};

// Float32 functions of one SIMD variant, run after the packing passes. A
// forward unit is one (batch, query head, query tile); a backward unit is one
// (batch, kv head, chunk of key tiles), which owns its rows of dk/dv and adds
// into its own dq_partial.
struct AttentionKernels {
  void (*forward_unit)(const AttentionShape& s, const PackedKV<float>& kv,
                       const AttentionForwardIO<float>& io, int64_t unit);
  void (*backward_unit)(const AttentionShape& s, const PackedKV<float>& kv,
                        const PackedQ<float>& pq,
                        const AttentionBackwardIO<float>& io, int64_t unit);
};

namespace avx {
extern const AttentionKernels kAttentionKernels;
}  // namespace avx
namespace avx2 {
extern const AttentionKernels kAttentionKernels;
}  // namespace avx2
namespace avx512vnni {  // 16-lane vectors (AVX-512 F).
extern const AttentionKernels kAttentionKernels;
}  // namespace avx512vnni

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_H_
