// Element functions and row-kernel table of the bias + activation family.
//
// The float row functions live in bias_activation_simd.cc (compiled per SIMD
// variant, see cc/common/cpu_isa.h); this header must stay free of
// TensorFlow headers. The scalar templates below are the float64 kernels and
// the element math a GPU functor would share.
#ifndef KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_H_
#define KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_H_

#include <cmath>
#include <cstdint>

namespace tensorflow {
namespace kbm {

struct BiasGeluRowKernels {
  // y = gelu(x + bias) over one row of c values (y may alias x). `stream`
  // asks for streaming stores of the output (the caller fences).
  void (*fwd)(const float* x, const float* bias, int64_t c, bool approximate,
              float* y, bool stream);
  // dx = dy * gelu'(x + bias) (dx may alias dy); adds dx to dbias.
  void (*bwd)(const float* dy, const float* x, const float* bias, int64_t c,
              bool approximate, float* dx, float* dbias, bool stream);
};

namespace avx {
extern const BiasGeluRowKernels kBiasGeluRowKernels;
}  // namespace avx
namespace avx2 {
extern const BiasGeluRowKernels kBiasGeluRowKernels;
}  // namespace avx2

// sqrt(2 / pi) and the cubic coefficient of the tanh approximation.
constexpr double kGeluTanhScale = 0.7978845608028654;
constexpr double kGeluTanhCubic = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <typename U>
U GeluScalar(U z, bool approximate) {
  if (approximate) {
    const U u = U(kGeluTanhScale) * (z + U(kGeluTanhCubic) * z * z * z);
    return U(0.5) * z * (U(1) + std::tanh(u));
  }
  return U(0.5) * z * (U(1) + std::erf(z * U(kInvSqrt2)));
}

template <typename U>
U GeluGradScalar(U z, bool approximate) {
  if (approximate) {
    const U u = U(kGeluTanhScale) * (z + U(kGeluTanhCubic) * z * z * z);
    const U t = std::tanh(u);
    const U du = U(kGeluTanhScale) * (U(1) + U(3 * kGeluTanhCubic) * z * z);
    return U(0.5) * (U(1) + t) + U(0.5) * z * (U(1) - t * t) * du;
  }
  return U(0.5) * (U(1) + std::erf(z * U(kInvSqrt2))) +
         z * U(kInvSqrt2Pi) * std::exp(U(-0.5) * z * z);
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_BIAS_ACTIVATION_H_
