// Float32 row kernels of the normalisation family. Compiled once per SIMD
// variant: the build defines KBM_ISA as `avx` or `avx2` (see cpu_isa.h).
#include <cmath>

#include "cc/common/simd.h"
#include "cc/normalization/kernels/normalization.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace (avx or avx2)"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

// Sum over the row of f(x_j) for a lane-wise f, with padded tail lanes set to
// `pad` (chosen so that f(pad) == 0), in blocks (kSumBlock, simd.h).
template <typename F>
inline float RowSum(const float* x, int64_t c, float pad, F f) {
  VecF total = Splat(0.f);
  for (int64_t b = 0; b < c; b += kSumBlock) {
    const int64_t e = SumBlockEnd(b, c);
    VecF a0 = Splat(0.f), a1 = Splat(0.f), a2 = Splat(0.f), a3 = Splat(0.f);
    int64_t j = b;
    for (; j + 4 * kLanes <= e; j += 4 * kLanes) {
      a0 += f(Load(x + j));
      a1 += f(Load(x + j + kLanes));
      a2 += f(Load(x + j + 2 * kLanes));
      a3 += f(Load(x + j + 3 * kLanes));
    }
    for (; j + kLanes <= e; j += kLanes) a0 += f(Load(x + j));
    if (j < e) a1 += f(LoadPartial(x + j, e - j, pad));
    total += (a0 + a1) + (a2 + a3);
  }
  return HorizontalSum(total);
}

// Sums of the residuals x - m and of their squares, in blocks as RowSum.
inline void ResidualSums(const float* x, int64_t c, float m, float* sum,
                         float* sum_sq) {
  const VecF vm = Splat(m);
  VecF s = Splat(0.f), q = Splat(0.f);
  for (int64_t b = 0; b < c; b += kSumBlock) {
    const int64_t e = SumBlockEnd(b, c);
    VecF s0 = Splat(0.f), s1 = Splat(0.f), q0 = Splat(0.f), q1 = Splat(0.f);
    int64_t j = b;
    for (; j + 2 * kLanes <= e; j += 2 * kLanes) {
      const VecF d0 = Load(x + j) - vm, d1 = Load(x + j + kLanes) - vm;
      s0 += d0;
      s1 += d1;
      q0 += d0 * d0;
      q1 += d1 * d1;
    }
    for (; j < e; j += kLanes) {
      const int64_t n = e - j < kLanes ? e - j : kLanes;
      const VecF d0 = LoadPartial(x + j, n, m) - vm;  // Padding: 0.
      s0 += d0;
      q0 += d0 * d0;
    }
    s += s0 + s1;
    q += q0 + q1;
  }
  *sum = HorizontalSum(s);
  *sum_sq = HorizontalSum(q);
}

inline float InvSqrt(double v) {
  return static_cast<float>(1.0 / std::sqrt(v));
}

