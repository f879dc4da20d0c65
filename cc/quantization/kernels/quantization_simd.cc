// Tile kernels of the quantized matmul family. Compiled once per SIMD
// variant: the build defines KBM_ISA as `avx`, `avx2` or `avx512vnni` (see
// cpu_isa.h).
//
// W8A8 with AVX-512 VNNI: vpdpbusd (u8 x s8, 4-way dot into int32, no
// saturation) on zmm, 16 channels x 4 bytes along K per register, i.e. two
// 8-channel panels of the packed layout side by side. The activations are
// made unsigned by flipping their sign bit (a + 128) and 128 * (column sums
// of the weights) is subtracted at the end, summed by one more vpdpbusd per
// register with 0x80 bytes, once per call's panels (up to 8). The
// activations are stored flipped by this variant's quantize_row. The int32
// sums wrap modulo 2^32 but the final difference, the exact a.w (|a.w| <=
// 127 * 127 * K), is exact. The micro-kernel holds up to 8 rows x 4 panels
// (32 channels); its epilogue (dequantize, bias, activation) runs on 16
// lanes, two panels at a time.
//
// W8A8 on AVX2 (no VNNI) keeps the int32 sums exact with the sign trick:
// |a| (u8, <= 127) times the weights with a's sign applied (vpsignb; the
// weights are in [-127, 127], so no -128 to flip) through vpmaddubsw, whose
// pair sums are at most 2 * 127 * 127 = 32258 < 32767 (no saturation), then
// vpmaddwd with ones into int32. The micro-kernel holds 4 rows x 2 panels
// (16 channels) of int32 accumulators. The baseline variant (no 256-bit
// integer ops) runs the same tiles with scalar int32 sums.
//
// Weight-only, when scale groups hold whole packed blocks (per channel, or
// group sizes that are multiples of 4 (int8) / 8 (int4) values): tiles of
// rows x panels widen the packed bytes in place to int32 (int4: nibbles
// split by shifts), convert them to float and multiply them by the x values
// broadcast per 128-bit lane, so every weight load serves all the tile's
// rows; each group's sums are reduced (hadd) and scaled once. The
// avx512vnni variant uses zmm (up to 8 rows), avx2 ymm (up to 2 rows).
// Otherwise (and in the baseline variant): 32 packed bytes are transposed
// to one 8-channel vector per K value (vpshufb + vpermd), dequantized
// exactly as the reference does (q * scale) and accumulated with FMA for up
// to 8 rows at once.
//
// GELU uses the erf (Abramowitz & Stegun 7.1.26) and sigmoid forms of the
// bias + activation family, on the exp of cc/common/simd.h.
#include "cc/common/simd.h"
#include "cc/quantization/kernels/quantization.h"

#ifndef KBM_ISA
#error "KBM_ISA must name the SIMD variant namespace (avx, avx2, ...)"
#endif

