// Row functions of the normalisation family, shared by the OpKernels.
//
// The float row functions live in normalization_simd.cc, which is compiled
// once per SIMD variant (namespaces `avx` and `avx2`, see
// cc/common/cpu_isa.h); this header must stay free of TensorFlow headers so
// that file can include it. The float64 path (used for gradient checks) is
// the scalar template at the bottom of this header.
#ifndef KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_H_
#define KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_H_

#include <cmath>
#include <cstdint>

namespace tensorflow {
namespace kbm {

// One row = the last axis of x, `c` contiguous values. In every function the
// output row may alias the input row (dx may alias dy, y may alias x).
// `stream` asks for streaming stores of the output row (used when it is
// 32-byte aligned; the caller fences).
struct NormRowKernels {
  // y = (x - mean) * rstd * gamma + beta; writes the row's mean and rstd.
  void (*layer_norm_fwd)(const float* x, const float* gamma, const float* beta,
                         int64_t c, float epsilon, float* y, float* mean,
                         float* rstd, bool stream);
  // dx of LayerNorm; adds dy * xhat to dgamma and dy to dbeta.
  void (*layer_norm_bwd)(const float* dy, const float* x, const float* gamma,
                         float mean, float rstd, int64_t c, float* dx,
                         float* dgamma, float* dbeta, bool stream);
  // y = x * rstd * gamma; writes the row's rstd.
  void (*rms_norm_fwd)(const float* x, const float* gamma, int64_t c,
                       float epsilon, float* y, float* rstd, bool stream);
  // dx of RMSNorm; adds dy * xhat to dgamma.
  void (*rms_norm_bwd)(const float* dy, const float* x, const float* gamma,
                       float rstd, int64_t c, float* dx, float* dgamma,
                       bool stream);
};

namespace avx {
extern const NormRowKernels kNormRowKernels;
}  // namespace avx
namespace avx2 {
extern const NormRowKernels kNormRowKernels;
}  // namespace avx2

// Scalar reference rows in any floating type (the float64 kernels), same
// contract as NormRowKernels.
template <typename U>
void LayerNormFwdRowScalar(const U* x, const U* gamma, const U* beta, int64_t c,
                           U epsilon, U* y, U* mean, U* rstd) {
  // Shifted by the first element, as in LayerNormFwd (normalization_simd.cc):
  // a constant row has a variance of exactly 0.
  const U x0 = c > 0 ? x[0] : U(0);
  U sum = 0;
  for (int64_t j = 0; j < c; ++j) sum += x[j] - x0;
  const U m0 = x0 + sum / static_cast<U>(c);
  // Corrected by the mean of the residuals, with the variance (as in
  // LayerNormFwd).
  U res = 0, sq = 0;
  for (int64_t j = 0; j < c; ++j) {
    const U e = x[j] - m0;
    res += e;
    sq += e * e;
  }
  const U d = res / static_cast<U>(c);
  const U m = m0 + d;
  const U var = sq / static_cast<U>(c) - d * d;
  const U r = U(1) / std::sqrt((var > U(0) ? var : U(0)) + epsilon);
  for (int64_t j = 0; j < c; ++j) y[j] = (x[j] - m) * r * gamma[j] + beta[j];
  *mean = m;
  *rstd = r;
}

template <typename U>
void LayerNormBwdRowScalar(const U* dy, const U* x, const U* gamma, U mean,
                           U rstd, int64_t c, U* dx, U* dgamma, U* dbeta) {
  U s1 = 0, s2 = 0;
  for (int64_t j = 0; j < c; ++j) {
    const U xhat = (x[j] - mean) * rstd;
    const U gdy = gamma[j] * dy[j];
    s1 += gdy;
    s2 += gdy * xhat;
    dgamma[j] += dy[j] * xhat;
    dbeta[j] += dy[j];
  }
  const U inv_c = U(1) / static_cast<U>(c);
  for (int64_t j = 0; j < c; ++j) {
    const U xhat = (x[j] - mean) * rstd;
    dx[j] = rstd * (gamma[j] * dy[j] - (s1 + xhat * s2) * inv_c);
  }
}

template <typename U>
void RmsNormFwdRowScalar(const U* x, const U* gamma, int64_t c, U epsilon, U* y,
                         U* rstd) {
  U sq = 0;
  for (int64_t j = 0; j < c; ++j) sq += x[j] * x[j];
  const U r = U(1) / std::sqrt(sq / static_cast<U>(c) + epsilon);
  for (int64_t j = 0; j < c; ++j) y[j] = x[j] * r * gamma[j];
  *rstd = r;
}

template <typename U>
void RmsNormBwdRowScalar(const U* dy, const U* x, const U* gamma, U rstd,
                         int64_t c, U* dx, U* dgamma) {
  U s2 = 0;
  for (int64_t j = 0; j < c; ++j) {
    const U xhat = x[j] * rstd;
    s2 += gamma[j] * dy[j] * xhat;
    dgamma[j] += dy[j] * xhat;
  }
  const U k = s2 / static_cast<U>(c);
  for (int64_t j = 0; j < c; ++j) {
    dx[j] = rstd * (gamma[j] * dy[j] - x[j] * rstd * k);
  }
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_NORMALIZATION_KERNELS_NORMALIZATION_H_
