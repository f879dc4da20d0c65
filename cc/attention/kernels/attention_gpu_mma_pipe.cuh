// Backward kernels with double-buffered shared memory: as the fast dQ and
// dK/dV kernels, but the next K/V tile (dQ) or the next Q/dO tile (dK/dV)
// is copied by cp.async while the current one computes. Head dims 64 and 128;
// AttentionParams::variant 4.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_PIPE_CUH_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_PIPE_CUH_

#include "cc/attention/kernels/attention_gpu_mma.cuh"

namespace kbm {
namespace gpu {
namespace attn {

template <int P>
struct PipeTiles {
  static constexpr int kLd = MmaTiles<P>::kLd;
  static constexpr int kDqBc = MmaTiles<P>::kDqBc;
  static constexpr int kDkvBr = MmaTiles<P>::kDkvBr;
  static constexpr size_t DqSmem() {
    return static_cast<size_t>(2 * 64 + 4 * kDqBc) * kLd * 2;
  }
  static constexpr size_t DkvSmem() {
    return static_cast<size_t>(2 * 64 * kLd +
                               2 * (2 * kDkvBr * kLd + 4 * kDkvBr)) *
           2;
  }
};

template <bool kBf16, int P>
__global__ void __launch_bounds__(128)
    MmaDqPipeKernel(const KParams<uint16_t> p, const VecFlags vf) {
  constexpr int BR = 64, BC = MmaTiles<P>::kDqBc, LD = MmaTiles<P>::kLd;
  constexpr int NT = BC / 8, ND = P / 8, KS = P / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sdO = sQ + BR * LD;
  // Two stages of K, V: stage s at sKV + s * 2 * BC * LD.
  uint16_t* sKV = sdO + BR * LD;
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

  auto load_kv = [&](int64_t kt, int stage) {
    uint16_t* dk_ = sKV + stage * 2 * BC * LD;
    LoadTileAsync<BC, P, LD>(dk_, kg, p.Hkv * p.D, kt * BC, p.Tk, p.D, vf.k);
    LoadTileAsync<BC, P, LD>(dk_ + BC * LD, vg, p.Hkv * p.Dv, kt * BC, p.Tk,
                             p.Dv, vf.v);
  };
  if (n_kt > 0) load_kv(0, 0);
  CpAsyncCommit();
  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BC;
    const int cur = static_cast<int>(kt & 1);
    // K, V (kt) have landed; every warp is done with stage cur ^ 1.
    CpAsyncWaitAll();
    __syncthreads();
    if (kt + 1 < n_kt) load_kv(kt + 1, cur ^ 1);
    CpAsyncCommit();
    const uint16_t* sK = sKV + cur * 2 * BC * LD;
    const uint16_t* sV = sK + BC * LD;

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
    MmaDkDvPipeKernel(const KParams<uint16_t> p, const VecFlags vf) {
  constexpr int BC = 64, BR = MmaTiles<P>::kDkvBr, LD = MmaTiles<P>::kLd;
  constexpr int NQ = BR / 8, ND = P / 8, KS = P / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sV = sK + BC * LD;
  // Two stages of {Q, dO, lse, delta}, kStage 16-bit elements each.
  constexpr int kStage = 2 * BR * LD + 4 * BR;
  uint16_t* sStages = sV + BC * LD;
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

  // Tiles it = 0 .. total - 1 run over (query head of the group, query
  // tile); tile it + 1 loads while tile it computes.
  const int64_t per_head = n_qt > qt_first ? n_qt - qt_first : 0;
  const int64_t total = p.group * per_head;
  auto load_q = [&](int64_t it, int stage) {
    const int64_t h = hk * p.group + it / per_head;
    const int64_t q0 = (qt_first + it % per_head) * BR;
    uint16_t* sq_ = sStages + stage * kStage;
    uint16_t* sdo_ = sq_ + BR * LD;
    float* sl_ = reinterpret_cast<float*>(sdo_ + BR * LD);
    float* sdel_ = sl_ + BR;
    LoadTileAsync<BR, P, LD>(sq_, p.q + (b * p.Tq * p.Hq + h) * p.D, p.Hq * p.D,
                             q0, p.Tq, p.D, vf.q);
    LoadTileAsync<BR, P, LD>(sdo_, p.d_o + (b * p.Tq * p.Hq + h) * p.Dv,
                             p.Hq * p.Dv, q0, p.Tq, p.Dv, vf.d_o);
    const float* lse_h = p.lse_in + (b * p.Hq + h) * p.Tq;
    const float* del_h = p.delta + (b * p.Hq + h) * p.Tq;
    for (int i = threadIdx.x; i < BR; i += blockDim.x) {
      const bool in = q0 + i < p.Tq;
      sl_[i] = in ? lse_h[q0 + i] * kLog2e : INFINITY;
      sdel_[i] = in ? del_h[q0 + i] : 0.0f;
    }
  };
  if (total > 0) load_q(0, 0);
  CpAsyncCommit();
  {
    for (int64_t it = 0; it < total; ++it) {
      const int cur = static_cast<int>(it & 1);
      const int64_t h = hk * p.group + it / per_head;
      const int64_t q0 = (qt_first + it % per_head) * BR;
      // Tile it (and K, V) have landed; every warp is done with stage
      // cur ^ 1.
      CpAsyncWaitAll();
      __syncthreads();
      if (it + 1 < total) load_q(it + 1, cur ^ 1);
      CpAsyncCommit();
      const uint16_t* sQ = sStages + cur * kStage;
      const uint16_t* sdO = sQ + BR * LD;
      const float* sL = reinterpret_cast<const float*>(sdO + BR * LD);
      const float* sDel = sL + BR;

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

}  // namespace attn
}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_PIPE_CUH_