namespace tensorflow {
namespace kbm {
namespace KBM_ISA {
namespace {

constexpr float kGeluTanhScaleF = 0.79788456080286536f;
constexpr float kGeluTanhCubicF = 0.044715f;
constexpr float kRowTiny = 0x1p-120f;  // ROW_TINY of the Python module.

// The epilogue's math on any float vector type V: VecF (8 lanes, one
// panel) or, in the avx512vnni variant, Vec16 (two panels).
template <typename V>
inline V GeluErf(V z) {
  V gauss;
  return z * NormalCdfOf(z, &gauss);
}

template <typename V>
inline V GeluTanh(V z) {
  const auto splat = SplatOf<V>;
  const V u = splat(kGeluTanhScaleF) * (z + splat(kGeluTanhCubicF) * z * z * z);
  return z / (splat(1.f) + ExpOf(splat(-2.f) * u));
}

template <typename V>
inline V Activate(V y, QuantActivation act) {
  switch (act) {
    case QuantActivation::kRelu:
      return y > SplatOf<V>(0.f) ? y : SplatOf<V>(0.f);
    case QuantActivation::kGelu:
      return GeluErf(y);
    case QuantActivation::kGeluTanh:
      return GeluTanh(y);
    default:
      return y;
  }
}

// Writes 8 channels starting at column c (fewer at the end of the row).
inline void StoreChannels(float* row, int64_t c, int64_t n, VecF v) {
  if (c + kLanes <= n) {
    Store(row + c, v);
  } else if (c < n) {
    StorePartial(row + c, v, n - c);
  }
}

// Dequantizes, adds the bias, activates and stores one W8A8 accumulator.
inline void W8A8Epilogue(const W8A8Problem& p, int64_t r, int64_t panel,
                         VecF accf) {
  const int64_t c = panel * kQuantPanelN;
  float* row = p.out + r * p.ldo;
  if (!p.finite[r]) {
    StoreChannels(row, c, p.n, Splat(__builtin_nanf("")));
    return;
  }
  VecF y = accf * (Splat(p.sx[r]) * Load(p.scale + c));
  if (p.bias != nullptr) y = y + Load(p.bias + c);
  StoreChannels(row, c, p.n, Activate(y, p.act));
}

bool QuantizeRow(const float* x, int64_t k, int64_t kp, int8_t* q, float* sx) {
  VecF vmax = Splat(0.f);
  VecF poison = Splat(0.f);  // x * 0: NaN once a NaN or Inf is seen.
  int64_t j = 0;
  for (; j + kLanes <= k; j += kLanes) {
    const VecF v = Load(x + j);
    poison = poison + v * Splat(0.f);
    vmax = Max(vmax, Abs(v));
  }
  float amax = 0.f, bad = HorizontalSum(poison);
  {
    float buf[kLanes];
    std::memcpy(buf, &vmax, sizeof(buf));
    for (int64_t i = 0; i < kLanes; ++i) amax = buf[i] > amax ? buf[i] : amax;
  }
  for (int64_t t = j; t < k; ++t) {
    bad = bad + x[t] * 0.f;
    const float a = __builtin_fabsf(x[t]);
    amax = a > amax ? a : amax;
  }
  if (bad != bad) {
    std::memset(q, 0, kp);
    *sx = 0.f;
    return false;
  }
  if (amax < kRowTiny) amax = 0.f;  // 127 / amax would overflow.
  *sx = amax / 127.f;
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  j = 0;
#if defined(__AVX__)
  const VecF vinv = Splat(inv);
  for (; j + kLanes <= k; j += kLanes) {
    VecF v = Load(x + j) * vinv;
    v = Min(Max(v, Splat(-127.f)), Splat(127.f));
    // Rounds to nearest even (the default MXCSR mode).
    const __m256i i32 = _mm256_cvtps_epi32(reinterpret_cast<__m256>(v));
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32),
                                        _mm256_extractf128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j),
                     _mm_packs_epi16(i16, i16));
  }
#endif
  for (; j < k; ++j) {
    float v = x[j] * inv;
    v = v < -127.f ? -127.f : (v > 127.f ? 127.f : v);
    q[j] = static_cast<int8_t>(__builtin_rintf(v));
  }
  for (; j < kp; ++j) q[j] = 0;
  return true;
}

#if defined(__AVX2__)

// R rows (<= 4) times P panels (<= 2) of exact int8 sums.
template <int R, int P>
void W8A8Micro(const W8A8Problem& p, int64_t r, int64_t panel) {
  const int64_t kp = p.kb * kQuantPanelK;
  const int8_t* qx = p.qx + r * kp;
  const int8_t* w = p.packed + panel * p.kb * 32;
  const int64_t wstride = p.kb * 32;  // Bytes from one panel to the next.
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][P];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) acc[i][j] = _mm256_setzero_si256();
  }
  for (int64_t b = 0; b < p.kb; ++b) {
    __m256i wv[P];
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
      wv[j] = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(w + j * wstride + b * 32));
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      int32_t a4;
      std::memcpy(&a4, qx + i * kp + b * 4, 4);
      const __m256i a = _mm256_set1_epi32(a4);
      const __m256i ua = _mm256_sign_epi8(a, a);
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const __m256i s = _mm256_maddubs_epi16(ua, _mm256_sign_epi8(wv[j], a));
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(s, ones));
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
      W8A8Epilogue(p, r + i, panel + j,
                   reinterpret_cast<VecF>(_mm256_cvtepi32_ps(acc[i][j])));
    }
  }
}

