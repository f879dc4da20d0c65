// Kbm>Dropout's Philox draws and masked scaling, compiled once per SIMD
// variant (KBM_ISA: avx, avx2, avx512vnni; see cpu_isa.h). A block is 16
// Philox4x32-10 groups (64 elements), run side by side in
// structure-of-arrays form: one vector per Philox word, the 32x32->64-bit
// multiplies as even/odd vpmuludq pairs. The keep decisions come back as a
// 64-bit mask, bit-identical to the scalar kbm_philox::DropoutGroup.
#include <immintrin.h>

#include "cc/bias_activation/kernels/dropout.h"
#include "cc/common/philox.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

#if defined(__AVX512F__)

// hi and lo 32-bit halves of a * m per 32-bit lane.
inline void MulHiLo(__m512i a, __m512i m, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

uint64_t KeepBits(uint64_t seed0, uint64_t seed1, int64_t block,
                  uint32_t threshold) {
  const uint64_t first = static_cast<uint64_t>(block) * 16;
  __m512i c0 = _mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(first >> 32));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(seed1));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(seed1 >> 32));
  const __m512i m0 = _mm512_set1_epi64(kM0), m1 = _mm512_set1_epi64(kM1);
  uint32_t k0 = static_cast<uint32_t>(seed0);
  uint32_t k1 = static_cast<uint32_t>(seed0 >> 32);
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    MulHiLo(c0, m0, &hi0, &lo0);
    MulHiLo(c2, m1, &hi1, &lo1);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1),
                          _mm512_set1_epi32(static_cast<int>(k0)));
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3),
                          _mm512_set1_epi32(static_cast<int>(k1)));
    c1 = lo1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  const __m512i t = _mm512_set1_epi32(static_cast<int>(threshold));
  const uint32_t m[4] = {
      _mm512_cmpge_epu32_mask(c0, t), _mm512_cmpge_epu32_mask(c1, t),
      _mm512_cmpge_epu32_mask(c2, t), _mm512_cmpge_epu32_mask(c3, t)};
  return InterleaveWordMasks(m);
}

void Apply(const float* x, uint64_t bits, int64_t n, float scale, float* y) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) {
    const __mmask16 keep = static_cast<__mmask16>(bits >> e);
    _mm512_storeu_ps(y + e,
                     _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(x + e), s));
  }
  for (; e < n; ++e) y[e] = (bits >> e) & 1 ? x[e] * scale : 0.f;
}

#elif defined(__AVX2__)

inline void MulHiLo(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// The four 8-lane word masks of groups [first, first + 8).
inline void HalfBlock(uint64_t seed0, uint64_t seed1, uint64_t first,
                      uint32_t threshold, uint32_t m[4]) {
  __m256i c[4];
  c[0] = _mm256_add_epi32(
      _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))),
      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  c[1] = _mm256_set1_epi32(static_cast<int>(first >> 32));
  c[2] = _mm256_set1_epi32(static_cast<int>(seed1));
  c[3] = _mm256_set1_epi32(static_cast<int>(seed1 >> 32));
  const __m256i m0 = _mm256_set1_epi64x(kM0), m1 = _mm256_set1_epi64x(kM1);
  uint32_t k0 = static_cast<uint32_t>(seed0);
  uint32_t k1 = static_cast<uint32_t>(seed0 >> 32);
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    MulHiLo(c[0], m0, &hi0, &lo0);
    MulHiLo(c[2], m1, &hi1, &lo1);
    c[0] = _mm256_xor_si256(_mm256_xor_si256(hi1, c[1]),
                            _mm256_set1_epi32(static_cast<int>(k0)));
    c[2] = _mm256_xor_si256(_mm256_xor_si256(hi0, c[3]),
                            _mm256_set1_epi32(static_cast<int>(k1)));
    c[1] = lo1;
    c[3] = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  const __m256i t = _mm256_set1_epi32(static_cast<int>(threshold));
  for (int w = 0; w < 4; ++w) {
    // u >= t  <=>  max(u, t) == u (unsigned).
    const __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(c[w], t), c[w]);
    m[w] = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(ge)));
  }
}

uint64_t KeepBits(uint64_t seed0, uint64_t seed1, int64_t block,
                  uint32_t threshold) {
  const uint64_t first = static_cast<uint64_t>(block) * 16;
  uint32_t lo[4], hi[4], m[4];
  HalfBlock(seed0, seed1, first, threshold, lo);
  HalfBlock(seed0, seed1, first + 8, threshold, hi);
  for (int w = 0; w < 4; ++w) m[w] = lo[w] | (hi[w] << 8);
  return InterleaveWordMasks(m);
}

void Apply(const float* x, uint64_t bits, int64_t n, float scale, float* y) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  int64_t e = 0;
  for (; e + 8 <= n; e += 8) {
    const __m256i b = _mm256_and_si256(
        _mm256_set1_epi32(static_cast<int>((bits >> e) & 0xFF)), lane_bits);
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane_bits));
    _mm256_storeu_ps(
        y + e, _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(x + e), s), keep));
  }
  for (; e < n; ++e) y[e] = (bits >> e) & 1 ? x[e] * scale : 0.f;
}

#else  // The baseline variant: the scalar generator.

uint64_t KeepBits(uint64_t seed0, uint64_t seed1, int64_t block,
                  uint32_t threshold) {
  uint64_t bits = 0;
  for (int l = 0; l < 16; ++l) {
    const kbm_philox::Uint4 r = kbm_philox::DropoutGroup(
        seed0, seed1, static_cast<uint64_t>(block) * 16 + l);
    bits |= static_cast<uint64_t>(r.x >= threshold) << (4 * l);
    bits |= static_cast<uint64_t>(r.y >= threshold) << (4 * l + 1);
    bits |= static_cast<uint64_t>(r.z >= threshold) << (4 * l + 2);
    bits |= static_cast<uint64_t>(r.w >= threshold) << (4 * l + 3);
  }
  return bits;
}

void Apply(const float* x, uint64_t bits, int64_t n, float scale, float* y) {
  for (int64_t e = 0; e < n; ++e) y[e] = (bits >> e) & 1 ? x[e] * scale : 0.f;
}

#endif

}  // namespace

extern const DropoutKernels kDropoutKernels = {KeepBits, Apply};

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
