// The tiled flash-attention algorithm, generic in the element type F and a
// math policy M (small GEMM and row helpers). attention_simd.cc instantiates
// it for float with SIMD math (once per SIMD variant); attention_kernels.cc
// instantiates it for double with scalar math (the float64 kernels used for
// gradient checks) and runs the packing passes.
//
// Everything is in an anonymous namespace: each translation unit gets its own
// copy, so the linker cannot fold the AVX2 instantiation into the baseline
// one (see cc/common/simd.h). For the same reason this file uses no standard
// library templates that would be instantiated out of line (std::vector,
// algorithms): Buffer and the small helpers below replace them, and the
// build rejects SIMD objects that define weak symbols. Include this header
// only from .cc files.
//
// Packing (once per call, in parallel): keys and values are cut into tiles
// of kAttnKeyTile keys, transposed where a GEMM wants them so, zero-padded,
// with a per-key bias of 0 or -inf (key mask, padding). The backward pass
// also packs queries (pre-scaled) and dO per query tile, row-major and
// transposed.
//
// Forward (one unit = batch b, query head h, query tile): for each key tile
// S = Qs K^T, masked entries are -inf, an online softmax keeps the running
// row max m and sum l, and O += (exp(S - m) * Z) V, where Z is the dropout
// multiplier (keep / (1 - r), all ones without dropout; l sums exp(S - m)
// without Z). The T_q x T_k score matrix never exists. It returns O / l and
// lse = m + log(l).
//
// Backward (one unit = batch b, kv head g, a chunk of key tiles), as in
// FlashAttention-2: for each key tile and each query tile of the group's
// query heads, recompute P = exp(S - lse) (exp(S - m) / l for rows whose
// lse is too large to hold log(l), kLseExactLimit), then
//   dV^T += dO^T (P * Z),  dP = (dO V^T) * Z,  dS = P * (dP - delta),
//   dQ += dS K (into the chunk's own dq_partial),  dK^T += Qs^T dS,
// with delta = rowsum(dO * O) and Z regenerated from the Philox stream. Each
// unit owns its dk/dv rows, so no two threads write the same memory.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_TILES_H_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_TILES_H_

#include <cmath>
#include <cstdint>
#include <limits>

#include "cc/attention/kernels/attention.h"
#include "cc/common/philox.h"