template <int P>
void W8A8Rows(const W8A8Problem& p, int64_t r, int64_t rows, int64_t panel) {
  switch (rows) {
    case 4:
      return W8A8Micro<4, P>(p, r, panel);
    case 3:
      return W8A8Micro<3, P>(p, r, panel);
    case 2:
      return W8A8Micro<2, P>(p, r, panel);
    default:
      return W8A8Micro<1, P>(p, r, panel);
  }
}

void W8A8(const W8A8Problem& p, int64_t r0, int64_t r1, int64_t p0,
          int64_t p1) {
  int64_t panel = p0;
  for (; panel + 2 <= p1; panel += 2) {
    for (int64_t r = r0; r < r1; r += 4) {
      W8A8Rows<2>(p, r, r1 - r < 4 ? r1 - r : 4, panel);
    }
  }
  if (panel < p1) {
    for (int64_t r = r0; r < r1; r += 4) {
      W8A8Rows<1>(p, r, r1 - r < 4 ? r1 - r : 4, panel);
    }
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)

// The rows are quantized with their sign bit flipped (q + 128 as unsigned
// bytes, padding 0x80): what vpdpbusd multiplies.
bool QuantizeRowFlipped(const float* x, int64_t k, int64_t kp, int8_t* q,
                        float* sx) {
  const bool finite = QuantizeRow(x, k, kp, q, sx);
  int64_t j = 0;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (; j + 64 <= kp; j += 64) {
    __m512i* v = reinterpret_cast<__m512i*>(q + j);
    _mm512_storeu_si512(v, _mm512_xor_si512(_mm512_loadu_si512(v), flip));
  }
  for (; j < kp; ++j) q[j] = static_cast<int8_t>(q[j] ^ 0x80);
  return finite;
}

// 16 float lanes: two panels of one row.
typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec16Unaligned
    __attribute__((vector_size(64), aligned(4), may_alias));

// W8A8Epilogue for the two panels from `panel` at once (same operations,
// same order, so the same results); 8 lanes at a time where they reach
// past the row's end.
inline void W8A8Epilogue16(const W8A8Problem& p, int64_t r, int64_t panel,
                           __m512i acc) {
  const int64_t c = panel * kQuantPanelN;
  if (c + 2 * kQuantPanelN > p.n) {
    W8A8Epilogue(p, r, panel,
                 reinterpret_cast<VecF>(
                     _mm256_cvtepi32_ps(_mm512_castsi512_si256(acc))));
    W8A8Epilogue(p, r, panel + 1,
                 reinterpret_cast<VecF>(
                     _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(acc, 1))));
    return;
  }
  Vec16Unaligned* out =
      reinterpret_cast<Vec16Unaligned*>(p.out + r * p.ldo + c);
  if (!p.finite[r]) {
    *out = SplatOf<Vec16>(__builtin_nanf(""));
    return;
  }
  const auto load = [](const float* v) {
    return Vec16(*reinterpret_cast<const Vec16Unaligned*>(v));
  };
  const Vec16 accf = reinterpret_cast<Vec16>(_mm512_cvtepi32_ps(acc));
  Vec16 y = accf * (SplatOf<Vec16>(p.sx[r]) * load(p.scale + c));
  if (p.bias != nullptr) y = y + load(p.bias + c);
  *out = Activate(y, p.act);
}

