// Philox4x32-10 counter-based random numbers (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011), the generator TensorFlow's
// stateless random ops use. Header-only, no TensorFlow and no CUDA headers:
// the same code runs in g++ CPU kernels and nvcc device code, so a dropout
// mask drawn on one device is bit-identical on the other and in the backward
// pass, which regenerates it instead of storing it.
//
// kbm's attention-dropout stream (AttentionDropoutKeep below): for the
// element with flat index f = ((b * heads + h) * q_len + i) * k_len + j of the
// [batch, heads, q_len, k_len] probability tensor,
//   key     = (lo32(seed0), hi32(seed0))
//   counter = (lo32(f >> 2), hi32(f >> 2), lo32(seed1), hi32(seed1))
//   u       = Philox4x32_10(counter, key)[f & 3]
//   keep    = u >= threshold,  threshold = DropoutThreshold(rate)
// and a kept probability is scaled by 1 / (1 - rate).
#ifndef KERAS_BIGMODELS_CC_COMMON_PHILOX_H_
#define KERAS_BIGMODELS_CC_COMMON_PHILOX_H_

#include <cstdint>

#if defined(__CUDACC__)
#define KBM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KBM_HOST_DEVICE inline
#endif

namespace kbm_philox {

struct Uint4 {
  uint32_t x, y, z, w;
};

KBM_HOST_DEVICE void MulHiLo(uint32_t a, uint32_t b, uint32_t* hi,
                             uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  *lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
#endif
}

// Ten rounds of Philox4x32 on `ctr` under the 64-bit key (k0, k1).
KBM_HOST_DEVICE Uint4 Philox4x32_10(Uint4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    MulHiLo(kM0, ctr.x, &hi0, &lo0);
    MulHiLo(kM1, ctr.z, &hi1, &lo1);
    ctr = Uint4{hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// The smallest 32-bit draw that is kept at dropout `rate` (0 <= rate < 1):
// P(u >= threshold) = 1 - rate to within 2^-32.
KBM_HOST_DEVICE uint32_t DropoutThreshold(float rate) {
  if (!(rate > 0.0f)) return 0u;
  const double t = static_cast<double>(rate) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// The four draws of the group of flat indices [4 * group, 4 * group + 3].
KBM_HOST_DEVICE Uint4 DropoutGroup(uint64_t seed0, uint64_t seed1,
                                   uint64_t group) {
  const Uint4 ctr{
      static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
      static_cast<uint32_t>(seed1), static_cast<uint32_t>(seed1 >> 32)};
  return Philox4x32_10(ctr, static_cast<uint32_t>(seed0),
                       static_cast<uint32_t>(seed0 >> 32));
}

KBM_HOST_DEVICE uint32_t Pick(const Uint4& r, uint32_t lane) {
  return lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
}

// Whether the element with flat index `flat` survives dropout.
KBM_HOST_DEVICE bool AttentionDropoutKeep(uint64_t seed0, uint64_t seed1,
                                          uint64_t flat, uint32_t threshold) {
  const Uint4 r = DropoutGroup(seed0, seed1, flat >> 2);
  return Pick(r, static_cast<uint32_t>(flat & 3)) >= threshold;
}

}  // namespace kbm_philox

#endif  // KERAS_BIGMODELS_CC_COMMON_PHILOX_H_
