// Tensor-core (mma.sync m16n8k16, fp32 accumulation) flash-attention kernels
// for float16 and bfloat16, FlashAttention-2 style. Included by one .cu.cc per
// 16-bit type, which instantiates them for the padded head dims.
//
// Fragment layout of m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major) registers: (row g, cols 2t, 2t+1), (row g+8, same),
//     (row g, cols 2t+8, 2t+9), (row g+8, same).
//   B (16 x 8, k x n): (k 2t, 2t+1 at n g), (k 2t+8, 2t+9 at n g).
//   C (16 x 8, fp32): c0, c1 at (row g, cols 2t, 2t+1); c2, c3 at row g+8.
// Two adjacent C tiles (n 0-7, 8-15) are exactly the A fragment of a 16 x 16
// tile, so probabilities stay in registers between the two products.
//
// Forward: one block per (query tile of 64 rows, query head, batch); 4 warps
// of 16 rows; loops over key tiles with an online softmax.
// Backward: a dK/dV kernel, one block per (key tile of 64, kv head, batch),
// 4 warps of 16 keys, looping over the query heads of the group and all query
// tiles (deterministic GQA sums), and a dQ kernel, one block per (query tile,
// query head, batch), looping over key tiles. Both recompute P from lse.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_CUH_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_CUH_

#include "cc/attention/kernels/attention_gpu_common.cuh"

namespace kbm {
namespace gpu {
namespace attn {

// Tile shapes per padded head dim P.
template <int P>
struct MmaTiles {
  static constexpr int kFwdBc = P <= 128 ? 64 : 32;  // keys per forward tile
  static constexpr int kDqBc = P <= 128 ? 64 : 32;   // keys per dQ tile
  static constexpr int kDkvBr = P <= 128 ? 32 : 16;  // queries per dK/dV tile
  static constexpr int kLd = P + 8;                  // smem row (elements)
  static constexpr size_t FwdSmem() {
    return static_cast<size_t>(64 + 2 * kFwdBc) * kLd * 2;
  }
  static constexpr size_t DqSmem() {
    return static_cast<size_t>(2 * 64 + 2 * kDqBc) * kLd * 2;
  }
  static constexpr size_t DkvSmem() {
    return static_cast<size_t>(2 * 64 + 2 * kDkvBr) * kLd * 2 +
           2 * kDkvBr * sizeof(float);
  }
};

template <bool kBf16, int P>
__global__ void __launch_bounds__(128)
    MmaForwardKernel(const KParams<uint16_t> p, const VecFlags vf) {
  constexpr int BR = 64, BC = MmaTiles<P>::kFwdBc, LD = MmaTiles<P>::kLd;
  constexpr int NT = BC / 8, ND = P / 8, KS = P / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sK = sQ + BR * LD;
  uint16_t* sV = sK + BC * LD;
  const int64_t qt = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;
  const int64_t h = p.head0 + blockIdx.y, b = p.batch0 + blockIdx.z;
  const int64_t hk = h / p.group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t q0 = qt * BR;
  const uint16_t* qg = p.q + (b * p.Tq * p.Hq + h) * p.D;
  const uint16_t* kg = p.k + (b * p.Tk * p.Hkv + hk) * p.D;
  const uint16_t* vg = p.v + (b * p.Tk * p.Hkv + hk) * p.Dv;
  LoadTile<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);