// acc += u8 bytes of `a` times s8 bytes of `b`, 4-way dot per int32 lane.
// Inline assembly with the accumulator as an in-out register: with the
// intrinsic, GCC 12 copied every accumulator of the micro-kernel through a
// second register (and spilled some to the stack) on each K step, about 3
// instructions per vpdpbusd, which halved the kernel's speed.
inline void Dpbusd(__m512i& acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

// Panels processed per W8A8Vnni call at most (the op's tiles have 8).
constexpr int64_t kVnniMaxPanels = 8;

// R rows (<= 8) times Z zmm registers (2 panels each); kHalf: the last
// register holds one panel only (the next one may not exist). `csum`:
// 128 * the column sums of the panels from `panel` on (16 per register).
template <int R, int Z, bool kHalf>
void W8A8VnniMicro(const W8A8Problem& p, int64_t r, int64_t panel,
                   const int32_t* csum) {
  const int64_t kp = p.kb * kQuantPanelK;
  const int8_t* qx = p.qx + r * kp;
  const int8_t* w = p.packed + panel * p.kb * 32;
  const int64_t wstride = p.kb * 32;  // Bytes from one panel to the next.
  __m512i acc[R][Z];
#pragma GCC unroll 8
  for (int j = 0; j < Z; ++j) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i][j] = _mm512_setzero_si512();
  }
  for (int64_t b = 0; b < p.kb; ++b) {
    __m512i wv[Z];
#pragma GCC unroll 8
    for (int j = 0; j < Z; ++j) {
      const int8_t* lo = w + 2 * j * wstride + b * 32;
      const __m256i wlo =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
      if (kHalf && j == Z - 1) {
        wv[j] = _mm512_zextsi256_si512(wlo);
      } else {
        wv[j] = _mm512_inserti64x4(
            _mm512_castsi256_si512(wlo),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + wstride)),
            1);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      int32_t a4;
      std::memcpy(&a4, qx + i * kp + b * 4, 4);
      const __m512i ua = _mm512_set1_epi32(a4);
#pragma GCC unroll 8
      for (int j = 0; j < Z; ++j) {
        Dpbusd(acc[i][j], ua, wv[j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < Z; ++j) {
      const __m512i s =
          _mm512_sub_epi32(acc[i][j], _mm512_loadu_si512(csum + 16 * j));
      if (kHalf && j == Z - 1) {
        W8A8Epilogue(p, r + i, panel + 2 * j,
                     reinterpret_cast<VecF>(
                         _mm256_cvtepi32_ps(_mm512_castsi512_si256(s))));
      } else {
        W8A8Epilogue16(p, r + i, panel + 2 * j, s);
      }
    }
  }
}

template <int Z, bool kHalf>
void W8A8VnniRows(const W8A8Problem& p, int64_t r, int64_t rows, int64_t panel,
                  const int32_t* csum) {
  switch (rows) {
    case 8:
      return W8A8VnniMicro<8, Z, kHalf>(p, r, panel, csum);
    case 7:
      return W8A8VnniMicro<7, Z, kHalf>(p, r, panel, csum);
    case 6:
      return W8A8VnniMicro<6, Z, kHalf>(p, r, panel, csum);
    case 5:
      return W8A8VnniMicro<5, Z, kHalf>(p, r, panel, csum);
    case 4:
      return W8A8VnniMicro<4, Z, kHalf>(p, r, panel, csum);
    case 3:
      return W8A8VnniMicro<3, Z, kHalf>(p, r, panel, csum);
    case 2:
      return W8A8VnniMicro<2, Z, kHalf>(p, r, panel, csum);
    default:
      return W8A8VnniMicro<1, Z, kHalf>(p, r, panel, csum);
  }
}

template <int Z, bool kHalf>
void W8A8VnniPanels(const W8A8Problem& p, int64_t r0, int64_t r1, int64_t panel,
                    const int32_t* csum) {
  for (int64_t r = r0; r < r1; r += 8) {
    W8A8VnniRows<Z, kHalf>(p, r, r1 - r < 8 ? r1 - r : 8, panel, csum);
  }
}

// Panels [p0, p1) in calls of at most kVnniMaxPanels: 128 * the column sums
// of those panels (one vpdpbusd with 0x80 bytes per 2 panels and block),
// then every block of rows over them.
void W8A8Vnni(const W8A8Problem& p, int64_t r0, int64_t r1, int64_t p0,
              int64_t p1) {
  if (p1 - p0 > kVnniMaxPanels) {
    for (int64_t c = p0; c < p1; c += kVnniMaxPanels) {
      W8A8Vnni(p, r0, r1, c, c + kVnniMaxPanels < p1 ? c + kVnniMaxPanels : p1);
    }
    return;
  }
  alignas(64) int32_t csum[(kVnniMaxPanels + 2) * kQuantPanelN];
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t wstride = p.kb * 32;
  for (int64_t q = p0; q < p1; q += 2) {
    const int8_t* w = p.packed + q * wstride;
    const bool pair = q + 1 < p1;
    __m512i cs0 = _mm512_setzero_si512(), cs1 = _mm512_setzero_si512();
    int64_t b = 0;
    for (; b < p.kb; ++b) {
      const __m256i lo =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * 32));
      const __m512i wv =
          pair ? _mm512_inserti64x4(
                     _mm512_castsi256_si512(lo),
                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                         w + wstride + b * 32)),
                     1)
               : _mm512_zextsi256_si512(lo);
      if (b % 2 == 0) {
        cs0 = _mm512_dpbusd_epi32(cs0, flip, wv);
      } else {
        cs1 = _mm512_dpbusd_epi32(cs1, flip, wv);
      }
    }
    _mm512_store_si512(csum + (q - p0) * kQuantPanelN,
                       _mm512_add_epi32(cs0, cs1));
  }
  int64_t panel = p0;
  for (; panel + 4 <= p1; panel += 4) {
    W8A8VnniPanels<2, false>(p, r0, r1, panel, csum + (panel - p0) * 8);
  }
  const int32_t* cs = csum + (panel - p0) * 8;
  switch (p1 - panel) {
    case 3:
      return W8A8VnniPanels<2, true>(p, r0, r1, panel, cs);
    case 2:
      return W8A8VnniPanels<1, false>(p, r0, r1, panel, cs);
    case 1:
      return W8A8VnniPanels<1, true>(p, r0, r1, panel, cs);
    default:
      return;
  }
}