namespace tensorflow {
namespace kbm {
namespace {  // NOLINT(build/namespaces): internal linkage on purpose.

// GEMM column blocks (and so padded widths) are multiples of this.
constexpr int64_t kAttnCols = 16;
inline int64_t AttnRoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

constexpr int64_t kQT = kAttnQueryTile;
constexpr int64_t kKT = kAttnKeyTile;

template <typename F>
constexpr F kNegInf = -std::numeric_limits<F>::infinity();

inline int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename F>
inline void Fill(F* p, int64_t n, F value) {
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

// A growable scratch array (no std::vector here, see the top of the file).
template <typename F>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n) { Resize(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { delete[] data_; }
  void Resize(int64_t n) {  // Contents unspecified.
    if (n > capacity_) {
      delete[] data_;
      data_ = new F[n];
      capacity_ = n;
    }
  }
  void Assign(int64_t n, F value) {
    Resize(n);
    Fill(data_, n, value);
  }
  F* data() { return data_; }
  F& operator[](int64_t i) { return data_[i]; }

 private:
  F* data_ = nullptr;
  int64_t capacity_ = 0;
};

// Scalar math for any element type (the float64 kernels).
template <typename F>
struct ScalarAttentionMath {
  // C[m x n] (+)= A[m x k] B[k x n], all row-major; n % kAttnCols == 0.
  static void Gemm(const F* a, int64_t lda, const F* b, int64_t ldb, F* c,
                   int64_t ldc, int64_t m, int64_t n, int64_t k,
                   bool accumulate) {
    for (int64_t i = 0; i < m; ++i) {
      F* ci = c + i * ldc;
      if (!accumulate) Fill(ci, n, F(0));
      for (int64_t p = 0; p < k; ++p) {
        const F aip = a[i * lda + p];
        const F* bp = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
      }
    }
  }
  static F RowMax(const F* row, int64_t n) {
    F m = kNegInf<F>;
    for (int64_t j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
    return m;
  }
  // row[j] = exp(row[j] - shift), 0 where row[j] is -inf; returns the sum.
  static F ExpRow(F* row, int64_t n, F shift) {
    F sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      row[j] = row[j] == kNegInf<F> ? F(0) : std::exp(row[j] - shift);
      sum += row[j];
    }
    return sum;
  }
  static void AddRow(F* row, const F* bias, int64_t n) {
    for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
  }
  static void ScaleRow(F* row, int64_t n, F a) {
    for (int64_t j = 0; j < n; ++j) row[j] *= a;
  }
  // p = p * (dp - delta), and exactly 0 where p is 0 (a masked or padded
  // key): an infinite dO or a NaN in a masked key's value must not turn
  // 0 * (dp - delta) into NaN (the reference's gradient there is 0).
  static void SoftmaxGradRow(F* p, const F* dp, F delta, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      p[j] = p[j] == F(0) ? F(0) : p[j] * (dp[j] - delta);
    }
  }
  // z[j] = scale if flat index flat0 + j is kept, else 0.
  static void DropoutRow(F* z, int64_t n, const AttentionShape& s,
                         uint64_t flat0) {
    kbm_philox::Uint4 r{};
    for (int64_t j = 0; j < n; ++j) {
      const uint64_t f = flat0 + j;
      if (j == 0 || (f & 3) == 0) {
        r = kbm_philox::DropoutGroup(s.seed0, s.seed1, f >> 2);
      }
      const bool keep = kbm_philox::Pick(r, f & 3) >= s.dropout_threshold;
      z[j] = keep ? F(s.dropout_scale) : F(0);
    }
  }
  // dst = a * b.
  static void MulRow(F* dst, const F* a, const F* b, int64_t n) {
    for (int64_t j = 0; j < n; ++j) dst[j] = a[j] * b[j];
  }
};

// ------------------------------------------------------------- packed data

struct AttnDims {
  int64_t D, Dv, Dp, Dvp, n_qt, n_kt;
  explicit AttnDims(const AttentionShape& s)
      : D(s.head_dim),
        Dv(s.value_dim),
        Dp(AttnRoundUp(s.head_dim, kAttnCols)),
        Dvp(AttnRoundUp(s.value_dim, kAttnCols)),
        n_qt(AttnNumQueryTiles(s)),
        n_kt(AttnNumKeyTiles(s)) {}
  int64_t KtSize() const { return D * kKT; }
  int64_t KSize() const { return kKT * Dp; }
  int64_t VSize() const { return kKT * Dvp; }
  int64_t VtSize() const { return Dv * kKT; }
  int64_t QsSize() const { return kQT * Dp; }
  int64_t QstSize() const { return D * kQT; }
  int64_t DoSize() const { return kQT * Dvp; }
  int64_t DotSize() const { return Dv * kQT; }
};

// The packers read one head's rows of [batch, length, heads, dim] inputs:
// a few cache lines each, heads * dim values apart, which the hardware
// prefetchers did not follow (the loads of those rows were most of the
// packing time, and packing a third of the attention backward's at
// T = 128, 12 heads of 32). They ask for the row kPackAhead rows ahead.
constexpr int64_t kPackAhead = 8;

template <typename F>
inline void PrefetchRow(const F* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(F)); i += 64) {
    __builtin_prefetch(p + i);
  }
}

// Packs key tile `unit` = (b, g, t); the arrays of `p` that are null are
// skipped. key_bias / has_masked_key are written by the g == 0 unit.
template <typename F>
void PackKeyTile(const AttentionShape& s, const F* kin, const F* vin,
                 const bool* key_mask, const PackedKV<F>& p, int64_t unit) {
  const AttnDims d(s);
  const int64_t t = unit % d.n_kt;
  const int64_t g = (unit / d.n_kt) % s.kv_heads;
  const int64_t b = unit / d.n_kt / s.kv_heads;
  const int64_t k0 = t * kKT;
  const int64_t nk = Min64(kKT, s.kv_len - k0);
  F* kt = p.kt ? p.kt + unit * d.KtSize() : nullptr;
  F* k = p.k ? p.k + unit * d.KSize() : nullptr;
  F* v = p.v ? p.v + unit * d.VSize() : nullptr;
  F* vt = p.vt ? p.vt + unit * d.VtSize() : nullptr;
  // Padding (keys past the end, columns past the head size) is zero; a full
  // tile without column padding is written element by element below.
  if (nk < kKT || d.D < d.Dp || d.Dv < d.Dvp) {
    if (kt) Fill(kt, d.KtSize(), F(0));
    if (k) Fill(k, d.KSize(), F(0));
    if (v) Fill(v, d.VSize(), F(0));
    if (vt) Fill(vt, d.VtSize(), F(0));
  }
  for (int64_t j = 0; j < nk; ++j) {
    // A key-masked key is 0 in every packed array: its score is then
    // exactly -inf (0 + the bias) and its value contributes exactly 0, so a
    // NaN or inf in a padding position's key or value reaches neither the
    // output nor (through delta = rowsum(dO * O)) the gradients.
    const bool masked = key_mask != nullptr && !key_mask[b * s.kv_len + k0 + j];
    const int64_t row = (b * s.kv_len + k0 + j) * s.kv_heads + g;
    const F* krow = kin + row * d.D;
    const F* vrow = vin + row * d.Dv;
    if (j + kPackAhead < nk) {
      const int64_t ahead = row + kPackAhead * s.kv_heads;
      PrefetchRow(kin + ahead * d.D, d.D);
      PrefetchRow(vin + ahead * d.Dv, d.Dv);
    }
    for (int64_t e = 0; e < d.D; ++e) {
      const F x = masked ? F(0) : krow[e];
      if (kt) kt[e * kKT + j] = x;
      if (k) k[j * d.Dp + e] = x;
    }
    for (int64_t e = 0; e < d.Dv; ++e) {
      const F x = masked ? F(0) : vrow[e];
      if (v) v[j * d.Dvp + e] = x;
      if (vt) vt[e * kKT + j] = x;
    }
  }
  if (g == 0) {
    F* bias = p.key_bias + (b * d.n_kt + t) * kKT;
    bool masked = nk < kKT;
    for (int64_t j = 0; j < kKT; ++j) {
      const bool visible =
          j < nk && (key_mask == nullptr || key_mask[b * s.kv_len + k0 + j]);
      bias[j] = visible ? F(0) : kNegInf<F>;
      masked = masked || !visible;
    }
    p.has_masked_key[b * d.n_kt + t] = masked ? 1 : 0;
  }
}

// Packs query tile `unit` = (b, h, t) of q (times scale) and d_o.
template <typename F>
void PackQueryTile(const AttentionShape& s, const F* qin, const F* d_oin,
                   const PackedQ<F>& p, int64_t unit) {
  const AttnDims d(s);
  const int64_t t = unit % d.n_qt;
  const int64_t h = (unit / d.n_qt) % s.q_heads;
  const int64_t b = unit / d.n_qt / s.q_heads;
  const int64_t q0 = t * kQT;
  const int64_t rows = Min64(kQT, s.q_len - q0);
  F* qs = p.qs + unit * d.QsSize();
  F* qst = p.qst + unit * d.QstSize();
  F* dout = p.d_o + unit * d.DoSize();
  F* dot = p.d_ot + unit * d.DotSize();
  if (rows < kQT || d.D < d.Dp || d.Dv < d.Dvp) {  // Zero padding.
    Fill(qs, d.QsSize(), F(0));
    Fill(qst, d.QstSize(), F(0));
    Fill(dout, d.DoSize(), F(0));
    Fill(dot, d.DotSize(), F(0));
  }
  const F scale = s.scale;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = (b * s.q_len + q0 + r) * s.q_heads + h;
    if (r + kPackAhead < rows) {
      const int64_t ahead = row + kPackAhead * s.q_heads;
      PrefetchRow(qin + ahead * d.D, d.D);
      PrefetchRow(d_oin + ahead * d.Dv, d.Dv);
    }
    for (int64_t e = 0; e < d.D; ++e) {
      const F x = qin[row * d.D + e] * scale;
      qs[r * d.Dp + e] = x;
      qst[e * kQT + r] = x;
    }
    for (int64_t e = 0; e < d.Dv; ++e) {
      const F x = d_oin[row * d.Dv + e];
      dout[r * d.Dvp + e] = x;
      dot[e * kQT + r] = x;
    }
  }
}

