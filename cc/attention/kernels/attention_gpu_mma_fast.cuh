// The "fast" variant of the tensor-core kernels of attention_gpu_mma.cuh:
// the same tiles and arithmetic, with fragments loaded by ldmatrix (.trans
// for the [k][n] operands V, K, dO, Q), global -> shared copies by cp.async,
// and in the forward pass Q held in registers (head dims <= 128) and V(kt)
// loaded while S = Q K(kt)^T runs, K(kt + 1) while P V(kt) runs. The plain
// kernels stay as a cross-check (AttentionParams::variant = 1).
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_FAST_CUH_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_FAST_CUH_

#include "cc/attention/kernels/attention_gpu_mma.cuh"
#include "cc/attention/kernels/attention_gpu_mma_pipe.cuh"
#include "cc/attention/kernels/attention_gpu_mma_wide.cuh"

namespace kbm {
namespace gpu {
namespace attn {

template <bool kBf16, int P>
__global__ void __launch_bounds__(128)
    MmaForwardFastKernel(const KParams<uint16_t> p, const VecFlags vf) {
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
  constexpr bool kQReg = P <= 128;  // Q fragments held in registers
  LoadTileAsync<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);

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
  if (n_kt > 0) {
    LoadTileAsync<BC, P, LD>(sK, kg, p.Hkv * p.D, 0, p.Tk, p.D, vf.k);
  }
  CpAsyncCommit();
  uint32_t qf[kQReg ? KS : 1][4];

  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BC;
    // K(kt) (and Q) have landed; every warp is done with V(kt - 1).
    CpAsyncWaitAll();
    __syncthreads();
    if (kQReg && kt == 0) {
#pragma unroll
      for (int ks = 0; ks < (kQReg ? KS : 1); ++ks) {
        FragA<LD>(qf[ks], sQ, warp * 16, ks * 16);
      }
    }
    LoadTileAsync<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);
    CpAsyncCommit();

    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[4];
      if constexpr (kQReg) {
        a[0] = qf[ks][0];
        a[1] = qf[ks][1];
        a[2] = qf[ks][2];
        a[3] = qf[ks][3];
      } else {
        FragA<LD>(a, sQ, warp * 16, ks * 16);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bb[4];
        FragBNK<LD>(bb, sK, np * 16, ks * 16);
        Mma<kBf16>(s[2 * np], a[0], a[1], a[2], a[3], bb[0], bb[1]);
        Mma<kBf16>(s[2 * np + 1], a[0], a[1], a[2], a[3], bb[2], bb[3]);
      }
    }
    // V(kt) has landed; every warp is done with K(kt): prefetch K(kt + 1).
    CpAsyncWaitAll();
    __syncthreads();
    if (kt + 1 < n_kt) {
      LoadTileAsync<BC, P, LD>(sK, kg, p.Hkv * p.D, k0 + BC, p.Tk, p.D, vf.k);
    }
    CpAsyncCommit();

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
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        FragBKN<LD>(bb, sV, kk * 16, np * 16);
        Mma<kBf16>(o[2 * np], a0, a1, a2, a3, bb[0], bb[1]);
        Mma<kBf16>(o[2 * np + 1], a0, a1, a2, a3, bb[2], bb[3]);
      }
    }
  }

  CpAsyncWaitAll();  // no copy may be in flight at exit
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
    MmaDqFastKernel(const KParams<uint16_t> p, const VecFlags vf) {
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
  LoadTileAsync<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);
  LoadTileAsync<BR, P, LD>(sdO, dog, p.Hq * p.Dv, q0, p.Tq, p.Dv, vf.d_o);
  CpAsyncCommit();

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

  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BC;
    __syncthreads();
    LoadTileAsync<BC, P, LD>(sK, kg, p.Hkv * p.D, k0, p.Tk, p.D, vf.k);
    LoadTileAsync<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);
    CpAsyncCommit();
    CpAsyncWaitAll();
    __syncthreads();

    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[4], d[4];
      FragA<LD>(a, sQ, warp * 16, ks * 16);
      FragA<LD>(d, sdO, warp * 16, ks * 16);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bk[4], bv[4];
        FragBNK<LD>(bk, sK, np * 16, ks * 16);
        FragBNK<LD>(bv, sV, np * 16, ks * 16);
        Mma<kBf16>(s[2 * np], a[0], a[1], a[2], a[3], bk[0], bk[1]);
        Mma<kBf16>(s[2 * np + 1], a[0], a[1], a[2], a[3], bk[2], bk[3]);
        Mma<kBf16>(dp[2 * np], d[0], d[1], d[2], d[3], bv[0], bv[1]);
        Mma<kBf16>(dp[2 * np + 1], d[0], d[1], d[2], d[3], bv[2], bv[3]);
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
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        FragBKN<LD>(bb, sK, kk * 16, np * 16);
        Mma<kBf16>(dq[2 * np], a0, a1, a2, a3, bb[0], bb[1]);
        Mma<kBf16>(dq[2 * np + 1], a0, a1, a2, a3, bb[2], bb[3]);
      }
    }
  }

  CpAsyncWaitAll();
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
    MmaDkDvFastKernel(const KParams<uint16_t> p, const VecFlags vf) {
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
  LoadTileAsync<BC, P, LD>(sK, kg, p.Hkv * p.D, k0, p.Tk, p.D, vf.k);
  LoadTileAsync<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);
  CpAsyncCommit();

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

  for (int64_t hh = 0; hh < p.group; ++hh) {
    const int64_t h = hk * p.group + hh;
    const uint16_t* qg = p.q + (b * p.Tq * p.Hq + h) * p.D;
    const uint16_t* dog = p.d_o + (b * p.Tq * p.Hq + h) * p.Dv;
    const float* lse_h = p.lse_in + (b * p.Hq + h) * p.Tq;
    const float* del_h = p.delta + (b * p.Hq + h) * p.Tq;
    for (int64_t qt = qt_first; qt < n_qt; ++qt) {
      const int64_t q0 = qt * BR;
      __syncthreads();
      LoadTileAsync<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);
      LoadTileAsync<BR, P, LD>(sdO, dog, p.Hq * p.Dv, q0, p.Tq, p.Dv, vf.d_o);
      CpAsyncCommit();
      for (int i = threadIdx.x; i < BR; i += blockDim.x) {
        const bool in = q0 + i < p.Tq;
        sL[i] = in ? lse_h[q0 + i] * kLog2e : INFINITY;
        sDel[i] = in ? del_h[q0 + i] : 0.0f;
      }
      CpAsyncWaitAll();
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
        uint32_t a[4], c[4];
        FragA<LD>(a, sK, warp * 16, ks * 16);
        FragA<LD>(c, sV, warp * 16, ks * 16);
#pragma unroll
        for (int np = 0; np < NQ / 2; ++np) {
          uint32_t bq[4], bd[4];
          FragBNK<LD>(bq, sQ, np * 16, ks * 16);
          FragBNK<LD>(bd, sdO, np * 16, ks * 16);
          Mma<kBf16>(st[2 * np], a[0], a[1], a[2], a[3], bq[0], bq[1]);
          Mma<kBf16>(st[2 * np + 1], a[0], a[1], a[2], a[3], bq[2], bq[3]);
          Mma<kBf16>(dpt[2 * np], c[0], c[1], c[2], c[3], bd[0], bd[1]);
          Mma<kBf16>(dpt[2 * np + 1], c[0], c[1], c[2], c[3], bd[2], bd[3]);
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
#pragma unroll
        for (int np = 0; np < ND / 2; ++np) {
          uint32_t bd[4], bq[4];
          FragBKN<LD>(bd, sdO, kq * 16, np * 16);
          FragBKN<LD>(bq, sQ, kq * 16, np * 16);
          Mma<kBf16>(dv[2 * np], p0, p1, p2, p3, bd[0], bd[1]);
          Mma<kBf16>(dv[2 * np + 1], p0, p1, p2, p3, bd[2], bd[3]);
          Mma<kBf16>(dk[2 * np], s0, s1, s2, s3, bq[0], bq[1]);
          Mma<kBf16>(dk[2 * np + 1], s0, s1, s2, s3, bq[2], bq[3]);
        }
      }
    }
  }

  CpAsyncWaitAll();
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

