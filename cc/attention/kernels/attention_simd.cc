// Float32 flash attention for one SIMD variant (KBM_ISA = avx, avx2, or
// avx512vnni with 16-lane vectors): the tiled algorithm of
// attention_tiles.h with register-blocked GEMM micro-kernels, a vectorised
// row exp, and the attention-dropout Philox stream computed for a vector
// of counters at a time.
#include <limits>

// The AVX-512 variant runs 16-lane vectors (cc/common/simd.h).
#define KBM_SIMD_512 1

#include "cc/attention/kernels/attention.h"
#include "cc/attention/kernels/attention_tiles.h"
#include "cc/common/simd.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace (avx or avx2)"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

typedef uint32_t VecU __attribute__((vector_size(kVecBytes)));

// hi/lo 32 bits of the kLanes products a[i] * m.
inline void MulHiLo8(VecU a, uint32_t m, VecU* hi, VecU* lo) {
#if defined(__AVX512F__)
  const __m512i av = reinterpret_cast<__m512i>(a);
  const __m512i mv = _mm512_set1_epi32(static_cast<int32_t>(m));
  const __m512i even = _mm512_mul_epu32(av, mv);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(av, 32), mv);
  *lo = reinterpret_cast<VecU>(
      _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32)));
  *hi = reinterpret_cast<VecU>(
      _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd));
#elif defined(__AVX2__)
  // _mm256_mul_epu32 multiplies the even 32-bit lanes into 64-bit products;
  // the odd lanes are shifted down and multiplied the same way.
  const __m256i av = reinterpret_cast<__m256i>(a);
  const __m256i mv = _mm256_set1_epi32(static_cast<int32_t>(m));
  const __m256i even = _mm256_mul_epu32(av, mv);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(av, 32), mv);
  *lo = reinterpret_cast<VecU>(
      _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA));
  *hi = reinterpret_cast<VecU>(
      _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA));
#elif defined(__SSE4_1__)
  // The same on the two 128-bit halves.
  const __m128i mv = _mm_set1_epi32(static_cast<int32_t>(m));
  __m128i half[2];
  __builtin_memcpy(half, &a, sizeof(a));
  __m128i h[2], l[2];
  for (int i = 0; i < 2; ++i) {
    const __m128i even = _mm_mul_epu32(half[i], mv);
    const __m128i odd = _mm_mul_epu32(_mm_srli_epi64(half[i], 32), mv);
    l[i] = _mm_blend_epi16(even, _mm_slli_epi64(odd, 32), 0xCC);
    h[i] = _mm_blend_epi16(_mm_srli_epi64(even, 32), odd, 0xCC);
  }
  __builtin_memcpy(hi, h, sizeof(*hi));
  __builtin_memcpy(lo, l, sizeof(*lo));
#else
  for (int i = 0; i < kLanes; ++i) {
    const uint64_t p = static_cast<uint64_t>(a[i]) * m;
    (*hi)[i] = static_cast<uint32_t>(p >> 32);
    (*lo)[i] = static_cast<uint32_t>(p);
  }
#endif
}

// Philox4x32-10 (cc/common/philox.h) on 8 counters (c0..c3 lane-wise) under
// one key.
inline void Philox8(VecU c[4], uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    VecU hi0, lo0, hi1, lo1;
    MulHiLo8(c[0], kM0, &hi0, &lo0);
    MulHiLo8(c[2], kM1, &hi1, &lo1);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += kW0;
    k1 += kW1;
  }
}