  float o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
    o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const int64_t rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  int64_t kend = p.Tk;
  if (p.causal) kend = min(kend, q0 + BR + p.causal_offset);
  const int64_t n_kt = kend > 0 ? (kend + BC - 1) / BC : 0;
  const bool any_mask = p.key_mask != nullptr || p.mask != nullptr;
  const uint16_t* qa = sQ + (warp * 16 + g) * LD + 2 * t;

  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BC;
    __syncthreads();
    LoadTile<BC, P, LD>(sK, kg, p.Hkv * p.D, k0, p.Tk, p.D, vf.k);
    LoadTile<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);
    __syncthreads();

    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t a0 = Ld32(qa + ks * 16);
      const uint32_t a1 = Ld32(qa + 8 * LD + ks * 16);
      const uint32_t a2 = Ld32(qa + ks * 16 + 8);
      const uint32_t a3 = Ld32(qa + 8 * LD + ks * 16 + 8);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint16_t* kb = sK + (nt * 8 + g) * LD + ks * 16 + 2 * t;
        Mma<kBf16>(s[nt], a0, a1, a2, a3, Ld32(kb), Ld32(kb + 8));
      }
    }

    const bool edge = any_mask || k0 + BC > p.Tk ||
                      (p.causal && k0 + BC - 1 > q0 + p.causal_offset);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * p.scale_log2;
        if (edge &&
            !Visible(p, b, rows[e >> 1], k0 + nt * 8 + 2 * t + (e & 1))) {
          x = -INFINITY;
        }
        s[nt][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float base[2], alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], QuadMax(mx[r]));
      base[r] = m_new == -INFINITY ? 0.0f : m_new;
      alpha[r] = exp2f(m[r] - base[r]);
      m[r] = m_new;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(s[nt][e] - base[e >> 1]);
        rs[e >> 1] += pv;
        s[nt][e] = pv;
      }
    }
    l[0] = l[0] * alpha[0] + rs[0];
    l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      o[nd][0] *= alpha[0];
      o[nd][1] *= alpha[0];
      o[nd][2] *= alpha[1];
      o[nd][3] *= alpha[1];
    }
    if (p.rate > 0.0f) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t row = rows[e >> 1];
          if (s[nt][e] != 0.0f && row < p.Tq) {
            s[nt][e] *= KeepScale(p, b, h, row, k0 + nt * 8 + 2 * t + (e & 1));
          }
        }
      }
    }
    // o += P V.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      const uint32_t a0 = PackF2<kBf16>(s[2 * kk][0], s[2 * kk][1]);
      const uint32_t a1 = PackF2<kBf16>(s[2 * kk][2], s[2 * kk][3]);
      const uint32_t a2 = PackF2<kBf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const uint32_t a3 = PackF2<kBf16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const uint16_t* vb = sV + (16 * kk + 2 * t) * LD + g;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        const uint32_t b0 = Ld2x16(vb + nd * 8, vb + LD + nd * 8);
        const uint32_t b1 = Ld2x16(vb + 8 * LD + nd * 8, vb + 9 * LD + nd * 8);
        Mma<kBf16>(o[nd], a0, a1, a2, a3, b0, b1);
      }
    }
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = QuadSum(l[r]);
    inv[r] = lt > 0.0f ? 1.0f / lt : 0.0f;
    const int64_t row = rows[r];
    if (t == 0 && row < p.Tq) {
      p.lse_out[(b * p.Hq + h) * p.Tq + row] =
          lt > 0.0f ? (m[r] + log2f(lt)) * kLn2 : INFINITY;
    }
  }
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = rows[e >> 1];
      const int64_t col = nd * 8 + 2 * t + (e & 1);
      if (row < p.Tq && col < p.Dv) {
        p.out[((b * p.Tq + row) * p.Hq + h) * p.Dv + col] =
            FloatToBits<kBf16>(o[nd][e] * inv[e >> 1]);
      }
    }
  }
}