#endif  // __AVX512VNNI__ && __AVX512BW__

// 32 packed bytes (4 bytes x 8 channels) -> 4 vectors of 8 channels, one
// per byte position, as int32.
inline void Transpose4x8(__m256i b, __m256i out[4]) {
  const __m256i shuf =
      _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                       0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i t = _mm256_permutevar8x32_epi32(
      _mm256_shuffle_epi8(b, shuf), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  const __m128i lo = _mm256_castsi256_si128(t);
  const __m128i hi = _mm256_extracti128_si256(t, 1);
  out[0] = _mm256_cvtepi8_epi32(lo);
  out[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8));
  out[2] = _mm256_cvtepi8_epi32(hi);
  out[3] = _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8));
}

// Decodes one 32-byte block into `count` (4 or 8) vectors of 8 dequantized
// channel weights, in K order, for K values k0 .. k0 + count.
inline int DecodeBlock(const WeightOnlyProblem& p, const int8_t* src,
                       int64_t k0, int64_t c, VecF w[8]) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  __m256i v[8];
  int count;
  if (p.bits == 8) {
    Transpose4x8(b, v);
    count = 4;
  } else {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i eight = _mm256_set1_epi8(8);
    __m256i lo = _mm256_and_si256(b, mask);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
    lo = _mm256_sub_epi8(_mm256_xor_si256(lo, eight), eight);
    hi = _mm256_sub_epi8(_mm256_xor_si256(hi, eight), eight);
    __m256i vl[4], vh[4];
    Transpose4x8(lo, vl);
    Transpose4x8(hi, vh);
#pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = vl[i];  // Low nibble: even k.
      v[2 * i + 1] = vh[i];
    }
    count = 8;
  }
#pragma GCC unroll 8
  for (int i = 0; i < count; ++i) {
    const VecF s = Load(p.scale + p.scale_row[k0 + i] + c);
    w[i] = reinterpret_cast<VecF>(_mm256_cvtepi32_ps(v[i])) * s;
  }
  return count;
}

// The 8 channel sums of 4 accumulators holding 4 partial sums of each of
// channels (0, 1), (2, 3), (4, 5), (6, 7).
inline __m256 Reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h =
      _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Weight-only with whole-block groups: rows x panels micro-kernels. One
// vector holds kBytes packed bytes (kBytes / 4 channels x 4 bytes along K)
// widened to int32 in place (int4: each byte's two nibbles split by shifts
// into an even-k and an odd-k vector) and converted to float; it is
// multiplied by the matching 4 x values broadcast per 128-bit lane (int4:
// from the reordered rows `xd`, even k then odd k). Each group's sums are
// reduced to 8 channel sums per panel (hadd) and scaled once. Every row of
// R shares each weight vector, P panels side by side keep enough
// independent FMA chains for small R.
#if defined(__AVX512F__) && defined(__AVX512BW__)
struct Wide {
  using F = __m512;
  using I = __m512i;
  static constexpr int kBytes = 16;
  static I LoadWidened(const int8_t* s) {
    return _mm512_cvtepi8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  }
  static F Cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static I LowNibble(I v) {
    return _mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28);
  }
  static I HighNibble(I v) { return _mm512_srai_epi32(v, 4); }
  static F Zero() { return _mm512_setzero_ps(); }
  static F Fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F Broadcast4(const float* x) {
    return _mm512_broadcast_f32x4(_mm_loadu_ps(x));
  }
  // 8 channel sums of the 2 vectors of one panel.
  static __m256 Reduce(const F* a) {
    return Reduce4(
        _mm512_castps512_ps256(a[0]),
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[0]), 1)),
        _mm512_castps512_ps256(a[1]),
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[1]), 1)));
  }
};
#endif