// out[4 * i + w] = c[w][i]: the four draws of each of the 8 groups, in
// flat-index order.
inline void StoreInterleaved(const VecU c[4], uint32_t* out) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  const __m256i x = reinterpret_cast<__m256i>(c[0]);
  const __m256i y = reinterpret_cast<__m256i>(c[1]);
  const __m256i z = reinterpret_cast<__m256i>(c[2]);
  const __m256i w = reinterpret_cast<__m256i>(c[3]);
  // Per 128-bit half: xy_lo = x0 y0 x1 y1, xy_hi = x2 y2 x3 y3, ...
  const __m256i xy_lo = _mm256_unpacklo_epi32(x, y);
  const __m256i xy_hi = _mm256_unpackhi_epi32(x, y);
  const __m256i zw_lo = _mm256_unpacklo_epi32(z, w);
  const __m256i zw_hi = _mm256_unpackhi_epi32(z, w);
  // Groups (0 | 4), (1 | 5), (2 | 6), (3 | 7) by halves.
  const __m256i g04 = _mm256_unpacklo_epi64(xy_lo, zw_lo);
  const __m256i g15 = _mm256_unpackhi_epi64(xy_lo, zw_lo);
  const __m256i g26 = _mm256_unpacklo_epi64(xy_hi, zw_hi);
  const __m256i g37 = _mm256_unpackhi_epi64(xy_hi, zw_hi);
  __m256i* o = reinterpret_cast<__m256i*>(out);
  _mm256_storeu_si256(o, _mm256_permute2x128_si256(g04, g15, 0x20));
  _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(g26, g37, 0x20));
  _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(g04, g15, 0x31));
  _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(g26, g37, 0x31));
#else
  for (int i = 0; i < kLanes; ++i) {
    for (int w = 0; w < 4; ++w) out[4 * i + w] = c[w][i];
  }
#endif
}

// C[R x 8V] (+)= A[R x k] B[k x 8V]: R * V vector accumulators.
template <int R, int V>
inline void MicroTile(const float* a, int64_t lda, const float* b, int64_t ldb,
                      float* c, int64_t ldc, int64_t k, bool accumulate) {
  VecF acc[R][V];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      acc[r][v] = accumulate ? Load(c + r * ldc + v * kLanes) : Splat(0.f);
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    VecF bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) bv[v] = Load(b + p * ldb + v * kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const VecF av = Splat(a[r * lda + p]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] += av * bv[v];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) Store(c + r * ldc + v * kLanes, acc[r][v]);
  }
}

// All rows of one column block of V vectors: R-row tiles, then the rest.
template <int R, int V>
inline void ColumnBlock(const float* a, int64_t lda, const float* b,
                        int64_t ldb, float* c, int64_t ldc, int64_t m,
                        int64_t k, bool accumulate) {
  int64_t i = 0;
  for (; i + R <= m; i += R) {
    MicroTile<R, V>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, k, accumulate);
  }
  for (; i < m; ++i) {
    MicroTile<1, V>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, k, accumulate);
  }
}