template <bool kBf16, int P>
__global__ void __launch_bounds__(128)
    MmaDqKernel(const KParams<uint16_t> p, const VecFlags vf) {
  constexpr int BR = 64, BC = MmaTiles<P>::kDqBc, LD = MmaTiles<P>::kLd;
  constexpr int NT = BC / 8, ND = P / 8, KS = P / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sdO = sQ + BR * LD;
  uint16_t* sK = sdO + BR * LD;
  uint16_t* sV = sK + BC * LD;
  const int64_t qt = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;
  const int64_t h = p.head0 + blockIdx.y, b = p.batch0 + blockIdx.z;
  const int64_t hk = h / p.group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t q0 = qt * BR;
  const uint16_t* qg = p.q + (b * p.Tq * p.Hq + h) * p.D;
  const uint16_t* dog = p.d_o + (b * p.Tq * p.Hq + h) * p.Dv;
  const uint16_t* kg = p.k + (b * p.Tk * p.Hkv + hk) * p.D;
  const uint16_t* vg = p.v + (b * p.Tk * p.Hkv + hk) * p.Dv;
  LoadTile<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);
  LoadTile<BR, P, LD>(sdO, dog, p.Hq * p.Dv, q0, p.Tq, p.Dv, vf.d_o);

  const int64_t rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float lse2[2], del[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = rows[r] < p.Tq;
    const int64_t idx = (b * p.Hq + h) * p.Tq + rows[r];
    lse2[r] = in ? p.lse_in[idx] * kLog2e : INFINITY;
    del[r] = in ? p.delta[idx] : 0.0f;
  }
  float dq[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
    dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;
  }
  int64_t kend = p.Tk;
  if (p.causal) kend = min(kend, q0 + BR + p.causal_offset);
  const int64_t n_kt = kend > 0 ? (kend + BC - 1) / BC : 0;
  const bool any_mask = p.key_mask != nullptr || p.mask != nullptr;
  const uint16_t* qa = sQ + (warp * 16 + g) * LD + 2 * t;
  const uint16_t* da = sdO + (warp * 16 + g) * LD + 2 * t;

  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BC;
    __syncthreads();
    LoadTile<BC, P, LD>(sK, kg, p.Hkv * p.D, k0, p.Tk, p.D, vf.k);
    LoadTile<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);
    __syncthreads();

    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t a0 = Ld32(qa + ks * 16);
      const uint32_t a1 = Ld32(qa + 8 * LD + ks * 16);
      const uint32_t a2 = Ld32(qa + ks * 16 + 8);
      const uint32_t a3 = Ld32(qa + 8 * LD + ks * 16 + 8);
      const uint32_t d0 = Ld32(da + ks * 16);
      const uint32_t d1 = Ld32(da + 8 * LD + ks * 16);
      const uint32_t d2 = Ld32(da + ks * 16 + 8);
      const uint32_t d3 = Ld32(da + 8 * LD + ks * 16 + 8);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint16_t* kb = sK + (nt * 8 + g) * LD + ks * 16 + 2 * t;
        Mma<kBf16>(s[nt], a0, a1, a2, a3, Ld32(kb), Ld32(kb + 8));
        const uint16_t* vb = sV + (nt * 8 + g) * LD + ks * 16 + 2 * t;
        Mma<kBf16>(dp[nt], d0, d1, d2, d3, Ld32(vb), Ld32(vb + 8));
      }
    }
    const bool edge = any_mask || k0 + BC > p.Tk ||
                      (p.causal && k0 + BC - 1 > q0 + p.causal_offset);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const int64_t j = k0 + nt * 8 + 2 * t + (e & 1);
        float pp = exp2f(s[nt][e] * p.scale_log2 - lse2[r]);
        if (edge && !Visible(p, b, rows[r], j)) pp = 0.0f;
        float ks = 1.0f;
        if (p.rate > 0.0f && pp != 0.0f) ks = KeepScale(p, b, h, rows[r], j);
        s[nt][e] = pp * (dp[nt][e] * ks - del[r]);
      }
    }
    // dq += dS K.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      const uint32_t a0 = PackF2<kBf16>(s[2 * kk][0], s[2 * kk][1]);
      const uint32_t a1 = PackF2<kBf16>(s[2 * kk][2], s[2 * kk][3]);
      const uint32_t a2 = PackF2<kBf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const uint32_t a3 = PackF2<kBf16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const uint16_t* kb = sK + (16 * kk + 2 * t) * LD + g;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        const uint32_t b0 = Ld2x16(kb + nd * 8, kb + LD + nd * 8);
        const uint32_t b1 = Ld2x16(kb + 8 * LD + nd * 8, kb + 9 * LD + nd * 8);
        Mma<kBf16>(dq[nd], a0, a1, a2, a3, b0, b1);
      }
    }
  }