struct Narrow {
  using F = __m256;
  using I = __m256i;
  static constexpr int kBytes = 8;
  static I LoadWidened(const int8_t* s) {
    return _mm256_cvtepi8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
  }
  static F Cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static I LowNibble(I v) {
    return _mm256_srai_epi32(_mm256_slli_epi32(v, 28), 28);
  }
  static I HighNibble(I v) { return _mm256_srai_epi32(v, 4); }
  static F Zero() { return _mm256_setzero_ps(); }
  static F Fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F Broadcast4(const float* x) {
    return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(x));
  }
  static __m256 Reduce(const F* a) { return Reduce4(a[0], a[1], a[2], a[3]); }
};

// R rows x P panels from row r and panel `panel`.
template <typename V, int R, int P, int kBits>
void WeightOnlyTile(const WeightOnlyProblem& p, int64_t r, int64_t panel) {
  constexpr int kVecs = 32 / V::kBytes;  // Vectors per panel and block.
  constexpr int64_t kValues = kBits == 8 ? 4 : 8;  // K values per block.
  const int8_t* w = p.packed + panel * p.kb * 32;
  const int64_t wstride = p.kb * 32;
  const float* x = (kBits == 8 ? p.x : p.xd) + r * p.ldx;
  const int64_t c = panel * kQuantPanelN;
  __m256 total[R][P];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) total[i][j] = _mm256_setzero_ps();
  }
  for (int64_t g0 = 0; g0 < p.kb; g0 += p.group_blocks) {
    const int64_t g1 = g0 + p.group_blocks < p.kb ? g0 + p.group_blocks : p.kb;
    typename V::F acc[R][P * kVecs];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
      for (int t = 0; t < P * kVecs; ++t) acc[i][t] = V::Zero();
    }
    for (int64_t b = g0; b < g1; ++b) {
      if constexpr (kBits == 8) {
        typename V::F wv[P * kVecs];
#pragma GCC unroll 16
        for (int t = 0; t < P * kVecs; ++t) {
          wv[t] = V::Cvt(V::LoadWidened(w + (t / kVecs) * wstride + b * 32 +
                                        (t % kVecs) * V::kBytes));
        }
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
          const typename V::F xv = V::Broadcast4(x + i * p.ldx + 4 * b);
#pragma GCC unroll 16
          for (int t = 0; t < P * kVecs; ++t) {
            acc[i][t] = V::Fma(wv[t], xv, acc[i][t]);
          }
        }
      } else {
        typename V::F lo[P * kVecs], hi[P * kVecs];
#pragma GCC unroll 16
        for (int t = 0; t < P * kVecs; ++t) {
          const typename V::I v = V::LoadWidened(
              w + (t / kVecs) * wstride + b * 32 + (t % kVecs) * V::kBytes);
          lo[t] = V::Cvt(V::LowNibble(v));  // Even k.
          hi[t] = V::Cvt(V::HighNibble(v));
        }
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
          const typename V::F xe = V::Broadcast4(x + i * p.ldx + 8 * b);
          const typename V::F xo = V::Broadcast4(x + i * p.ldx + 8 * b + 4);
#pragma GCC unroll 16
          for (int t = 0; t < P * kVecs; ++t) {
            acc[i][t] = V::Fma(lo[t], xe, acc[i][t]);
            acc[i][t] = V::Fma(hi[t], xo, acc[i][t]);
          }
        }
      }
    }
    const float* s = p.scale + p.scale_row[g0 * kValues] + c;
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
      const __m256 sj = _mm256_loadu_ps(s + j * kQuantPanelN);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        total[i][j] =
            _mm256_fmadd_ps(V::Reduce(&acc[i][j * kVecs]), sj, total[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
      const int64_t cj = c + j * kQuantPanelN;
      VecF y = reinterpret_cast<VecF>(total[i][j]);
      if (p.bias != nullptr) y = y + Load(p.bias + cj);
      StoreChannels(p.out + (r + i) * p.ldo, cj, p.n, Activate(y, p.act));
    }
  }
}