struct SimdMath {
  // Column blocks of 32 use 3 x 32 tiles (12 accumulators: the best of the
  // shapes measured on Zen3); a last block of 16 uses 4 x 16 tiles.
  static void Gemm(const float* a, int64_t lda, const float* b, int64_t ldb,
                   float* c, int64_t ldc, int64_t m, int64_t n, int64_t k,
                   bool accumulate) {
    int64_t j = 0;
    for (; j + 4 * kLanes <= n; j += 4 * kLanes) {
      ColumnBlock<3, 4>(a, lda, b + j, ldb, c + j, ldc, m, k, accumulate);
    }
    for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
      ColumnBlock<4, 2>(a, lda, b + j, ldb, c + j, ldc, m, k, accumulate);
    }
    if (j < n) {  // 16 lanes: a last 16 columns.
      ColumnBlock<4, 1>(a, lda, b + j, ldb, c + j, ldc, m, k, accumulate);
    }
  }

  // n is a multiple of kAttnCols (a multiple of kLanes).
  static float RowMax(const float* row, int64_t n) {
    VecF m = Splat(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < n; j += kLanes) m = Max(m, Load(row + j));
    float buf[kLanes];
    __builtin_memcpy(buf, &m, sizeof(m));
    float best = buf[0];
    for (int64_t i = 1; i < kLanes; ++i) best = buf[i] > best ? buf[i] : best;
    return best;
  }

  static float ExpRow(float* row, int64_t n, float shift) {
    const VecF neg_inf = Splat(-std::numeric_limits<float>::infinity());
    const VecF sh = Splat(shift);
    VecF sum = Splat(0.f);
    for (int64_t j = 0; j < n; j += kLanes) {
      const VecF x = Load(row + j);
      const VecF e = x == neg_inf ? Splat(0.f) : Exp(x - sh);
      Store(row + j, e);
      sum += e;
    }
    return HorizontalSum(sum);
  }

  static void AddRow(float* row, const float* bias, int64_t n) {
    for (int64_t j = 0; j < n; j += kLanes) {
      Store(row + j, Load(row + j) + Load(bias + j));
    }
  }

  // n is a multiple of kLanes here too (padded widths).
  static void ScaleRow(float* row, int64_t n, float a) {
    const VecF av = Splat(a);
    for (int64_t j = 0; j < n; j += kLanes) Store(row + j, Load(row + j) * av);
  }

  static void SoftmaxGradRow(float* p, const float* dp, float delta,
                             int64_t n) {
    // Exactly 0 where p is 0 (a masked or padded key), as in
    // attention_tiles.h: no 0 * inf = NaN.
    const VecF dv = Splat(delta);
    const VecF zero = Splat(0.f);
    for (int64_t j = 0; j < n; j += kLanes) {
      const VecF pj = Load(p + j);
      Store(p + j, pj == zero ? zero : pj * (Load(dp + j) - dv));
    }
  }

  // z[j] = dropout_scale if flat index flat0 + j is kept, else 0; n is a
  // multiple of kLanes and at most kAttnKeyTile. Draws are made for the
  // Philox groups flat0 / 4 ... (flat0 + n - 1) / 4, 8 groups per call.
  static void DropoutRow(float* z, int64_t n, const AttentionShape& s,
                         uint64_t flat0) {
    constexpr int64_t kMaxDraws = kAttnKeyTile + 4 * kLanes;
    uint32_t draws[kMaxDraws];
    const uint64_t g0 = flat0 >> 2;
    const int64_t groups =
        static_cast<int64_t>(((flat0 + n - 1) >> 2) - g0) + 1;
    const uint32_t s1lo = static_cast<uint32_t>(s.seed1);
    const uint32_t s1hi = static_cast<uint32_t>(s.seed1 >> 32);
    const uint32_t k0 = static_cast<uint32_t>(s.seed0);
    const uint32_t k1 = static_cast<uint32_t>(s.seed0 >> 32);
    VecU iota;
    for (int i = 0; i < kLanes; ++i) iota[i] = static_cast<uint32_t>(i);
    for (int64_t g = 0; g < groups; g += kLanes) {
      const uint64_t first = g0 + g;
      VecU c[4];
      if (static_cast<uint32_t>(first) <= 0xFFFFFFFFu - (kLanes - 1)) {
        c[0] = iota + static_cast<uint32_t>(first);
        c[1] = VecU{} + static_cast<uint32_t>(first >> 32);
      } else {  // The low word wraps within these 8 groups.
        for (int i = 0; i < kLanes; ++i) {
          c[0][i] = static_cast<uint32_t>(first + i);
          c[1][i] = static_cast<uint32_t>((first + i) >> 32);
        }
      }
      c[2] = VecU{} + s1lo;
      c[3] = VecU{} + s1hi;
      Philox8(c, k0, k1);
      StoreInterleaved(c, draws + 4 * g);
    }
    const uint32_t* u = draws + (flat0 & 3);
    const VecU threshold = VecU{} + s.dropout_threshold;
    const float scale = static_cast<float>(s.dropout_scale);
    const VecI scale_bits = VecI{} + __builtin_bit_cast(int32_t, scale);
    for (int64_t j = 0; j < n; j += kLanes) {
      VecU uj;
      __builtin_memcpy(&uj, u + j, sizeof(uj));
      const VecI keep = uj >= threshold;
      Store(z + j, reinterpret_cast<VecF>(keep & scale_bits));
    }
  }

  static void MulRow(float* dst, const float* a, const float* b, int64_t n) {
    for (int64_t j = 0; j < n; j += kLanes) {
      Store(dst + j, Load(a + j) * Load(b + j));
    }
  }
};

void ForwardUnit(const AttentionShape& s, const PackedKV<float>& kv,
                 const AttentionForwardIO<float>& io, int64_t unit) {
  AttentionForwardUnit<float, SimdMath>(s, kv, io, unit);
}

void BackwardUnit(const AttentionShape& s, const PackedKV<float>& kv,
                  const PackedQ<float>& pq,
                  const AttentionBackwardIO<float>& io, int64_t unit) {
  AttentionBackwardUnit<float, SimdMath>(s, kv, pq, io, unit);
}

}  // namespace

const AttentionKernels kAttentionKernels = {ForwardUnit, BackwardUnit};

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