#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = rows[e >> 1];
      const int64_t col = nd * 8 + 2 * t + (e & 1);
      if (row < p.Tq && col < p.D) {
        p.dq[((b * p.Tq + row) * p.Hq + h) * p.D + col] =
            FloatToBits<kBf16>(dq[nd][e] * p.scale);
      }
    }
  }
}

template <bool kBf16, int P>
__global__ void __launch_bounds__(128)
    MmaDkDvKernel(const KParams<uint16_t> p, const VecFlags vf) {
  constexpr int BC = 64, BR = MmaTiles<P>::kDkvBr, LD = MmaTiles<P>::kLd;
  constexpr int NQ = BR / 8, ND = P / 8, KS = P / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sV = sK + BC * LD;
  uint16_t* sQ = sV + BC * LD;
  uint16_t* sdO = sQ + BR * LD;
  float* sL = reinterpret_cast<float*>(sdO + BR * LD);
  float* sDel = sL + BR;
  const int64_t kt = blockIdx.x;
  const int64_t hk = p.head0 + blockIdx.y, b = p.batch0 + blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t k0 = kt * BC;
  const uint16_t* kg = p.k + (b * p.Tk * p.Hkv + hk) * p.D;
  const uint16_t* vg = p.v + (b * p.Tk * p.Hkv + hk) * p.Dv;
  LoadTile<BC, P, LD>(sK, kg, p.Hkv * p.D, k0, p.Tk, p.D, vf.k);
  LoadTile<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);

  const int64_t keys[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.0f;
  }
  int64_t q_first = 0;
  if (p.causal) q_first = max(static_cast<int64_t>(0), k0 - p.causal_offset);
  const int64_t n_qt = (p.Tq + BR - 1) / BR;
  const int64_t qt_first = q_first / BR;
  const bool any_mask = p.key_mask != nullptr || p.mask != nullptr;
  const uint16_t* ka = sK + (warp * 16 + g) * LD + 2 * t;
  const uint16_t* va = sV + (warp * 16 + g) * LD + 2 * t;

  for (int64_t hh = 0; hh < p.group; ++hh) {
    const int64_t h = hk * p.group + hh;
    const uint16_t* qg = p.q + (b * p.Tq * p.Hq + h) * p.D;
    const uint16_t* dog = p.d_o + (b * p.Tq * p.Hq + h) * p.Dv;
    const float* lse_h = p.lse_in + (b * p.Hq + h) * p.Tq;
    const float* del_h = p.delta + (b * p.Hq + h) * p.Tq;
    for (int64_t qt = qt_first; qt < n_qt; ++qt) {
      const int64_t q0 = qt * BR;
      __syncthreads();
      LoadTile<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);
      LoadTile<BR, P, LD>(sdO, dog, p.Hq * p.Dv, q0, p.Tq, p.Dv, vf.d_o);
      for (int i = threadIdx.x; i < BR; i += blockDim.x) {
        const bool in = q0 + i < p.Tq;
        sL[i] = in ? lse_h[q0 + i] * kLog2e : INFINITY;
        sDel[i] = in ? del_h[q0 + i] : 0.0f;
      }
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T: rows are keys, columns queries.
      float st[NQ][4], dpt[NQ][4];
#pragma unroll
      for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nq][e] = dpt[nq][e] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const uint32_t a0 = Ld32(ka + ks * 16);
        const uint32_t a1 = Ld32(ka + 8 * LD + ks * 16);
        const uint32_t a2 = Ld32(ka + ks * 16 + 8);
        const uint32_t a3 = Ld32(ka + 8 * LD + ks * 16 + 8);
        const uint32_t c0 = Ld32(va + ks * 16);
        const uint32_t c1 = Ld32(va + 8 * LD + ks * 16);
        const uint32_t c2 = Ld32(va + ks * 16 + 8);
        const uint32_t c3 = Ld32(va + 8 * LD + ks * 16 + 8);