// Kernel selector for one 16-bit type: 0 forward, 1 dQ, 2 dK/dV.
template <typename Kernel>
int LaunchWithSmem(Kernel kernel, dim3 grid, size_t smem,
                   const KParams<uint16_t>& p, const VecFlags& vf,
                   cudaStream_t stream) {
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, dim3(128), smem, stream>>>(p, vf);
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

// The variant that variant 0 (the default) runs, per kernel kind.
constexpr int kDefaultVariant[3] = {2, 2, 2};  // forward, dQ, dK/dV

template <bool kBf16, int P>
int LaunchMmaKind(int kind, int variant, const KParams<uint16_t>& p,
                  const VecFlags& vf, cudaStream_t stream) {
  using Tiles = MmaTiles<P>;
  if (variant == 0) variant = kDefaultVariant[kind];
  const bool fast = variant != 1;
  const dim3 q_grid(static_cast<unsigned>((p.Tq + 63) / 64), p.grid_heads,
                    p.grid_batch);
  const dim3 k_grid(static_cast<unsigned>((p.Tk + 63) / 64), p.grid_heads,
                    p.grid_batch);
  if constexpr (P == 64 || P == 128) {
    if (variant == 4 && kind == 1) {
      return LaunchWithSmem(MmaDqPipeKernel<kBf16, P>, q_grid,
                            PipeTiles<P>::DqSmem(), p, vf, stream);
    }
    if (variant == 4 && kind == 2) {
      return LaunchWithSmem(MmaDkDvPipeKernel<kBf16, P>, k_grid,
                            PipeTiles<P>::DkvSmem(), p, vf, stream);
    }
    if (kind == 0 && (variant == 3 || variant == 4)) {
      const dim3 grid(static_cast<unsigned>((p.Tq + WideTiles<P>::kBr - 1) /
                                            WideTiles<P>::kBr),
                      p.grid_heads, p.grid_batch);
      return LaunchWithSmem(MmaForwardWideKernel<kBf16, P>, grid,
                            WideTiles<P>::Smem(), p, vf, stream);
    }
  }
  if (kind == 0) {
    return fast ? LaunchWithSmem(MmaForwardFastKernel<kBf16, P>, q_grid,
                                 Tiles::FwdSmem(), p, vf, stream)
                : LaunchWithSmem(MmaForwardKernel<kBf16, P>, q_grid,
                                 Tiles::FwdSmem(), p, vf, stream);
  }
  if (kind == 1) {
    return fast ? LaunchWithSmem(MmaDqFastKernel<kBf16, P>, q_grid,
                                 Tiles::DqSmem(), p, vf, stream)
                : LaunchWithSmem(MmaDqKernel<kBf16, P>, q_grid, Tiles::DqSmem(),
                                 p, vf, stream);
  }
  return fast ? LaunchWithSmem(MmaDkDvFastKernel<kBf16, P>, k_grid,
                               Tiles::DkvSmem(), p, vf, stream)
              : LaunchWithSmem(MmaDkDvKernel<kBf16, P>, k_grid,
                               Tiles::DkvSmem(), p, vf, stream);
}

// Dispatches on the padded head dim `pad` (32, 64, 96, 128 or 256).
// variant (AttentionParams::variant): 1 the plain kernels, 2 the fast ones,
// 3 the fast ones with the wide forward kernel for head dims 64 and 128,
// 4 as 3 with the double-buffered backward kernels (head dims 64, 128);
// 0 the default.
template <bool kBf16>
int LaunchMma(int kind, int pad, int variant, const KParams<uint16_t>& p,
              const VecFlags& vf, cudaStream_t stream) {
  switch (pad) {
    case 32:
      return LaunchMmaKind<kBf16, 32>(kind, variant, p, vf, stream);
    case 64:
      return LaunchMmaKind<kBf16, 64>(kind, variant, p, vf, stream);
    case 96:
      return LaunchMmaKind<kBf16, 96>(kind, variant, p, vf, stream);
    case 128:
      return LaunchMmaKind<kBf16, 128>(kind, variant, p, vf, stream);
    case 256:
      return LaunchMmaKind<kBf16, 256>(kind, variant, p, vf, stream);
    default:
      return kErrorUnsupported;
  }
}

}  // namespace attn
}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_FAST_CUH_
