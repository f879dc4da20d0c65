// Tile kernels of the quantized matmul family (W8A8 and weight-only).
//
// The tile functions live in quantization_simd.cc, compiled once per SIMD
// variant (see cc/common/cpu_isa.h); this header must stay free of
// TensorFlow headers.
//
// Packed weights: `[ceil(N / 8), kb, 8, 4]` int8, element
// `[nb, b, j, i]` = byte `4 b + i` along K of output channel `8 nb + j`
// (int4: two values per byte along K, low nibble first), zero padded.
#ifndef KERAS_BIGMODELS_CC_QUANTIZATION_KERNELS_QUANTIZATION_H_
#define KERAS_BIGMODELS_CC_QUANTIZATION_KERNELS_QUANTIZATION_H_

#include <cstdint>

namespace tensorflow {
namespace kbm {

constexpr int64_t kQuantPanelN = 8;  // Output channels per panel.
constexpr int64_t kQuantPanelK = 4;  // Bytes along K per channel and block.

enum class QuantActivation : int { kLinear = 0, kRelu, kGelu, kGeluTanh };

// One W8A8 problem: quantized rows times packed int8 weights, epilogue
// `act(float(acc) * (sx[r] * scale[n]) + bias[n])` written as float32.
struct W8A8Problem {
  const int8_t* qx;       // [rows, 4 * kb] quantized rows, zero padded.
  const float* sx;        // [rows] row scales (max |row| / 127).
  const uint8_t* finite;  // [rows] 0 for rows with NaN/Inf (output NaN).
  const int8_t* packed;   // [panels, kb, 8, 4].
  const float* scale;     // [panels * 8] channel scales, zero padded.
  const float* bias;      // [panels * 8] zero padded, or nullptr.
  int64_t kb;             // Blocks of 4 bytes along K.
  int64_t n;              // Output channels (columns of out).
  QuantActivation act;
  float* out;  // [rows, ldo].
  int64_t ldo;
};

// One weight-only problem: float rows times dequantized int8/int4 weights
// (`q * scale[group(k), n]`, the reference's dequantized value), float32
// sums, the same epilogue without the row scale.
struct WeightOnlyProblem {
  const float* x;  // [rows, ldx] float rows, zero padded to ldx.
  int64_t rows;
  int64_t ldx;           // >= the K values of kb blocks (4 or 8 per byte
                         // block of 4: int8 or int4).
  const int8_t* packed;  // [panels, kb, 8, 4].
  int64_t kb;
  int bits;                  // 8 or 4.
  const float* scale;        // [groups, np] zero padded along N.
  const int64_t* scale_row;  // [ldx]: offset of k's scale row in `scale`.
  const float* bias;         // [np] zero padded, or nullptr.
  int64_t n;
  QuantActivation act;
  float* out;  // [rows, ldo].
  int64_t ldo;
  // Blocks per scale group when groups hold whole blocks (kb for one scale
  // per channel): the kernel may then scale each group's sum instead of
  // each weight. 0: scale every weight.
  int64_t group_blocks;
  // int4 with group_blocks > 0: x again with the values of each 8 along K
  // (one packed block) reordered as the 4 even then the 4 odd ones, or
  // nullptr (the kernel then uses a slower path).
  const float* xd;
};

struct QuantizationKernels {
  // Quantizes x[0, k) into q[0, kp) (zero padded) with round-half-to-even of
  // x * (127 / max|x|); sets *sx = max|x| / 127. A row with max|x| < 2^-120
  // (127 / max|x| would overflow) quantizes to zeros with *sx = 0. Returns
  // false (q zeros) when the row holds NaN or Inf. The avx512vnni variant
  // stores q ^ 0x80 (q + 128 as unsigned bytes), what its w8a8 reads: q is
  // for that variant's w8a8 only.
  bool (*quantize_row)(const float* x, int64_t k, int64_t kp, int8_t* q,
                       float* sx);
  // Rows [r0, r1) times panels [p0, p1) of a W8A8 problem.
  void (*w8a8)(const W8A8Problem& p, int64_t r0, int64_t r1, int64_t p0,
               int64_t p1);
  // All rows times panels [p0, p1) of a weight-only problem.
  void (*weight_only)(const WeightOnlyProblem& p, int64_t p0, int64_t p1);
};

namespace avx {
extern const QuantizationKernels kQuantizationKernels;
}  // namespace avx
namespace avx2 {
extern const QuantizationKernels kQuantizationKernels;
}  // namespace avx2
namespace avx512vnni {
extern const QuantizationKernels kQuantizationKernels;
}  // namespace avx512vnni

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_QUANTIZATION_KERNELS_QUANTIZATION_H_