// ------------------------------------------------------------------ masking

// The state (kMaskAll, kMaskSome, kMaskNone) of the dense mask's block of
// query tile qt and key tile t in batch b.
inline uint8_t MaskTileState(const AttentionShape& s, const uint8_t* tiles,
                             int64_t b, int64_t qt, int64_t t) {
  if (tiles == nullptr) return kMaskAll;
  const int64_t n_qt = AttnNumQueryTiles(s), n_kt = AttnNumKeyTiles(s);
  const int64_t bm = s.mask_batch_stride == 0 ? 0 : b;
  return tiles[(bm * n_qt + qt) * n_kt + t];
}

// The dense mask's rows [q0, ...) of batch b from key k0 when its block is
// kMaskSome, else nullptr (nothing to apply element by element).
inline const bool* MaskRows(const AttentionShape& s, const bool* mask,
                            uint8_t state, int64_t b, int64_t q0, int64_t k0) {
  if (mask == nullptr || state != kMaskSome) return nullptr;
  return mask + b * s.mask_batch_stride + q0 * s.kv_len + k0;
}

// Classifies block `unit` = (bm, qt, t) of the dense mask [Bm, Tq, Tk].
inline void ClassifyMaskTile(const AttentionShape& s, const bool* mask,
                             uint8_t* tiles, int64_t unit) {
  const int64_t n_qt = AttnNumQueryTiles(s), n_kt = AttnNumKeyTiles(s);
  const int64_t t = unit % n_kt;
  const int64_t qt = (unit / n_kt) % n_qt;
  const int64_t bm = unit / n_kt / n_qt;
  const int64_t q0 = qt * kQT, k0 = t * kKT;
  const int64_t rows = Min64(kQT, s.q_len - q0);
  const int64_t nk = Min64(kKT, s.kv_len - k0);
  int64_t visible = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool* row = mask + (bm * s.q_len + q0 + r) * s.kv_len + k0;
    for (int64_t j = 0; j < nk; ++j) visible += row[j] ? 1 : 0;
  }
  tiles[unit] = visible == rows * nk ? kMaskAll
                : visible == 0       ? kMaskNone
                                     : kMaskSome;
}