void LayerNormFwd(const float* x, const float* gamma, const float* beta,
                  int64_t c, float epsilon, float* y, float* mean_out,
                  float* rstd_out, bool stream) {
  // The mean of the row shifted by its first element: a constant row then
  // has exactly its value as mean and a variance of exactly 0 (y = beta,
  // or 0/0 = NaN with epsilon 0, as in the reference), not a rounding
  // error of a long float32 sum divided by sqrt(epsilon).
  // The second pass corrects that mean by the mean of the residuals (its
  // rounding is amplified when x0 is far from the row's mean, e.g. an
  // outlier in first place), and the variance with it (the corrected
  // two-pass formula), in one pass.
  const float x0 = c > 0 ? x[0] : 0.f;
  const VecF s0 = Splat(x0);
  const float mean0 =
      x0 + RowSum(x, c, x0, [s0](VecF v) { return v - s0; }) / c;
  float res = 0.f, res_sq = 0.f;
  ResidualSums(x, c, mean0, &res, &res_sq);
  const float d = res / c;
  const float mean = mean0 + d;
  const VecF m = Splat(mean);
  const float var_c = res_sq / c - d * d;
  const float var = var_c > 0.f ? var_c : 0.f;
  const float rstd = InvSqrt(static_cast<double>(var) + epsilon);
  const VecF r = Splat(rstd);
  const bool nt = stream && CanStream(y);
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    StoreOut(y + j, (Load(x + j) - m) * r * Load(gamma + j) + Load(beta + j),
             nt);
  }
  if (j < c) {
    const int64_t n = c - j;
    StorePartial(y + j,
                 (LoadPartial(x + j, n) - m) * r * LoadPartial(gamma + j, n) +
                     LoadPartial(beta + j, n),
                 n);
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

void LayerNormBwd(const float* dy, const float* x, const float* gamma,
                  float mean, float rstd, int64_t c, float* dx, float* dgamma,
                  float* dbeta, bool stream) {
  const VecF m = Splat(mean), r = Splat(rstd);
  // Pass 1: s1 = sum(gamma * dy), s2 = sum(gamma * dy * xhat). Zero-padded
  // tail lanes contribute nothing (dy = gamma = 0).
  VecF s1 = Splat(0.f), s2 = Splat(0.f);
  for (int64_t b = 0; b < c; b += kSumBlock) {
    const int64_t e = SumBlockEnd(b, c);
    VecF s1a = Splat(0.f), s1b = Splat(0.f), s2a = Splat(0.f), s2b = Splat(0.f);
    int64_t j = b;
    for (; j + 2 * kLanes <= e; j += 2 * kLanes) {
      const VecF g0 = Load(gamma + j) * Load(dy + j);
      const VecF g1 = Load(gamma + j + kLanes) * Load(dy + j + kLanes);
      s1a += g0;
      s1b += g1;
      s2a += g0 * ((Load(x + j) - m) * r);
      s2b += g1 * ((Load(x + j + kLanes) - m) * r);
    }
    for (; j < e; j += kLanes) {
      const int64_t n = e - j < kLanes ? e - j : kLanes;
      const VecF g0 = LoadPartial(gamma + j, n) * LoadPartial(dy + j, n);
      s1a += g0;
      s2a += g0 * ((LoadPartial(x + j, n) - m) * r);
    }
    s1 += s1a + s1b;
    s2 += s2a + s2b;
  }
  const float inv_c = 1.0f / c;
  const VecF k1 = Splat(HorizontalSum(s1) * inv_c);
  const VecF k2 = Splat(HorizontalSum(s2) * inv_c);
  // Pass 2: dx, and the dgamma / dbeta partial sums.
  const bool nt = stream && CanStream(dx);
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    const VecF vdy = Load(dy + j);
    const VecF xhat = (Load(x + j) - m) * r;
    Store(dgamma + j, Load(dgamma + j) + vdy * xhat);
    Store(dbeta + j, Load(dbeta + j) + vdy);
    StoreOut(dx + j, r * (Load(gamma + j) * vdy - (k1 + xhat * k2)), nt);
  }
  if (j < c) {
    const int64_t n = c - j;
    const VecF vdy = LoadPartial(dy + j, n);
    const VecF xhat = (LoadPartial(x + j, n) - m) * r;
    StorePartial(dgamma + j, LoadPartial(dgamma + j, n) + vdy * xhat, n);
    StorePartial(dbeta + j, LoadPartial(dbeta + j, n) + vdy, n);
    StorePartial(dx + j,
                 r * (LoadPartial(gamma + j, n) * vdy - (k1 + xhat * k2)), n);
  }
}

void RmsNormFwd(const float* x, const float* gamma, int64_t c, float epsilon,
                float* y, float* rstd_out, bool stream) {
  const float ms = RowSum(x, c, 0.f, [](VecF v) { return v * v; }) / c;
  const float rstd = InvSqrt(static_cast<double>(ms) + epsilon);
  const VecF r = Splat(rstd);
  const bool nt = stream && CanStream(y);
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    StoreOut(y + j, Load(x + j) * r * Load(gamma + j), nt);
  }
  if (j < c) {
    const int64_t n = c - j;
    StorePartial(y + j, LoadPartial(x + j, n) * r * LoadPartial(gamma + j, n),
                 n);
  }
  *rstd_out = rstd;
}

void RmsNormBwd(const float* dy, const float* x, const float* gamma, float rstd,
                int64_t c, float* dx, float* dgamma, bool stream) {
  const VecF r = Splat(rstd);
  VecF s2 = Splat(0.f);
  int64_t j = 0;
  for (int64_t b = 0; b < c; b += kSumBlock) {
    const int64_t e = SumBlockEnd(b, c);
    VecF sb = Splat(0.f);
    for (j = b; j + kLanes <= e; j += kLanes) {
      const VecF vdy = Load(dy + j), xhat = Load(x + j) * r;
      sb += Load(gamma + j) * vdy * xhat;
      Store(dgamma + j, Load(dgamma + j) + vdy * xhat);
    }
    if (e == c && j < c) {
      const int64_t n = c - j;
      const VecF vdy = LoadPartial(dy + j, n), xhat = LoadPartial(x + j, n) * r;
      sb += LoadPartial(gamma + j, n) * vdy * xhat;
      StorePartial(dgamma + j, LoadPartial(dgamma + j, n) + vdy * xhat, n);
    }
    s2 += sb;
  }
  j = c / kLanes * kLanes;  // The tail, if any, for dx below.
  const int64_t n = c - j;
  const VecF k = Splat(HorizontalSum(s2) / c);
  const bool nt = stream && CanStream(dx);
  for (j = 0; j + kLanes <= c; j += kLanes) {
    const VecF xhat = Load(x + j) * r;
    StoreOut(dx + j, r * (Load(gamma + j) * Load(dy + j) - xhat * k), nt);
  }
  if (n > 0) {
    const VecF xhat = LoadPartial(x + j, n) * r;
    StorePartial(
        dx + j,
        r * (LoadPartial(gamma + j, n) * LoadPartial(dy + j, n) - xhat * k), n);
  }
}

}  // namespace

const NormRowKernels kNormRowKernels = {LayerNormFwd, LayerNormBwd, RmsNormFwd,
                                        RmsNormBwd};

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
