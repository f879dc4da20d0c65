// Float32 row kernels of the bias + activation family. Compiled once per SIMD
// variant: the build defines KBM_ISA as `avx` or `avx2` (see cpu_isa.h).
//
// GELU needs erf or tanh per element; both are built from one vectorised
// exp (cc/common/simd.h):
// - exact: Phi(z) = 1 - erfc(z/sqrt2)/2 with erfc from Abramowitz & Stegun
//   7.1.26 (absolute error <= 1.5e-7; NormalCdfOf in simd.h), whose
//   exp(-z^2/2) factor is also the normal density the gradient needs;
// - tanh: 0.5 * (1 + tanh(u)) = sigmoid(2u), so gelu = z / (1 + exp(-2u)).
#include "cc/bias_activation/kernels/bias_activation.h"
#include "cc/common/simd.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace (avx or avx2)"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

// sigmoid(2u) of the tanh approximation, and u'(z) / (the 2 of 2u).
inline VecF TanhGate(VecF z) {
  const VecF u = Splat(static_cast<float>(kGeluTanhScale)) *
                 (z + Splat(static_cast<float>(kGeluTanhCubic)) * z * z * z);
  return Splat(1.f) / (Splat(1.f) + Exp(Splat(-2.f) * u));
}

template <bool kApprox>
inline VecF Gelu(VecF z) {
  if constexpr (kApprox) {
    return z * TanhGate(z);
  } else {
    VecF gauss;
    return z * NormalCdfOf(z, &gauss);
  }
}

template <bool kApprox>
inline VecF GeluGrad(VecF z) {
  if constexpr (kApprox) {
    const VecF s = TanhGate(z);
    const VecF du =
        Splat(static_cast<float>(2 * kGeluTanhScale)) *
        (Splat(1.f) + Splat(static_cast<float>(3 * kGeluTanhCubic)) * z * z);
    return s + z * s * (Splat(1.f) - s) * du;
  } else {
    VecF gauss;
    const VecF cdf = NormalCdfOf(z, &gauss);
    return cdf + z * Splat(static_cast<float>(kInvSqrt2Pi)) * gauss;
  }
}

template <bool kApprox>
void FwdRow(const float* x, const float* bias, int64_t c, float* y,
            bool stream) {
  const bool nt = stream && CanStream(y);
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    StoreOut(y + j, Gelu<kApprox>(Load(x + j) + Load(bias + j)), nt);
  }
  if (j < c) {
    const int64_t n = c - j;
    StorePartial(
        y + j, Gelu<kApprox>(LoadPartial(x + j, n) + LoadPartial(bias + j, n)),
        n);
  }
}

template <bool kApprox>
void BwdRow(const float* dy, const float* x, const float* bias, int64_t c,
            float* dx, float* dbias, bool stream) {
  const bool nt = stream && CanStream(dx);
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    const VecF d =
        Load(dy + j) * GeluGrad<kApprox>(Load(x + j) + Load(bias + j));
    StoreOut(dx + j, d, nt);
    Store(dbias + j, Load(dbias + j) + d);
  }
  if (j < c) {
    const int64_t n = c - j;
    const VecF d =
        LoadPartial(dy + j, n) *
        GeluGrad<kApprox>(LoadPartial(x + j, n) + LoadPartial(bias + j, n));
    StorePartial(dx + j, d, n);
    StorePartial(dbias + j, LoadPartial(dbias + j, n) + d, n);
  }
}

void Fwd(const float* x, const float* bias, int64_t c, bool approximate,
         float* y, bool stream) {
  approximate ? FwdRow<true>(x, bias, c, y, stream)
              : FwdRow<false>(x, bias, c, y, stream);
}

void Bwd(const float* dy, const float* x, const float* bias, int64_t c,
         bool approximate, float* dx, float* dbias, bool stream) {
  approximate ? BwdRow<true>(dy, x, bias, c, dx, dbias, stream)
              : BwdRow<false>(dy, x, bias, c, dx, dbias, stream);
}

}  // namespace

const BiasGeluRowKernels kBiasGeluRowKernels = {Fwd, Bwd};

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