// Applies the key mask (when the tile has masked keys), the dense mask
// (`mask_rows`, row stride kv_len, when given) and the causal mask (when the
// tile crosses the diagonal) to the score rows [rows x nkp] of query rows
// starting at q0 against the key tile starting at k0.
template <typename F, typename M>
void MaskTile(const AttentionShape& s, F* scores, int64_t rows, int64_t nkp,
              int64_t q0, int64_t k0, const F* key_bias, bool has_masked,
              const bool* mask_rows) {
  const bool causal_cut = s.causal && q0 + s.causal_offset - k0 + 1 < nkp;
  const int64_t nk = Min64(nkp, s.kv_len - k0);
  for (int64_t r = 0; r < rows; ++r) {
    F* row = scores + r * nkp;
    if (has_masked) M::AddRow(row, key_bias, nkp);
    if (mask_rows != nullptr) {
      const bool* visible = mask_rows + r * s.kv_len;
      for (int64_t j = 0; j < nk; ++j) {
        if (!visible[j]) row[j] = kNegInf<F>;
      }
    }
    if (causal_cut) {
      for (int64_t j = Max64(q0 + r + s.causal_offset - k0 + 1, 0); j < nkp;
           ++j) {
        row[j] = kNegInf<F>;
      }
    }
  }
}

