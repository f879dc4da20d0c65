// Float32 softmax-KL rows for one SIMD variant (KBM_ISA = avx or avx2).
// Forward: one pass for the two row maxima, one for the exponential sums and
// the p-weighted logit difference (rows of up to ~100K classes stay in L2
// between the passes). Backward: one pass.
#include <limits>

#include "cc/common/simd.h"
#include "cc/distillation/kernels/distillation.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace (avx or avx2)"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename F>
inline void ForEachVector(int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) f(i, kLanes);
  if (i < n) f(i, n - i);
}

// x * y rounded to float before it meets a later addition: the compiler may
// not fuse the two into an FMA (-ffp-contract=fast with -mfma), whose
// unrounded product would not cancel against the forward pass's rounded
// max * inv_t. Otherwise log q of a row's largest logit is off by the
// product's rounding error, which overflows exp() for large logit /
// temperature (a single class: dstudent inf instead of 0).
template <typename V>
inline V RoundedProduct(V x, V y) {
  V r = x * y;
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(r));
#else
  asm volatile("" : "+m"(r));
#endif
  return r;
}

// Padded lanes load -inf: they are masked classes and contribute nothing.
inline VecF LoadN(const float* p, int64_t count) {
  return count == kLanes ? Load(p) : LoadPartial(p, count, kNegInf);
}

inline float MaxOf(VecF v) {
  float buf[kLanes];
  __builtin_memcpy(buf, &v, sizeof(v));
  float m = buf[0];
  for (int64_t i = 1; i < kLanes; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

KLRow<float> KLForward(const float* t, const float* s, int64_t c, float inv_t) {
  VecF mt = Splat(kNegInf), ms = Splat(kNegInf);
  ForEachVector(c, [&](int64_t j, int64_t n) {
    mt = Max(mt, LoadN(t + j, n));
    ms = Max(ms, LoadN(s + j, n));
  });
  const float max_t = MaxOf(mt), max_s = MaxOf(ms);
  const VecF vmt = Splat(max_t), vms = Splat(max_s), it = Splat(inv_t);
  const VecF neg_inf = Splat(kNegInf), zero = Splat(0.f);
  // Sums in blocks of kSumBlock classes (simd.h).
  VecF st = zero, ss = zero, w = zero;
  for (int64_t j0 = 0; j0 < c; j0 += kSumBlock) {
    VecF bt = zero, bs = zero, bw = zero;
    ForEachVector(SumBlockEnd(j0, c) - j0, [&](int64_t j, int64_t n) {
      const VecF tv = LoadN(t + j0 + j, n), sv = LoadN(s + j0 + j, n);
      const VecF et = tv == neg_inf ? zero : Exp((tv - vmt) * it);
      const VecF es = sv == neg_inf ? zero : Exp((sv - vms) * it);
      bt += et;
      bs += es;
      // (t - s) / T - (max_t - max_s) / T, from the shifted logits: the
      // terms stay as small as the loss instead of as large as the logits.
      bw += et == zero ? zero : et * (((tv - vmt) - (sv - vms)) * it);
    });
    st += bt;
    ss += bs;
    w += bw;
  }
  const float sum_t = HorizontalSum(st), sum_s = HorizontalSum(ss);
  const float lse_t = RoundedProduct(max_t, inv_t) + __builtin_logf(sum_t);
  const float lse_s = RoundedProduct(max_s, inv_t) + __builtin_logf(sum_s);
  // loss = w / sum_t - (lse_t - lse_s) with the large max_t / T and
  // max_s / T cancelled exactly (already subtracted in w).
  const float loss =
      HorizontalSum(w) / sum_t - __builtin_logf(sum_t) + __builtin_logf(sum_s);
  return {loss, lse_t, lse_s};
}

void KLBackward(const float* t, const float* s, int64_t c, float inv_t,
                KLRow<float> row, float g, float* dteacher, float* dstudent,
                bool stream) {
  const VecF it = Splat(inv_t), git = Splat(g * inv_t);
  const VecF lt = Splat(row.teacher_lse), ls = Splat(row.student_lse);
  const VecF loss = Splat(row.loss);
  const VecF neg_inf = Splat(kNegInf), zero = Splat(0.f);
  const bool nt = stream && CanStream(dstudent) &&
                  (dteacher == nullptr || CanStream(dteacher));
  ForEachVector(c, [&](int64_t j, int64_t n) {
    const VecF tv = LoadN(t + j, n), sv = LoadN(s + j, n);
    const VecF lp = RoundedProduct(tv, it) - lt;
    const VecF lq = RoundedProduct(sv, it) - ls;
    const VecF p = tv == neg_inf ? zero : Exp(lp);
    const VecF q = sv == neg_inf ? zero : Exp(lq);
    const VecF ds = git * (q - p);
    if (n == kLanes) {
      StoreOut(dstudent + j, ds, nt);
    } else {
      StorePartial(dstudent + j, ds, n);
    }
    if (dteacher != nullptr) {
      const VecF dt = p == zero ? zero : git * p * ((lp - lq) - loss);
      if (n == kLanes) {
        StoreOut(dteacher + j, dt, nt);
      } else {
        StorePartial(dteacher + j, dt, n);
      }
    }
  });
}

}  // namespace

const DistillationKernels kDistillationKernels = {KLForward, KLBackward};

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
