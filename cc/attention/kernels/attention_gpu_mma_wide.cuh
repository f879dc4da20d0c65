// The "wide" forward kernel: as MmaForwardFastKernel, but each warp owns 32
// query rows (two m16 tiles, a block 128 rows), so every K / V fragment read
// from shared memory feeds two mma instructions (FlashAttention-2's tiling
// for head dims 64 and 128). Q is read from shared memory (no room left in
// registers). AttentionParams::variant 3.
#ifndef KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_WIDE_CUH_
#define KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_WIDE_CUH_

#include "cc/attention/kernels/attention_gpu_common.cuh"

namespace kbm {
namespace gpu {
namespace attn {

template <int P>
struct WideTiles {
  static constexpr int kBr = 128;
  static constexpr int kBc = P <= 64 ? 64 : 32;
  static constexpr int kLd = P + 8;
  static constexpr size_t Smem() {
    return static_cast<size_t>(kBr + 2 * kBc) * kLd * 2;
  }
};

template <bool kBf16, int P>
__global__ void __launch_bounds__(128)
    MmaForwardWideKernel(const KParams<uint16_t> p, const VecFlags vf) {
  constexpr int BR = WideTiles<P>::kBr, BC = WideTiles<P>::kBc;
  constexpr int LD = WideTiles<P>::kLd;
  constexpr int NT = BC / 8, ND = P / 8, KS = P / 16, MT = 2;
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
  LoadTileAsync<BR, P, LD>(sQ, qg, p.Hq * p.D, q0, p.Tq, p.D, vf.q);

  // Rows of m-tile mt: warp * 32 + mt * 16 + g (+ 8).
  float o[MT][ND][4];
  float m[MT][2], l[MT][2];
  int64_t rows[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.0f;
    }
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
    rows[mt][0] = q0 + warp * 32 + mt * 16 + g;
    rows[mt][1] = rows[mt][0] + 8;
  }
  int64_t kend = p.Tk;
  if (p.causal) kend = min(kend, q0 + BR + p.causal_offset);
  const int64_t n_kt = kend > 0 ? (kend + BC - 1) / BC : 0;
  const bool any_mask = p.key_mask != nullptr || p.mask != nullptr;
  if (n_kt > 0) {
    LoadTileAsync<BC, P, LD>(sK, kg, p.Hkv * p.D, 0, p.Tk, p.D, vf.k);
  }
  CpAsyncCommit();

  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BC;
    // K(kt) (and Q) have landed; every warp is done with V(kt - 1).
    CpAsyncWaitAll();
    __syncthreads();
    LoadTileAsync<BC, P, LD>(sV, vg, p.Hkv * p.Dv, k0, p.Tk, p.Dv, vf.v);
    CpAsyncCommit();

    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
      }
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        FragA<LD>(a[mt], sQ, warp * 32 + mt * 16, ks * 16);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bb[4];
        FragBNK<LD>(bb, sK, np * 16, ks * 16);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<kBf16>(s[mt][2 * np], a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                     bb[0], bb[1]);
          Mma<kBf16>(s[mt][2 * np + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                     bb[2], bb[3]);
        }
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
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][nt][e] * p.scale_log2;
          if (edge &&
              !Visible(p, b, rows[mt][e >> 1], k0 + nt * 8 + 2 * t + (e & 1))) {
            x = -INFINITY;
          }
          s[mt][nt][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
      }
      float base[2], alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m_new = fmaxf(m[mt][r], QuadMax(mx[r]));
        base[r] = m_new == -INFINITY ? 0.0f : m_new;
        alpha[r] = exp2f(m[mt][r] - base[r]);
        m[mt][r] = m_new;
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pv = exp2f(s[mt][nt][e] - base[e >> 1]);
          rs[e >> 1] += pv;
          s[mt][nt][e] = pv;
        }
      }
      l[mt][0] = l[mt][0] * alpha[0] + rs[0];
      l[mt][1] = l[mt][1] * alpha[1] + rs[1];
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        o[mt][nd][0] *= alpha[0];
        o[mt][nd][1] *= alpha[0];
        o[mt][nd][2] *= alpha[1];
        o[mt][nd][3] *= alpha[1];
      }
      if (p.rate > 0.0f) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t row = rows[mt][e >> 1];
            if (s[mt][nt][e] != 0.0f && row < p.Tq) {
              s[mt][nt][e] *=
                  KeepScale(p, b, h, row, k0 + nt * 8 + 2 * t + (e & 1));
            }
          }
        }
      }
    }
    // o += P V.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = PackF2<kBf16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = PackF2<kBf16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = PackF2<kBf16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = PackF2<kBf16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t bb[4];
        FragBKN<LD>(bb, sV, kk * 16, np * 16);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<kBf16>(o[mt][2 * np], a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                     bb[0], bb[1]);
          Mma<kBf16>(o[mt][2 * np + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                     bb[2], bb[3]);
        }
      }
    }
  }

  CpAsyncWaitAll();  // no copy may be in flight at exit
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float lt = QuadSum(l[mt][r]);
      inv[r] = lt > 0.0f ? 1.0f / lt : 0.0f;
      const int64_t row = rows[mt][r];
      if (t == 0 && row < p.Tq) {
        p.lse_out[(b * p.Hq + h) * p.Tq + row] =
            lt > 0.0f ? (m[mt][r] + log2f(lt)) * kLn2 : INFINITY;
      }
    }
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = rows[mt][e >> 1];
        const int64_t col = nd * 8 + 2 * t + (e & 1);
        if (row < p.Tq && col < p.Dv) {
          p.out[((b * p.Tq + row) * p.Hq + h) * p.Dv + col] =
              FloatToBits<kBf16>(o[mt][nd][e] * inv[e >> 1]);
        }
      }
    }
  }
}

}  // namespace attn
}  // namespace gpu
}  // namespace kbm

#endif  // KERAS_BIGMODELS_CC_ATTENTION_KERNELS_ATTENTION_GPU_MMA_WIDE_CUH_
