// Float32 flash attention for one SIMD variant (KBM_ISA = avx or avx2): the
// tiled algorithm of attention_tiles.h with register-blocked GEMM
// micro-kernels and a vectorised row exp.
#include <limits>

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

// C[R x 8V] (+)= A[R x k] B[k x 8V]: R * V vector accumulators.
template <int R, int V>
inline void MicroTile(const float* a, int64_t lda, const float* b,
                      int64_t ldb, float* c, int64_t ldc, int64_t k,
                      bool accumulate) {
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
    MicroTile<R, V>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, k,
                    accumulate);
  }
  for (; i < m; ++i) {
    MicroTile<1, V>(a + i * lda, lda, b, ldb, c + i * ldc, ldc, k,
                    accumulate);
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
    if (j < n) {
      ColumnBlock<4, 2>(a, lda, b + j, ldb, c + j, ldc, m, k, accumulate);
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
    const VecF dv = Splat(delta);
    for (int64_t j = 0; j < n; j += kLanes) {
      Store(p + j, Load(p + j) * (Load(dp + j) - dv));
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