// The key range [0, end) any query of rows [q0, q0 + rows) may see.
inline int64_t KeyEnd(const AttentionShape& s, int64_t q0, int64_t rows) {
  if (!s.causal) return s.kv_len;
  return Min64(Max64(q0 + rows + s.causal_offset, 0), s.kv_len);
}

// ------------------------------------------------------------------ forward

template <typename F, typename M>
void AttentionForwardUnit(const AttentionShape& s, const PackedKV<F>& kv,
                          const AttentionForwardIO<F>& io, int64_t unit) {
  const AttnDims d(s);
  const int64_t qt = unit % d.n_qt;
  const int64_t h = (unit / d.n_qt) % s.q_heads;
  const int64_t b = unit / d.n_qt / s.q_heads;
  const int64_t g = h / (s.q_heads / s.kv_heads);
  const int64_t q0 = qt * kQT;
  const int64_t rows = Min64(kQT, s.q_len - q0);
  // Statistics only: no dropout, no P V product, m and l out (see
  // AttentionForwardIO::row_max).
  const bool stats_only = io.o == nullptr;
  Buffer<F> qs(rows * d.Dp), scores(rows * kKT), z(kKT), acc, m, l;
  acc.Assign(stats_only ? 0 : rows * d.Dvp, F(0));
  m.Assign(rows, kNegInf<F>);
  l.Assign(rows, F(0));
  const F scale = s.scale;
  for (int64_t r = 0; r < rows; ++r) {
    const F* src = io.q + ((b * s.q_len + q0 + r) * s.q_heads + h) * d.D;
    for (int64_t e = 0; e < d.D; ++e) qs[r * d.Dp + e] = src[e] * scale;
  }
  const int64_t kv_end = KeyEnd(s, q0, rows);
  for (int64_t t = 0; t * kKT < kv_end; ++t) {
    const int64_t k0 = t * kKT;
    const int64_t nkp = AttnRoundUp(Min64(kKT, s.kv_len - k0), kAttnCols);
    const int64_t tile = (b * s.kv_heads + g) * d.n_kt + t;
    const uint8_t state = MaskTileState(s, io.mask_tiles, b, qt, t);
    if (state == kMaskNone) continue;
    M::Gemm(qs.data(), d.Dp, kv.kt + tile * d.KtSize(), kKT, scores.data(), nkp,
            rows, nkp, d.D, false);
    MaskTile<F, M>(s, scores.data(), rows, nkp, q0, k0,
                   kv.key_bias + (b * d.n_kt + t) * kKT,
                   kv.has_masked_key[b * d.n_kt + t],
                   MaskRows(s, io.mask, state, b, q0, k0));
    for (int64_t r = 0; r < rows; ++r) {
      F* row = scores.data() + r * nkp;
      const F row_max = M::RowMax(row, nkp);
      const F m_new = row_max > m[r] ? row_max : m[r];
      if (m_new == kNegInf<F>) {  // Nothing visible yet in this row.
        Fill(row, nkp, F(0));
        continue;
      }
      const F alpha = m[r] == kNegInf<F> ? F(0) : std::exp(m[r] - m_new);
      l[r] = l[r] * alpha + M::ExpRow(row, nkp, m_new);
      m[r] = m_new;
      if (stats_only) continue;
      if (alpha != F(1)) M::ScaleRow(acc.data() + r * d.Dvp, d.Dvp, alpha);
      if (s.dropout) {
        M::DropoutRow(z.data(), nkp, s,
                      ((b * s.q_heads + h) * s.q_len + q0 + r) * s.kv_len + k0);
        M::MulRow(row, row, z.data(), nkp);
      }
    }
    if (stats_only) continue;
    M::Gemm(scores.data(), nkp, kv.v + tile * d.VSize(), d.Dvp, acc.data(),
            d.Dvp, rows, d.Dvp, nkp, true);
  }
  if (stats_only) {
    const int64_t at = (b * s.q_heads + h) * s.q_len + q0;
    for (int64_t r = 0; r < rows; ++r) {
      io.row_max[at + r] = m[r];
      io.row_sum[at + r] = l[r];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t qi = q0 + r;
    F* out = io.o + ((b * s.q_len + qi) * s.q_heads + h) * d.Dv;
    F* lse = io.lse + (b * s.q_heads + h) * s.q_len + qi;
    if (l[r] == F(0)) {  // No visible key: zeros, and lse = +inf.
      Fill(out, d.Dv, F(0));
      *lse = std::numeric_limits<F>::infinity();
      continue;
    }
    const F inv = F(1) / l[r];
    const F* a = acc.data() + r * d.Dvp;
    for (int64_t e = 0; e < d.Dv; ++e) out[e] = a[e] * inv;
    *lse = m[r] + std::log(l[r]);
  }
}

// ----------------------------------------------------------------- backward

template <typename F, typename M>
void AttentionBackwardUnit(const AttentionShape& s, const PackedKV<F>& kv,
                           const PackedQ<F>& pq,
                           const AttentionBackwardIO<F>& io, int64_t unit) {
  const AttnDims d(s);
  const int64_t chunk = unit % s.kv_chunks;
  const int64_t g = (unit / s.kv_chunks) % s.kv_heads;
  const int64_t b = unit / s.kv_chunks / s.kv_heads;
  const int64_t t0 = chunk * d.n_kt / s.kv_chunks;
  const int64_t t1 = (chunk + 1) * d.n_kt / s.kv_chunks;
  const int64_t group = s.q_heads / s.kv_heads;
  F* dq_part = io.dq_partial + chunk * (s.batch * s.q_heads * s.q_len * d.Dp);
  Buffer<F> p(kQT * kKT), dp(kQT * kKT), z, pz;
  if (s.dropout) {
    z.Resize(kQT * kKT);
    pz.Resize(kQT * kKT);
  }
  Buffer<F> dkt(d.D * kKT), dvt(d.Dv * kKT);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t k0 = t * kKT;
    const int64_t nk = Min64(kKT, s.kv_len - k0);
    const int64_t nkp = AttnRoundUp(nk, kAttnCols);
    const int64_t tile = (b * s.kv_heads + g) * d.n_kt + t;
    const F* kt = kv.kt + tile * d.KtSize();
    const F* k = kv.k + tile * d.KSize();
    const F* vt = kv.vt + tile * d.VtSize();
    const F* key_bias = kv.key_bias + (b * d.n_kt + t) * kKT;
    const bool has_masked = kv.has_masked_key[b * d.n_kt + t];
    Fill(dkt.data(), d.D * kKT, F(0));
    Fill(dvt.data(), d.Dv * kKT, F(0));
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t qt = 0; qt < d.n_qt; ++qt) {
        const int64_t q0 = qt * kQT;
        const int64_t rows = Min64(kQT, s.q_len - q0);
        if (KeyEnd(s, q0, rows) <= k0) continue;  // Tile fully masked.
        const uint8_t state = MaskTileState(s, io.mask_tiles, b, qt, t);
        if (state == kMaskNone) continue;
        const int64_t qtile = (b * s.q_heads + h) * d.n_qt + qt;
        const F* qs = pq.qs + qtile * d.QsSize();
        const F* qst = pq.qst + qtile * d.QstSize();
        const F* dout = pq.d_o + qtile * d.DoSize();
        const F* dot = pq.d_ot + qtile * d.DotSize();
        const int64_t at = (b * s.q_heads + h) * s.q_len + q0;
        const F* lse = io.lse + at;
        const F* shift = io.shift + at;
        const F* inv_sum = io.inv_sum ? io.inv_sum + at : nullptr;
        const F* delta = io.delta + at;
        // P = exp(S - lse), or exp(S - m) / l (AttentionBackwardIO::shift).
        M::Gemm(qs, d.Dp, kt, kKT, p.data(), nkp, rows, nkp, d.D, false);
        MaskTile<F, M>(s, p.data(), rows, nkp, q0, k0, key_bias, has_masked,
                       MaskRows(s, io.mask, state, b, q0, k0));
        for (int64_t r = 0; r < rows; ++r) {
          F* row = p.data() + r * nkp;
          if (lse[r] == std::numeric_limits<F>::infinity()) {
            Fill(row, nkp, F(0));  // The query sees no key at all.
          } else {
            M::ExpRow(row, nkp, shift[r]);
            if (inv_sum && inv_sum[r] != F(1))
              M::ScaleRow(row, nkp, inv_sum[r]);
          }
          if (s.dropout) {
            F* zr = z.data() + r * nkp;
            M::DropoutRow(
                zr, nkp, s,
                ((b * s.q_heads + h) * s.q_len + q0 + r) * s.kv_len + k0);
            M::MulRow(pz.data() + r * nkp, row, zr, nkp);
          }
        }
        // dV^T += dO^T (P * Z).
        M::Gemm(dot, kQT, s.dropout ? pz.data() : p.data(), nkp, dvt.data(),
                kKT, d.Dv, nkp, rows, true);
        // dP = (dO V^T) * Z; dS = P * (dP - delta), in place of P.
        M::Gemm(dout, d.Dvp, vt, kKT, dp.data(), nkp, rows, nkp, d.Dv, false);
        for (int64_t r = 0; r < rows; ++r) {
          if (s.dropout) {
            F* dpr = dp.data() + r * nkp;
            M::MulRow(dpr, dpr, z.data() + r * nkp, nkp);
          }
          // A query that sees no key keeps dS = 0 (its P row is 0): an
          // infinite dO must not turn 0 * (dP - delta) into NaN.
          if (lse[r] == std::numeric_limits<F>::infinity()) continue;
          M::SoftmaxGradRow(p.data() + r * nkp, dp.data() + r * nkp, delta[r],
                            nkp);
        }
        // dQ (without the scale, applied by the caller) += dS K.
        M::Gemm(p.data(), nkp, k, d.Dp,
                dq_part + ((b * s.q_heads + h) * s.q_len + q0) * d.Dp, d.Dp,
                rows, d.Dp, nkp, true);
        // dK^T += Qs^T dS (Qs carries the scale).
        M::Gemm(qst, kQT, p.data(), nkp, dkt.data(), kKT, d.D, nkp, rows, true);
      }
    }
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t row = (b * s.kv_len + k0 + j) * s.kv_heads + g;
      F* dk = io.dk + row * d.D;
      F* dv = io.dv + row * d.Dv;
      // A key-masked key counts as zeros (PackKeyTile): its gradients are
      // exactly 0, even where 0 * an infinite dO would give NaN.
      const bool masked = has_masked && key_bias[j] == kNegInf<F>;
      for (int64_t e = 0; e < d.D; ++e)
        dk[e] = masked ? F(0) : dkt[e * kKT + j];
      for (int64_t e = 0; e < d.Dv; ++e)
        dv[e] = masked ? F(0) : dvt[e * kKT + j];
    }
  }
}

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_TILES_H_