// Rows [r, r + R) of panels [p0, p1): P panels at a time, then one.
template <typename V, int R, int P, int kBits>
void WeightOnlyRowTile(const WeightOnlyProblem& p, int64_t r, int64_t p0,
                       int64_t p1) {
  int64_t panel = p0;
  for (; panel + P <= p1; panel += P) {
    WeightOnlyTile<V, R, P, kBits>(p, r, panel);
  }
  for (; panel < p1; ++panel) WeightOnlyTile<V, R, 1, kBits>(p, r, panel);
}

// Panels [p0, p1) in chunks of kChunk panels (their weights stay in cache
// while every block of rows runs over them).
template <typename V, int kBits>
void WeightOnlyRows(const WeightOnlyProblem& p, int64_t p0, int64_t p1) {
  constexpr bool kWide = V::kBytes == 16;
  constexpr int kMaxRows = kWide ? 8 : 2;
  constexpr int64_t kChunk = 4;
  for (int64_t c0 = p0; c0 < p1; c0 += kChunk) {
    const int64_t c1 = c0 + kChunk < p1 ? c0 + kChunk : p1;
    for (int64_t r = 0; r < p.rows; r += kMaxRows) {
      const int64_t n = p.rows - r < kMaxRows ? p.rows - r : kMaxRows;
      if constexpr (kWide) {
        switch (n) {
          case 8:
            WeightOnlyRowTile<V, 8, 1, kBits>(p, r, c0, c1);
            break;
          case 7:
            WeightOnlyRowTile<V, 7, 1, kBits>(p, r, c0, c1);
            break;
          case 6:
            WeightOnlyRowTile<V, 6, 1, kBits>(p, r, c0, c1);
            break;
          case 5:
            WeightOnlyRowTile<V, 5, 1, kBits>(p, r, c0, c1);
            break;
          case 4:
            WeightOnlyRowTile<V, 4, 2, kBits>(p, r, c0, c1);
            break;
          case 3:
            WeightOnlyRowTile<V, 3, 2, kBits>(p, r, c0, c1);
            break;
          case 2:
            WeightOnlyRowTile<V, 2, 4, kBits>(p, r, c0, c1);
            break;
          default:
            WeightOnlyRowTile<V, 1, 4, kBits>(p, r, c0, c1);
        }
      } else {
        if (n == 2) {
          WeightOnlyRowTile<V, 2, 1, kBits>(p, r, c0, c1);
        } else {
          WeightOnlyRowTile<V, 1, 2, kBits>(p, r, c0, c1);
        }
      }
    }
  }
}

// Returns false when the groups split blocks (or int4 lacks `xd`).
template <typename V>
bool WeightOnlyFastImpl(const WeightOnlyProblem& p, int64_t p0, int64_t p1) {
  if (p.group_blocks <= 0 || (p.bits == 4 && p.xd == nullptr)) return false;
  p.bits == 8 ? WeightOnlyRows<V, 8>(p, p0, p1)
              : WeightOnlyRows<V, 4>(p, p0, p1);
  return true;
}

bool WeightOnlyFast(const WeightOnlyProblem& p, int64_t p0, int64_t p1) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  return WeightOnlyFastImpl<Wide>(p, p0, p1);
#else
  return WeightOnlyFastImpl<Narrow>(p, p0, p1);
#endif
}

#else  // Baseline: scalar integer code.

bool WeightOnlyFast(const WeightOnlyProblem&, int64_t, int64_t) {
  return false;
}

void W8A8(const W8A8Problem& p, int64_t r0, int64_t r1, int64_t p0,
          int64_t p1) {
  const int64_t kp = p.kb * kQuantPanelK;
  for (int64_t panel = p0; panel < p1; ++panel) {
    const int8_t* w = p.packed + panel * p.kb * 32;
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* qx = p.qx + r * kp;
      VecI acc = VecI{};
      int32_t a8[kLanes] = {0};
      for (int64_t b = 0; b < p.kb; ++b) {
        for (int64_t j = 0; j < kQuantPanelN; ++j) {
          int32_t s = 0;
          for (int64_t i = 0; i < kQuantPanelK; ++i) {
            s += static_cast<int32_t>(qx[b * 4 + i]) *
                 static_cast<int32_t>(w[b * 32 + j * 4 + i]);
          }
          a8[j] += s;
        }
      }
      std::memcpy(&acc, a8, sizeof(acc));
      W8A8Epilogue(p, r, panel, __builtin_convertvector(acc, VecF));
    }
  }
}

