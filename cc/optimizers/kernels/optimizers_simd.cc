// Float32 optimizer updates for one SIMD variant (KBM_ISA = avx or avx2).
// Same arithmetic, in the same order, as the scalar templates in
// optimizers.h; tails are processed as padded vectors and stored partially.
#include "cc/common/simd.h"
#include "cc/optimizers/kernels/optimizers.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace (avx or avx2)"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

// Calls f(offset, count) over [0, n) in vector-sized pieces; count < kLanes
// only for the tail.
template <typename F>
inline void ForEachVector(int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) f(i, kLanes);
  if (i < n) f(i, n - i);
}

inline VecF LoadN(const float* p, int64_t count) {
  return count == kLanes ? Load(p) : LoadPartial(p, count);
}
inline void StoreN(float* p, VecF v, int64_t count) {
  if (count == kLanes) {
    Store(p, v);
  } else {
    StorePartial(p, v, count);
  }
}

void Adam(float* p, float* m, float* v, const float* g, int64_t n,
          const AdamScalars<float>& s, float decay) {
  const VecF omb1 = Splat(s.omb1), omb2 = Splat(s.omb2);
  const VecF coef_a = Splat(s.coef_a), bias2 = Splat(s.bias2);
  const VecF coef_sgd = Splat(s.coef_sgd), eps = Splat(s.eps);
  const VecF dec = Splat(decay);
  ForEachVector(n, [&](int64_t i, int64_t c) {
    const VecF gv = LoadN(g + i, c);
    VecF mv = LoadN(m + i, c), vv = LoadN(v + i, c), pv = LoadN(p + i, c);
    mv = mv + (gv - mv) * omb1;
    vv = vv + (gv * gv - vv) * omb2;
    pv = pv - pv * dec;
    pv = pv - ((mv * coef_a) / (Sqrt(vv / bias2) + eps) + mv * coef_sgd);
    StoreN(m + i, mv, c);
    StoreN(v + i, vv, c);
    StoreN(p + i, pv, c);
  });
}

inline VecF LambU(VecF mv, VecF vv, VecF bias1, VecF bias2, VecF eps) {
  return (mv / bias1) / (Sqrt(vv / bias2) + eps);
}

// The new moments, computed the same way by both passes: pass 1 only for
// the norm, pass 2 for the update and the stored values. Pass 2 does not
// read m and v back from the variables: in float16/bfloat16 they would be
// rounded there (a first moment of 1e-11 stored as 0 gave no update, and
// m = v = 0 with epsilon 0 a NaN), while the norm and the reference use the
// unrounded ones.
inline void LambMomentsOf(VecF gv, VecF omb1, VecF omb2, VecF* mv, VecF* vv) {
  *mv = *mv + (gv - *mv) * omb1;
  *vv = *vv + (gv * gv - *vv) * omb2;
}

void LambMoments(const float* p, const float* m, const float* v, const float* g,
                 int64_t n, const LambScalars<float>& s, float decay,
                 double* w2, double* u2) {
  const VecF omb1 = Splat(s.omb1), omb2 = Splat(s.omb2);
  const VecF bias1 = Splat(s.bias1), bias2 = Splat(s.bias2);
  const VecF eps = Splat(s.eps), dec = Splat(decay);
  // Float partial sums per vector lane, flushed to double every block so
  // long variables do not lose precision.
  double sw = 0, su = 0;
  VecF aw = Splat(0.f), au = Splat(0.f);
  int64_t in_block = 0;
  ForEachVector(n, [&](int64_t i, int64_t c) {
    const VecF gv = LoadN(g + i, c);
    VecF mv = LoadN(m + i, c), vv = LoadN(v + i, c);
    const VecF pv = LoadN(p + i, c);
    LambMomentsOf(gv, omb1, omb2, &mv, &vv);
    const VecF pd = pv - pv * dec;
    // Padded lanes: p = 0 gives pd = 0; their u (0 / 0 = NaN when epsilon
    // is 0) is zeroed, or the trust ratio's norm would be NaN.
    VecF u = LambU(mv, vv, bias1, bias2, eps);
    if (c < kLanes) {
      float lanes[kLanes];
      __builtin_memcpy(lanes, &u, sizeof(u));
      for (int64_t l = c; l < kLanes; ++l) lanes[l] = 0.f;
      __builtin_memcpy(&u, lanes, sizeof(u));
    }
    aw += pd * pd;
    au += u * u;
    if (++in_block == 256) {
      sw += HorizontalSum(aw);
      su += HorizontalSum(au);
      aw = au = Splat(0.f);
      in_block = 0;
    }
  });
  *w2 += sw + HorizontalSum(aw);
  *u2 += su + HorizontalSum(au);
}

void LambApply(float* p, float* m, float* v, const float* g, int64_t n,
               const LambScalars<float>& s, float decay, float ratio_lr) {
  const VecF omb1 = Splat(s.omb1), omb2 = Splat(s.omb2);
  const VecF bias1 = Splat(s.bias1), bias2 = Splat(s.bias2);
  const VecF eps = Splat(s.eps), dec = Splat(decay), rl = Splat(ratio_lr);
  ForEachVector(n, [&](int64_t i, int64_t c) {
    const VecF pv = LoadN(p + i, c);
    VecF mv = LoadN(m + i, c), vv = LoadN(v + i, c);
    LambMomentsOf(LoadN(g + i, c), omb1, omb2, &mv, &vv);
    StoreN(m + i, mv, c);
    StoreN(v + i, vv, c);
    StoreN(p + i, (pv - pv * dec) - rl * LambU(mv, vv, bias1, bias2, eps), c);
  });
}

void Lion(float* p, float* m, const float* g, int64_t n,
          const LionScalars<float>& s, float decay) {
  const VecF b1 = Splat(s.b1), b2 = Splat(s.b2);
  const VecF omb1 = Splat(1.f - s.b1), omb2 = Splat(1.f - s.b2);
  const VecF lr = Splat(s.lr), dec = Splat(decay);
  const VecF one = Splat(1.f), zero = Splat(0.f);
  ForEachVector(n, [&](int64_t i, int64_t c) {
    const VecF gv = LoadN(g + i, c);
    const VecF mv = LoadN(m + i, c);
    const VecF pv = LoadN(p + i, c);
    const VecF cv = mv * b1 + gv * omb1;
    // sign(c): +-1, 0 for 0, NaN for NaN.
    const VecF sign = cv > zero ? one : (cv < zero ? -one : cv);
    StoreN(p + i, (pv - pv * dec) - lr * sign, c);
    StoreN(m + i, mv * b2 + gv * omb2, c);
  });
}

}  // namespace

const OptimizerKernels kOptimizerKernels = {Adam, LambMoments, LambApply, Lion};

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
