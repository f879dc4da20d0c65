// Kbm>Dropout's draw and apply functions (no TensorFlow headers).
//
// The stream is the attention-dropout stream of cc/common/philox.h: element
// f of the flattened tensor is kept when draw f % 4 of Philox4x32-10 with key
// seed0 and counter (f / 4, seed1) is at least the rate's threshold. The
// functions work on blocks of kDropoutBlock elements (16 Philox groups),
// whose first flat index is a multiple of kDropoutBlock; dropout_simd.cc
// compiles them per SIMD variant.
#ifndef KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_DROPOUT_H_
#define KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_DROPOUT_H_

#include <cstdint>

namespace tensorflow {
namespace kbm {

constexpr int64_t kDropoutBlock = 64;

struct DropoutKernels {
  // Bit e is set when flat index 64 * block + e is kept at `threshold`.
  uint64_t (*keep_bits)(uint64_t seed0, uint64_t seed1, int64_t block,
                        uint32_t threshold);
  // y[e] = bit e of `bits` ? x[e] * scale : 0 for e < n <= 64 (y may alias
  // x).
  void (*apply)(const float* x, uint64_t bits, int64_t n, float scale,
                float* y);
};

// Spreads the 16 bits of m to bits 0, 4, 8, ..., 60.
inline uint64_t SpreadBy4(uint64_t m) {
  m = (m | (m << 24)) & 0x000000FF000000FFull;
  m = (m | (m << 12)) & 0x000F000F000F000Full;
  m = (m | (m << 6)) & 0x0303030303030303ull;
  return (m | (m << 3)) & 0x1111111111111111ull;
}

// Bit 4 * l + c is set when word c of lane l is at least the threshold,
// given the 16-lane masks m[c] of the four Philox words.
inline uint64_t InterleaveWordMasks(const uint32_t m[4]) {
  return SpreadBy4(m[0]) | (SpreadBy4(m[1]) << 1) | (SpreadBy4(m[2]) << 2) |
         (SpreadBy4(m[3]) << 3);
}

namespace avx {
extern const DropoutKernels kDropoutKernels;
}  // namespace avx
namespace avx2 {
extern const DropoutKernels kDropoutKernels;
}  // namespace avx2
namespace avx512vnni {
extern const DropoutKernels kDropoutKernels;
}  // namespace avx512vnni

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_BIAS_ACTIVATION_KERNELS_DROPOUT_H_
