// Portable 8-lane float SIMD built on GCC/Clang vector extensions.
//
// This header is included only by the `*_simd.cc` translation units, which
// the build compiles once per instruction-set variant (baseline
// x86-64-v2+AVX, and x86-64-v3 with AVX2+FMA) into different namespaces and
// picks between at run time (see cc/common/cpu_isa.h).
//
// Everything here has internal linkage (`static inline`, anonymous
// namespace): if these were ordinary inline functions, the linker would keep
// one COMDAT copy for the whole library and could run AVX2 code on the
// baseline path. Do not include TensorFlow or Eigen headers from here.
#ifndef KERAS_BIGMODELS_CC_COMMON_SIMD_H_
#define KERAS_BIGMODELS_CC_COMMON_SIMD_H_

#include <cstdint>
#include <cstring>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace tensorflow {
namespace kbm {
namespace {  // NOLINT(build/namespaces): internal linkage on purpose.

#if defined(KBM_SIMD_512) && defined(__AVX512F__)
// 16 lanes: a *_simd.cc file opts in by defining KBM_SIMD_512 before this
// header, and only its AVX-512 variant is compiled with -mavx512f.
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
constexpr int kVecBytes = static_cast<int>(kLanes) * 4;

typedef float VecF __attribute__((vector_size(kVecBytes)));
typedef int32_t VecI __attribute__((vector_size(kVecBytes)));
typedef float VecFUnaligned
    __attribute__((vector_size(kVecBytes), aligned(4), may_alias));

// Splat and Abs for any float vector type V (VecF, or a wider one a kernel
// uses for some loops). a - 0 is a for every float (-0 and NaN included),
// so the subtraction folds away and a broadcast is left; V{} + a would keep
// an add (-0 + 0 is +0).
template <typename V>
static inline V SplatOf(float a) {
  return a - V{};
}
template <typename V>
static inline V AbsOf(V a) {
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  return reinterpret_cast<V>(reinterpret_cast<I>(a) & (I{} + 0x7fffffff));
}

static inline VecF Splat(float a) { return SplatOf<VecF>(a); }
static inline VecF Load(const float* p) {
  return *reinterpret_cast<const VecFUnaligned*>(p);
}
static inline void Store(float* p, VecF v) {
  *reinterpret_cast<VecFUnaligned*>(p) = v;
}
// Loads n < kLanes floats, padding the rest of the lanes with `pad`.
static inline VecF LoadPartial(const float* p, int64_t n, float pad = 0.f) {
  float buf[kLanes];
  for (int64_t i = 0; i < kLanes; ++i) buf[i] = i < n ? p[i] : pad;
  VecF v;
  std::memcpy(&v, buf, sizeof(v));
  return v;
}
static inline void StorePartial(float* p, VecF v, int64_t n) {
  float buf[kLanes];
  std::memcpy(buf, &v, sizeof(v));
  for (int64_t i = 0; i < n; ++i) p[i] = buf[i];
}
static inline float HorizontalSum(VecF v) {
  float buf[kLanes];
  std::memcpy(buf, &v, sizeof(v));
  // Pairwise, so the rounding does not depend on lane order; 16 lanes are
  // first folded to 8.
  for (int64_t i = 0; i + 8 < kLanes; ++i) buf[i] += buf[i + 8];
  return ((buf[0] + buf[4]) + (buf[2] + buf[6])) +
         ((buf[1] + buf[5]) + (buf[3] + buf[7]));
}
// Long row sums add up blocks of kSumBlock elements: a lane then sums at
// most kSumBlock / kLanes terms in a row, and the blocks' sums, instead of
// n / kLanes terms (rounding errors of similar terms add up linearly: a
// KD loss over 32768 near-equal logits was 4e-5 off, LayerNorm's dx over
// 32768 equal values 0.008 off at rstd 32). The block from b ends at
// SumBlockEnd(b, n).
constexpr int64_t kSumBlock = 512;
static inline int64_t SumBlockEnd(int64_t b, int64_t n) {
  return n - b < kSumBlock ? n : b + kSumBlock;
}
// Streaming (non-temporal) store for outputs too large to stay in cache: it
// skips the read-for-ownership a normal store costs. `p` must be 32-byte
// aligned (see CanStream); the kernel fences once its shard is done.
static inline bool CanStream(const float* p) {
#if defined(__AVX__)
  return (reinterpret_cast<uintptr_t>(p) & (kVecBytes - 1)) == 0;
#else
  return false;
#endif
}
static inline void StoreStream(float* p, VecF v) {
#if defined(KBM_SIMD_512) && defined(__AVX512F__)
  _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif defined(__AVX__)
  _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#else
  Store(p, v);
#endif
}
// Store or streaming store, decided per row.
static inline void StoreOut(float* p, VecF v, bool stream) {
  if (stream) {
    StoreStream(p, v);
  } else {
    Store(p, v);
  }
}

static inline VecF Sqrt(VecF a) {
#if defined(KBM_SIMD_512) && defined(__AVX512F__)
  return reinterpret_cast<VecF>(_mm512_sqrt_ps(reinterpret_cast<__m512>(a)));
#elif defined(__AVX__)
  return reinterpret_cast<VecF>(_mm256_sqrt_ps(reinterpret_cast<__m256>(a)));
#else
  float buf[kLanes];
  std::memcpy(buf, &a, sizeof(a));
  for (int64_t i = 0; i < kLanes; ++i) buf[i] = __builtin_sqrtf(buf[i]);
  std::memcpy(&a, buf, sizeof(a));
  return a;
#endif
}

// Lane-wise min/max. If `a` is NaN the result is `b`: callers clamp only
// values whose NaN-ness is carried by another factor of the result.
static inline VecF Min(VecF a, VecF b) { return a < b ? a : b; }
static inline VecF Max(VecF a, VecF b) { return a > b ? a : b; }
static inline VecF Abs(VecF a) { return AbsOf(a); }
// Copies the sign bit of `s` onto the magnitude of `a` (|a| expected).
static inline VecF CopySign(VecF a, VecF s) {
  return reinterpret_cast<VecF>(reinterpret_cast<VecI>(a) |
                                (reinterpret_cast<VecI>(s) &
                                 (VecI{} + static_cast<int32_t>(0x80000000u))));
}

// exp(x) for float lanes, relative error about 2e-7 on [-87, 88] (1e-7 from
// the polynomial, the rest float32 rounding). Arguments are clamped to that
// range (exp(-inf) gives ~1.6e-38, not 0; exp(+inf) gives ~1.7e38, not
// inf). Range reduction x = n*ln2 + r with |r| <= ln2/2, then a degree-5
// polynomial for exp(r) (coefficients fitted for relative error on that
// interval, with 1 + r fixed) and an exponent-field 2^n. Written for any
// float vector type V (VecF, or a wider one a kernel uses for some loops).
template <typename V>
static inline V ExpOf(V x) {
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  const auto splat = SplatOf<V>;
  // Min(Max(x, -87), 88), as Exp always did: NaN gives exp(-87).
  x = x > splat(-87.0f) ? x : splat(-87.0f);
  x = x < splat(88.0f) ? x : splat(88.0f);
  const V shifter = splat(12582912.0f);  // 1.5 * 2^23: round to nearest.
  const V n = (x * splat(1.44269504088896341f) + shifter) - shifter;
  V r = x - n * splat(0.693145751953125f);    // ln2, high bits (exact n*hi).
  r = r - n * splat(1.428606765330187e-06f);  // ln2, low bits.
  V p = splat(0.008312525375007119f);
  p = p * r + splat(0.041890113925588175f);
  p = p * r + splat(0.16667114462219923f);
  p = p * r + splat(0.49999231784218523f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  return p * reinterpret_cast<V>(bits);
}
static inline VecF Exp(VecF x) { return ExpOf(x); }

// Phi(z), the standard normal CDF, as 1 - erfc(z / sqrt2) / 2 with erfc from
// Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), and in *gauss
// exp(-z^2 / 2), that formula's factor and the normal density times
// sqrt(2 pi). Exact GELU is z * Phi(z). For any float vector type V.
template <typename V>
static inline V NormalCdfOf(V z, V* gauss) {
  const auto splat = SplatOf<V>;
  const V a = AbsOf(z) * splat(0.70710678118654752f);  // |z| / sqrt2
  const V t = splat(1.f) / (splat(1.f) + splat(0.3275911f) * a);
  V p = splat(1.061405429f);
  p = p * t + splat(-1.453152027f);
  p = p * t + splat(1.421413741f);
  p = p * t + splat(-0.284496736f);
  p = p * t + splat(0.254829592f);
  p = p * t;
  *gauss = ExpOf(-(a * a));
  const V half_erfc = splat(0.5f) * p * *gauss;  // Phi(-|z|)
  return z >= splat(0.f) ? splat(1.f) - half_erfc : half_erfc;
}

}  // namespace
}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_COMMON_SIMD_H_
