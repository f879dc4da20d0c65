// Row functions of the distillation family (softmax KL divergence).
//
// Float rows run the SIMD functions of distillation_simd.cc (compiled per
// SIMD variant, see cc/common/cpu_isa.h); this header must stay free of
// TensorFlow headers. The scalar templates are the float64 kernels.
#ifndef KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_H_
#define KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_H_

#include <cmath>
#include <cstdint>
#include <limits>

namespace tensorflow {
namespace kbm {

// Result of one row's forward pass.
template <typename U>
struct KLRow {
  U loss, teacher_lse, student_lse;
};

struct DistillationKernels {
  // KL(softmax(t * inv_t) || softmax(s * inv_t)) of one row of c logits.
  KLRow<float> (*kl_fwd)(const float* t, const float* s, int64_t c,
                         float inv_t);
  // dstudent = g * inv_t * (q - p); dteacher (if not null) =
  // g * inv_t * p * (log p - log q - loss).
  void (*kl_bwd)(const float* t, const float* s, int64_t c, float inv_t,
                 KLRow<float> row, float g, float* dteacher, float* dstudent,
                 bool stream);
};

namespace avx {
extern const DistillationKernels kDistillationKernels;
}  // namespace avx
namespace avx2 {
extern const DistillationKernels kDistillationKernels;
}  // namespace avx2

template <typename U>
KLRow<U> KLForwardScalar(const U* t, const U* s, int64_t c, U inv_t) {
  const U neg_inf = -std::numeric_limits<U>::infinity();
  U mt = neg_inf, ms = neg_inf;
  for (int64_t j = 0; j < c; ++j) {
    mt = t[j] > mt ? t[j] : mt;
    ms = s[j] > ms ? s[j] : ms;
  }
  U st = 0, ss = 0, w = 0;
  for (int64_t j = 0; j < c; ++j) {
    const U et = t[j] == neg_inf ? U(0) : std::exp((t[j] - mt) * inv_t);
    st += et;
    ss += s[j] == neg_inf ? U(0) : std::exp((s[j] - ms) * inv_t);
    // Shifted by the maxima, as in the float kernels (no cancellation of
    // max_t / T against max_s / T in the loss).
    if (et != U(0)) w += et * ((t[j] - mt) - (s[j] - ms)) * inv_t;
  }
  const U lse_t = mt * inv_t + std::log(st);
  const U lse_s = ms * inv_t + std::log(ss);
  return {w / st - std::log(st) + std::log(ss), lse_t, lse_s};
}

template <typename U>
void KLBackwardScalar(const U* t, const U* s, int64_t c, U inv_t, KLRow<U> row,
                      U g, U* dteacher, U* dstudent) {
  const U neg_inf = -std::numeric_limits<U>::infinity();
  for (int64_t j = 0; j < c; ++j) {
    const U lp = t[j] * inv_t - row.teacher_lse;
    const U lq = s[j] * inv_t - row.student_lse;
    const U p = t[j] == neg_inf ? U(0) : std::exp(lp);
    const U q = s[j] == neg_inf ? U(0) : std::exp(lq);
    dstudent[j] = g * inv_t * (q - p);
    if (dteacher != nullptr) {
      dteacher[j] = p == U(0) ? U(0) : g * inv_t * p * (lp - lq - row.loss);
    }
  }
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_DISTILLATION_KERNELS_DISTILLATION_H_