#pragma unroll
        for (int nq = 0; nq < NQ; ++nq) {
          const uint16_t* qb = sQ + (nq * 8 + g) * LD + ks * 16 + 2 * t;
          Mma<kBf16>(st[nq], a0, a1, a2, a3, Ld32(qb), Ld32(qb + 8));
          const uint16_t* db = sdO + (nq * 8 + g) * LD + ks * 16 + 2 * t;
          Mma<kBf16>(dpt[nq], c0, c1, c2, c3, Ld32(db), Ld32(db + 8));
        }
      }
      const bool edge = any_mask || q0 + BR > p.Tq || k0 + BC > p.Tk ||
                        (p.causal && k0 + BC - 1 > q0 + p.causal_offset);
#pragma unroll
      for (int nq = 0; nq < NQ; ++nq) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = nq * 8 + 2 * t + (e & 1);
          const int64_t key = keys[e >> 1], qi = q0 + c;
          float pp = exp2f(st[nq][e] * p.scale_log2 - sL[c]);
          if (edge && !Visible(p, b, qi, key)) pp = 0.0f;
          float ks = 1.0f;
          if (p.rate > 0.0f && pp != 0.0f) ks = KeepScale(p, b, h, qi, key);
          st[nq][e] = pp * ks;
          dpt[nq][e] = pp * (dpt[nq][e] * ks - sDel[c]);
        }
      }
      // dV += P_drop^T dO, dK += dS^T Q: k runs over the tile's queries.
#pragma unroll
      for (int kq = 0; kq < BR / 16; ++kq) {
        const uint32_t p0 = PackF2<kBf16>(st[2 * kq][0], st[2 * kq][1]);
        const uint32_t p1 = PackF2<kBf16>(st[2 * kq][2], st[2 * kq][3]);
        const uint32_t p2 = PackF2<kBf16>(st[2 * kq + 1][0], st[2 * kq + 1][1]);
        const uint32_t p3 = PackF2<kBf16>(st[2 * kq + 1][2], st[2 * kq + 1][3]);
        const uint32_t s0 = PackF2<kBf16>(dpt[2 * kq][0], dpt[2 * kq][1]);
        const uint32_t s1 = PackF2<kBf16>(dpt[2 * kq][2], dpt[2 * kq][3]);
        const uint32_t s2 =
            PackF2<kBf16>(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]);
        const uint32_t s3 =
            PackF2<kBf16>(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3]);
        const uint16_t* db = sdO + (16 * kq + 2 * t) * LD + g;
        const uint16_t* qb = sQ + (16 * kq + 2 * t) * LD + g;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
          Mma<kBf16>(dv[nd], p0, p1, p2, p3,
                     Ld2x16(db + nd * 8, db + LD + nd * 8),
                     Ld2x16(db + 8 * LD + nd * 8, db + 9 * LD + nd * 8));
          Mma<kBf16>(dk[nd], s0, s1, s2, s3,
                     Ld2x16(qb + nd * 8, qb + LD + nd * 8),
                     Ld2x16(qb + 8 * LD + nd * 8, qb + 9 * LD + nd * 8));
        }
      }
    }
  }

#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t key = keys[e >> 1];
      const int64_t col = nd * 8 + 2 * t + (e & 1);
      if (key < p.Tk && col < p.D) {
        p.dk[((b * p.Tk + key) * p.Hkv + hk) * p.D + col] =
            FloatToBits<kBf16>(dk[nd][e] * p.scale);
      }
      if (key < p.Tk && col < p.Dv) {
        p.dv[((b * p.Tk + key) * p.Hkv + hk) * p.Dv + col] =
            FloatToBits<kBf16>(dv[nd][e]);
      }
    }
  }
}

}  // namespace attn
}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_CUH_
