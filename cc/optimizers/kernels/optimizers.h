// Element math and SIMD table of the fused optimizer family.
//
// The float row functions live in optimizers_simd.cc (compiled per SIMD
// variant, see cc/common/cpu_isa.h); this header must stay free of
// TensorFlow headers. The scalar templates below are the float64 kernels.
// Each function updates `n` consecutive elements of one variable and its
// slots in place, with the arithmetic of the Keras optimizer it replaces
// (same operation order), so results agree to rounding.
#ifndef KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_H_
#define KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_H_

#include <cmath>
#include <cstdint>

namespace tensorflow {
namespace kbm {

// Adam family: m += (g - m) * omb1; v += (g*g - v) * omb2; p -= p * decay;
// p -= m * coef_a / (sqrt(v / bias2) + eps) + m * coef_sgd.
template <typename U>
struct AdamScalars {
  U omb1, omb2, coef_a, bias2, coef_sgd, eps;
};

// LAMB: m, v as Adam; u = (m / bias1) / (sqrt(v / bias2) + eps);
// p = (p - p * decay) - ratio_lr * u.
template <typename U>
struct LambScalars {
  U lr, omb1, omb2, bias1, bias2, eps;
};

// Lion: p -= p * decay; p -= lr * sign(m * b1 + g * (1 - b1));
// m = m * b2 + g * (1 - b2).
template <typename U>
struct LionScalars {
  U lr, b1, b2;
};

struct OptimizerKernels {
  void (*adam)(float* p, float* m, float* v, const float* g, int64_t n,
               const AdamScalars<float>& s, float decay);
  // LAMB pass 1: computes the new m and v (without storing them); adds
  // sum((p - p*decay)^2) to *w2 and sum(u^2) to *u2.
  void (*lamb_moments)(const float* p, const float* m, const float* v,
                       const float* g, int64_t n, const LambScalars<float>& s,
                       float decay, double* w2, double* u2);
  // LAMB pass 2: computes m and v again, stores them, and
  // p = (p - p*decay) - ratio_lr * u, u from the unrounded m and v.
  void (*lamb_apply)(float* p, float* m, float* v, const float* g, int64_t n,
                     const LambScalars<float>& s, float decay, float ratio_lr);
  void (*lion)(float* p, float* m, const float* g, int64_t n,
               const LionScalars<float>& s, float decay);
};

namespace avx {
extern const OptimizerKernels kOptimizerKernels;
}  // namespace avx
namespace avx2 {
extern const OptimizerKernels kOptimizerKernels;
}  // namespace avx2

// ------------------------------------------------ scalar (float64) kernels

template <typename U>
void AdamScalar(U* p, U* m, U* v, const U* g, int64_t n,
                const AdamScalars<U>& s, U decay) {
  for (int64_t i = 0; i < n; ++i) {
    m[i] += (g[i] - m[i]) * s.omb1;
    v[i] += (g[i] * g[i] - v[i]) * s.omb2;
    const U pd = p[i] - p[i] * decay;
    p[i] = pd - ((m[i] * s.coef_a) / (std::sqrt(v[i] / s.bias2) + s.eps) +
                 m[i] * s.coef_sgd);
  }
}

template <typename U>
U LambUpdate(U m, U v, const LambScalars<U>& s) {
  return (m / s.bias1) / (std::sqrt(v / s.bias2) + s.eps);
}

// Pass 1 computes the new moments for the norms only; pass 2 computes them
// again (the same way), stores them and applies the update from them, never
// from values read back from (half-precision) variables.
template <typename U>
void LambMomentsScalar(const U* p, const U* m, const U* v, const U* g,
                       int64_t n, const LambScalars<U>& s, U decay, double* w2,
                       double* u2) {
  double sw = 0, su = 0;
  for (int64_t i = 0; i < n; ++i) {
    const U mi = m[i] + (g[i] - m[i]) * s.omb1;
    const U vi = v[i] + (g[i] * g[i] - v[i]) * s.omb2;
    const U pd = p[i] - p[i] * decay;
    const U u = LambUpdate(mi, vi, s);
    sw += static_cast<double>(pd) * pd;
    su += static_cast<double>(u) * u;
  }
  *w2 += sw;
  *u2 += su;
}

template <typename U>
void LambApplyScalar(U* p, U* m, U* v, const U* g, int64_t n,
                     const LambScalars<U>& s, U decay, U ratio_lr) {
  for (int64_t i = 0; i < n; ++i) {
    m[i] += (g[i] - m[i]) * s.omb1;
    v[i] += (g[i] * g[i] - v[i]) * s.omb2;
    p[i] = (p[i] - p[i] * decay) - ratio_lr * LambUpdate(m[i], v[i], s);
  }
}

template <typename U>
U SignOf(U x) {
  return x > 0 ? U(1) : (x < 0 ? U(-1) : x);  // 0 stays 0, NaN stays NaN.
}

template <typename U>
void LionScalar(U* p, U* m, const U* g, int64_t n, const LionScalars<U>& s,
                U decay) {
  for (int64_t i = 0; i < n; ++i) {
    const U c = m[i] * s.b1 + g[i] * (U(1) - s.b1);
    p[i] = (p[i] - p[i] * decay) - s.lr * SignOf(c);
    m[i] = m[i] * s.b2 + g[i] * (U(1) - s.b2);
  }
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_OPTIMIZERS_KERNELS_OPTIMIZERS_H_