inline int DecodeBlock(const WeightOnlyProblem& p, const int8_t* src,
                       int64_t k0, int64_t c, VecF w[8]) {
  const int count = p.bits == 8 ? 4 : 8;
#pragma GCC unroll 8
  for (int i = 0; i < count; ++i) {
    float f[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) {
      int v;
      if (p.bits == 8) {
        v = src[j * 4 + i];
      } else {
        const int byte = src[j * 4 + i / 2];
        // Low nibble for even k, high nibble for odd k, sign-extended
        // without shifting a negative value (undefined before C++20).
        const int nibble = (i % 2 == 0 ? byte : byte >> 4) & 0xF;
        v = (nibble ^ 8) - 8;
      }
      f[j] = static_cast<float>(v);
    }
    VecF fv;
    std::memcpy(&fv, f, sizeof(fv));
    w[i] = fv * Load(p.scale + p.scale_row[k0 + i] + c);
  }
  return count;
}

#endif  // __AVX2__

// R rows (<= 8) of one panel; small R splits each row's sum over several
// accumulators so the FMA chains overlap.
template <int R>
void WeightOnlyMicro(const WeightOnlyProblem& p, int64_t r, int64_t panel) {
  constexpr int kSplit = R >= 4 ? 1 : (R >= 2 ? 2 : 4);
  const int64_t c = panel * kQuantPanelN;
  const int8_t* w = p.packed + panel * p.kb * 32;
  VecF acc[R][kSplit];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int s = 0; s < kSplit; ++s) acc[i][s] = Splat(0.f);
  }
  const float* x = p.x + r * p.ldx;
  int64_t k = 0;
  for (int64_t b = 0; b < p.kb; ++b) {
    VecF wv[8];
    const int count = DecodeBlock(p, w + b * 32, k, c, wv);
#pragma GCC unroll 8
    for (int t = 0; t < count; ++t) {
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        acc[i][t % kSplit] =
            acc[i][t % kSplit] + Splat(x[i * p.ldx + k + t]) * wv[t];
      }
    }
    k += count;
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    VecF y = acc[i][0];
#pragma GCC unroll 8
    for (int s = 1; s < kSplit; ++s) y = y + acc[i][s];
    if (p.bias != nullptr) y = y + Load(p.bias + c);
    StoreChannels(p.out + (r + i) * p.ldo, c, p.n, Activate(y, p.act));
  }
}

void WeightOnly(const WeightOnlyProblem& p, int64_t p0, int64_t p1) {
  if (WeightOnlyFast(p, p0, p1)) return;
  for (int64_t panel = p0; panel < p1; ++panel) {
    for (int64_t r = 0; r < p.rows; r += 8) {
      switch (p.rows - r < 8 ? p.rows - r : 8) {
        case 8:
          WeightOnlyMicro<8>(p, r, panel);
          break;
        case 7:
          WeightOnlyMicro<7>(p, r, panel);
          break;
        case 6:
          WeightOnlyMicro<6>(p, r, panel);
          break;
        case 5:
          WeightOnlyMicro<5>(p, r, panel);
          break;
        case 4:
          WeightOnlyMicro<4>(p, r, panel);
          break;
        case 3:
          WeightOnlyMicro<3>(p, r, panel);
          break;
        case 2:
          WeightOnlyMicro<2>(p, r, panel);
          break;
        default:
          WeightOnlyMicro<1>(p, r, panel);
      }
    }
  }
}

}  // namespace

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
const QuantizationKernels kQuantizationKernels = {QuantizeRowFlipped, W8A8Vnni,
                                                  WeightOnly};
#else
const QuantizationKernels kQuantizationKernels = {QuantizeRow, W8A8,
                                                  WeightOnly};
#endif

}  // namespace KBM_ISA
}  // namespace kbm
}  // namespace tensorflow
