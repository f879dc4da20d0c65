// CUDA flash attention: launchers, float32 SIMT kernels, the backward
// preprocess (rowsum(dO * O)) and the dropout-mask kernel. The float16 /
// bfloat16 tensor-core kernels are in attention_gpu_mma.cuh, compiled once per
// type (attention_f16_gpu.cu.cc, attention_bf16_gpu.cu.cc).
//
// float32 kernels: one warp per query row (forward, dQ) or key row (dK/dV).
// Each lane scores one key (query) of a chunk of 32, the chunk's softmax
// statistics come from warp reductions, and the weighted rows are summed with
// lanes over the head dim. Slower than the tensor-core path, exact in fp32.
#include "cc/attention/kernels/attention_gpu.h"

#include <algorithm>
#include <type_traits>

#include "cc/attention/kernels/attention_gpu_common.cuh"

namespace kbm {
namespace gpu {
namespace attn {
namespace {

template <int DPL>
__global__ void __launch_bounds__(128)
    SimtForwardKernel(const KParams<float> p) {
  constexpr int P = DPL * 32;
  __shared__ float sq[4][P];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 4 + warp;
  const int64_t h = p.head0 + blockIdx.y, b = p.batch0 + blockIdx.z,
                hk = h / p.group;
  if (i >= p.Tq) return;
  const float* qrow = p.q + ((b * p.Tq + i) * p.Hq + h) * p.D;
  for (int d = lane; d < P; d += 32) sq[warp][d] = d < p.D ? qrow[d] : 0.0f;
  __syncwarp();
  float o[DPL];
#pragma unroll
  for (int u = 0; u < DPL; ++u) o[u] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  int64_t kend = p.Tk;
  if (p.causal) kend = min(kend, i + p.causal_offset + 1);
  for (int64_t j0 = 0; j0 < kend; j0 += 32) {
    const int64_t j = j0 + lane;
    float x = -INFINITY;
    if (j < kend && Visible(p, b, i, j)) {
      const float* kr = p.k + ((b * p.Tk + j) * p.Hkv + hk) * p.D;
      float dot = 0.0f;
      for (int64_t d = 0; d < p.D; ++d) dot += sq[warp][d] * kr[d];
      x = dot * p.scale_log2;
    }
    const float m_new = fmaxf(m, WarpMax(x));
    const float base = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m - base);
    m = m_new;
    const float pv = exp2f(x - base);
    l = l * alpha + WarpSum(pv);
#pragma unroll
    for (int u = 0; u < DPL; ++u) o[u] *= alpha;
    float pd = pv;
    if (p.rate > 0.0f && pv != 0.0f) pd *= KeepScale(p, b, h, i, j);
    for (int jj = 0; jj < 32; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, pd, jj);
      if (pj != 0.0f) {
        const float* vr = p.v + ((b * p.Tk + j0 + jj) * p.Hkv + hk) * p.Dv;
#pragma unroll
        for (int u = 0; u < DPL; ++u) {
          const int d = lane + 32 * u;
          if (d < p.Dv) o[u] += pj * vr[d];
        }
      }
    }
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  float* orow = p.out + ((b * p.Tq + i) * p.Hq + h) * p.Dv;
#pragma unroll
  for (int u = 0; u < DPL; ++u) {
    const int d = lane + 32 * u;
    if (d < p.Dv) orow[d] = o[u] * inv;
  }
  if (lane == 0) {
    p.lse_out[(b * p.Hq + h) * p.Tq + i] =
        l > 0.0f ? (m + log2f(l)) * kLn2 : INFINITY;
  }
}

template <int DPL>
__global__ void __launch_bounds__(128) SimtDqKernel(const KParams<float> p) {
  constexpr int P = DPL * 32;
  __shared__ float sq[4][P];
  __shared__ float sdo[4][P];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 4 + warp;
  const int64_t h = p.head0 + blockIdx.y, b = p.batch0 + blockIdx.z,
                hk = h / p.group;
  if (i >= p.Tq) return;
  const float* qrow = p.q + ((b * p.Tq + i) * p.Hq + h) * p.D;
  const float* dorow = p.d_o + ((b * p.Tq + i) * p.Hq + h) * p.Dv;
  for (int d = lane; d < P; d += 32) {
    sq[warp][d] = d < p.D ? qrow[d] : 0.0f;
    sdo[warp][d] = d < p.Dv ? dorow[d] : 0.0f;
  }
  __syncwarp();
  const int64_t idx = (b * p.Hq + h) * p.Tq + i;
  const float lse2 = p.lse_in[idx] * kLog2e;
  const float del = p.delta[idx];
  float dq[DPL];
#pragma unroll
  for (int u = 0; u < DPL; ++u) dq[u] = 0.0f;
  int64_t kend = p.Tk;
  if (p.causal) kend = min(kend, i + p.causal_offset + 1);
  for (int64_t j0 = 0; j0 < kend; j0 += 32) {
    const int64_t j = j0 + lane;
    float ds = 0.0f;
    if (j < kend && Visible(p, b, i, j)) {
      const float* kr = p.k + ((b * p.Tk + j) * p.Hkv + hk) * p.D;
      const float* vr = p.v + ((b * p.Tk + j) * p.Hkv + hk) * p.Dv;
      float s = 0.0f, dp = 0.0f;
      for (int64_t d = 0; d < p.D; ++d) s += sq[warp][d] * kr[d];
      for (int64_t d = 0; d < p.Dv; ++d) dp += sdo[warp][d] * vr[d];
      const float pp = exp2f(s * p.scale_log2 - lse2);
      const float ks = pp != 0.0f ? KeepScale(p, b, h, i, j) : 1.0f;
      ds = pp * (dp * ks - del);
    }
    for (int jj = 0; jj < 32; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      if (dsj != 0.0f) {
        const float* kr = p.k + ((b * p.Tk + j0 + jj) * p.Hkv + hk) * p.D;
#pragma unroll
        for (int u = 0; u < DPL; ++u) {
          const int d = lane + 32 * u;
          if (d < p.D) dq[u] += dsj * kr[d];
        }
      }
    }
  }
  float* dqrow = p.dq + ((b * p.Tq + i) * p.Hq + h) * p.D;
#pragma unroll
  for (int u = 0; u < DPL; ++u) {
    const int d = lane + 32 * u;
    if (d < p.D) dqrow[d] = dq[u] * p.scale;
  }
}

template <int DPL>
__global__ void __launch_bounds__(128) SimtDkDvKernel(const KParams<float> p) {
  constexpr int P = DPL * 32;
  __shared__ float sk[4][P];
  __shared__ float sv[4][P];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 4 + warp;
  const int64_t hk = p.head0 + blockIdx.y, b = p.batch0 + blockIdx.z;
  if (j >= p.Tk) return;
  const float* krow = p.k + ((b * p.Tk + j) * p.Hkv + hk) * p.D;
  const float* vrow = p.v + ((b * p.Tk + j) * p.Hkv + hk) * p.Dv;
  for (int d = lane; d < P; d += 32) {
    sk[warp][d] = d < p.D ? krow[d] : 0.0f;
    sv[warp][d] = d < p.Dv ? vrow[d] : 0.0f;
  }
  __syncwarp();
  float dk[DPL], dv[DPL];
#pragma unroll
  for (int u = 0; u < DPL; ++u) dk[u] = dv[u] = 0.0f;
  int64_t i_first = 0;
  if (p.causal) i_first = max(static_cast<int64_t>(0), j - p.causal_offset);
  for (int64_t hh = 0; hh < p.group; ++hh) {
    const int64_t h = hk * p.group + hh;
    for (int64_t i0 = i_first; i0 < p.Tq; i0 += 32) {
      const int64_t i = i0 + lane;
      float pd = 0.0f, ds = 0.0f;
      if (i < p.Tq && Visible(p, b, i, j)) {
        const float* qr = p.q + ((b * p.Tq + i) * p.Hq + h) * p.D;
        const float* dor = p.d_o + ((b * p.Tq + i) * p.Hq + h) * p.Dv;
        float s = 0.0f, dp = 0.0f;
        for (int64_t d = 0; d < p.D; ++d) s += qr[d] * sk[warp][d];
        for (int64_t d = 0; d < p.Dv; ++d) dp += dor[d] * sv[warp][d];
        const int64_t idx = (b * p.Hq + h) * p.Tq + i;
        const float pp = exp2f(s * p.scale_log2 - p.lse_in[idx] * kLog2e);
        const float ks = pp != 0.0f ? KeepScale(p, b, h, i, j) : 1.0f;
        pd = pp * ks;
        ds = pp * (dp * ks - p.delta[idx]);
      }
      for (int ii = 0; ii < 32; ++ii) {
        const float pdi = __shfl_sync(0xffffffffu, pd, ii);
        const float dsi = __shfl_sync(0xffffffffu, ds, ii);
        if (pdi != 0.0f || dsi != 0.0f) {
          const int64_t r = (b * p.Tq + i0 + ii) * p.Hq + h;
          const float* qr = p.q + r * p.D;
          const float* dor = p.d_o + r * p.Dv;
#pragma unroll
          for (int u = 0; u < DPL; ++u) {
            const int d = lane + 32 * u;
            if (d < p.Dv) dv[u] += pdi * dor[d];
            if (d < p.D) dk[u] += dsi * qr[d];
          }
        }
      }
    }
  }
  float* dkrow = p.dk + ((b * p.Tk + j) * p.Hkv + hk) * p.D;
  float* dvrow = p.dv + ((b * p.Tk + j) * p.Hkv + hk) * p.Dv;
#pragma unroll
  for (int u = 0; u < DPL; ++u) {
    const int d = lane + 32 * u;
    if (d < p.D) dkrow[d] = dk[u] * p.scale;
    if (d < p.Dv) dvrow[d] = dv[u];
  }
}

// delta[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]; one warp per row.
template <typename N>
__global__ void __launch_bounds__(256)
    DeltaKernel(const N* d_o, const N* o, float* delta, int64_t B, int64_t Tq,
                int64_t Hq, int64_t Dv) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = B * Tq * Hq;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) +
                   (threadIdx.x >> 5);
       r < rows; r += warps) {
    float sum = 0.0f;
    for (int64_t d = lane; d < Dv; d += 32) {
      sum += ToFloat(d_o[r * Dv + d]) * ToFloat(o[r * Dv + d]);
    }
    sum = WarpSum(sum);
    if (lane == 0) {
      const int64_t h = r % Hq, i = (r / Hq) % Tq, b = r / Hq / Tq;
      delta[(b * Hq + h) * Tq + i] = sum;
    }
  }
}

__global__ void DropoutMaskKernel(uint64_t seed0, uint64_t seed1, int64_t n,
                                  uint32_t threshold, bool* keep) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       f < n; f += stride) {
    keep[f] = kbm_philox::AttentionDropoutKeep(
        seed0, seed1, static_cast<uint64_t>(f), threshold);
  }
}

// The largest grid y and z dimension CUDA accepts.
constexpr int64_t kMaxGridYZ = 65535;

int ValidateParams(const AttentionParams& a) {
  if (a.batch < 0 || a.q_len < 0 || a.kv_len < 0 || a.q_heads < 0 ||
      a.kv_heads <= 0 || a.head_dim <= 0 || a.value_dim <= 0 ||
      a.q_heads % a.kv_heads != 0 || a.head_dim > kMaxAttentionHeadDim ||
      a.value_dim > kMaxAttentionHeadDim ||
      (a.mask_batch != 1 && a.mask_batch != a.batch) ||
      !(a.dropout_rate >= 0.0f && a.dropout_rate < 1.0f) || a.variant < 0 ||
      a.variant > 4) {
    return kErrorInvalidArgument;
  }
  return 0;
}

template <typename E>
KParams<E> MakeParams(const AttentionParams& a) {
  KParams<E> p{};
  p.B = a.batch;
  p.Tq = a.q_len;
  p.Tk = a.kv_len;
  p.Hq = a.q_heads;
  p.Hkv = a.kv_heads;
  p.D = a.head_dim;
  p.Dv = a.value_dim;
  p.mask_batch = a.mask_batch;
  p.group = a.q_heads / a.kv_heads;
  p.causal = a.causal;
  p.causal_offset = a.causal_top_left ? 0 : a.kv_len - a.q_len;
  p.scale = a.scale;
  p.scale_log2 = a.scale * kLog2e;
  p.rate = a.dropout_rate;
  p.threshold = kbm_philox::DropoutThreshold(a.dropout_rate);
  p.keep_scale = a.dropout_rate > 0.0f ? 1.0f / (1.0f - a.dropout_rate) : 1.0f;
  p.seed0 = a.seed0;
  p.seed1 = a.seed1;
  return p;
}

int PadDim(int64_t d) {
  if (d <= 32) return 32;
  if (d <= 64) return 64;
  if (d <= 96) return 96;
  if (d <= 128) return 128;
  return 256;
}

template <typename E>
bool Vec16(const E* ptr, int64_t cols) {
  return cols % 8 == 0 && IsAligned<uint16_t, 8>(ptr);
}

// One SIMT kernel for the float32 path. kind: 0 forward, 1 dQ, 2 dK/dV.
template <int DPL>
int LaunchSimtDpl(int kind, const KParams<float>& p, cudaStream_t stream) {
  const dim3 block(128);
  if (kind == 0) {
    const dim3 grid(static_cast<unsigned>((p.Tq + 3) / 4), p.grid_heads,
                    p.grid_batch);
    SimtForwardKernel<DPL><<<grid, block, 0, stream>>>(p);
  } else if (kind == 1) {
    const dim3 grid(static_cast<unsigned>((p.Tq + 3) / 4), p.grid_heads,
                    p.grid_batch);
    SimtDqKernel<DPL><<<grid, block, 0, stream>>>(p);
  } else {
    const dim3 grid(static_cast<unsigned>((p.Tk + 3) / 4), p.grid_heads,
                    p.grid_batch);
    SimtDkDvKernel<DPL><<<grid, block, 0, stream>>>(p);
  }
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

int LaunchSimt(int kind, const KParams<float>& p, cudaStream_t stream) {
  const int64_t d = p.D > p.Dv ? p.D : p.Dv;
  if (d <= 64) return LaunchSimtDpl<2>(kind, p, stream);
  if (d <= 128) return LaunchSimtDpl<4>(kind, p, stream);
  return LaunchSimtDpl<8>(kind, p, stream);
}

// Launches kernel `kind` for element type T over heads x batch, as several
// launches of at most kMaxGridYZ heads (grid y) and batch elements (grid z).
template <typename T, typename E>
int LaunchKind(int kind, int variant, const KParams<E>& p, const VecFlags& vf,
               cudaStream_t stream) {
  // Grids with a zero dimension launch nothing.
  if (p.B == 0 ||
      (kind == 2 ? p.Tk == 0 || p.Hkv == 0 : p.Tq == 0 || p.Hq == 0)) {
    return 0;
  }
  const int64_t heads = kind == 2 ? p.Hkv : p.Hq;
  for (int64_t b0 = 0; b0 < p.B; b0 += kMaxGridYZ) {
    for (int64_t h0 = 0; h0 < heads; h0 += kMaxGridYZ) {
      KParams<E> slice = p;
      slice.batch0 = b0;
      slice.head0 = h0;
      slice.grid_batch =
          static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, p.B - b0));
      slice.grid_heads =
          static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, heads - h0));
      int err;
      if constexpr (std::is_same_v<T, float>) {
        err = LaunchSimt(kind, slice, stream);
      } else {
        const int pad = PadDim(p.D > p.Dv ? p.D : p.Dv);
        if constexpr (std::is_same_v<T, BFloat16>) {
          err = LaunchMmaBf16(kind, pad, variant, slice, vf, stream);
        } else {
          err = LaunchMmaF16(kind, pad, variant, slice, vf, stream);
        }
      }
      if (err != 0) return err;
    }
  }
  return 0;
}

template <typename T>
using StoreT = std::conditional_t<std::is_same_v<T, float>, float, uint16_t>;

template <typename T>
const StoreT<T>* Raw(const T* p) {
  return reinterpret_cast<const StoreT<T>*>(p);
}
template <typename T>
StoreT<T>* Raw(T* p) {
  return reinterpret_cast<StoreT<T>*>(p);
}

}  // namespace
}  // namespace attn

template <typename T>
int LaunchFlashAttention(const FlashAttentionArgs<T>& args, void* stream) {
  using namespace attn;  // NOLINT(build/namespaces)
  if (int err = ValidateParams(args.p)) return err;
  if (args.p.batch * args.p.q_heads * args.p.q_len == 0) return 0;
  if (args.q == nullptr || args.o == nullptr || args.lse == nullptr ||
      (args.p.kv_len > 0 && (args.k == nullptr || args.v == nullptr))) {
    return kErrorInvalidArgument;
  }
  KParams<StoreT<T>> p = MakeParams<StoreT<T>>(args.p);
  p.q = Raw(args.q);
  p.k = Raw(args.k);
  p.v = Raw(args.v);
  p.key_mask = args.key_mask;
  p.mask = args.mask;
  p.out = Raw(args.o);
  p.lse_out = args.lse;
  const VecFlags vf{Vec16(args.q, p.D), Vec16(args.k, p.D), Vec16(args.v, p.Dv),
                    false};
  return LaunchKind<T>(0, args.p.variant, p, vf,
                       static_cast<cudaStream_t>(stream));
}

size_t FlashAttentionGradWorkspaceBytes(const AttentionParams& p) {
  return AlignUp(static_cast<size_t>(p.batch * p.q_heads * p.q_len) *
                 sizeof(float));
}

template <typename T>
int LaunchFlashAttentionGrad(const FlashAttentionGradArgs<T>& args,
                             void* workspace, void* stream) {
  using namespace attn;  // NOLINT(build/namespaces)
  if (int err = ValidateParams(args.p)) return err;
  const AttentionParams& a = args.p;
  const int64_t rows = a.batch * a.q_heads * a.q_len;
  if (rows > 0 &&
      (args.d_o == nullptr || args.q == nullptr || args.o == nullptr ||
       args.lse == nullptr || args.dq == nullptr || workspace == nullptr)) {
    return kErrorInvalidArgument;
  }
  if (a.batch * a.kv_heads * a.kv_len > 0 &&
      (args.k == nullptr || args.v == nullptr || args.dk == nullptr ||
       args.dv == nullptr)) {
    return kErrorInvalidArgument;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  float* delta = static_cast<float*>(workspace);
  if (rows > 0) {
    const int warps_per_block = 8;
    DeltaKernel<NativeT<T>><<<GridSize(rows, warps_per_block), 256, 0, s>>>(
        AsNative(args.d_o), AsNative(args.o), delta, a.batch, a.q_len,
        a.q_heads, a.value_dim);
    KBM_RETURN_IF_LAUNCH_ERROR();
  }
  KParams<StoreT<T>> p = MakeParams<StoreT<T>>(a);
  p.q = Raw(args.q);
  p.k = Raw(args.k);
  p.v = Raw(args.v);
  p.d_o = Raw(args.d_o);
  p.o = Raw(args.o);
  p.key_mask = args.key_mask;
  p.mask = args.mask;
  p.lse_in = args.lse;
  p.delta = delta;
  p.dq = Raw(args.dq);
  p.dk = Raw(args.dk);
  p.dv = Raw(args.dv);
  const VecFlags vf{Vec16(args.q, p.D), Vec16(args.k, p.D), Vec16(args.v, p.Dv),
                    Vec16(args.d_o, p.Dv)};
  if (int err = LaunchKind<T>(2, a.variant, p, vf, s)) return err;
  return LaunchKind<T>(1, a.variant, p, vf, s);
}

int LaunchAttentionDropoutMask(uint64_t seed0, uint64_t seed1, int64_t batch,
                               int64_t heads, int64_t q_len, int64_t kv_len,
                               float rate, bool* keep, void* stream) {
  if (batch < 0 || heads < 0 || q_len < 0 || kv_len < 0 ||
      !(rate >= 0.0f && rate < 1.0f)) {
    return kErrorInvalidArgument;
  }
  const int64_t n = batch * heads * q_len * kv_len;
  if (n == 0) return 0;
  if (keep == nullptr) return kErrorInvalidArgument;
  attn::DropoutMaskKernel<<<GridSize(n, 256), 256, 0,
                            static_cast<cudaStream_t>(stream)>>>(
      seed0, seed1, n, kbm_philox::DropoutThreshold(rate), keep);
  KBM_RETURN_IF_LAUNCH_ERROR();
  return 0;
}

#define KBM_INSTANTIATE_ATTENTION(T)                                         \
  template int LaunchFlashAttention<T>(const FlashAttentionArgs<T>&, void*); \
  template int LaunchFlashAttentionGrad<T>(const FlashAttentionGradArgs<T>&, \
                                           void*, void*);
KBM_INSTANTIATE_ATTENTION(float)
KBM_INSTANTIATE_ATTENTION(Half)
KBM_INSTANTIATE_ATTENTION(BFloat16)
#undef KBM_INSTANTIATE_ATTENTION

}  // namespace gpu
}  // namespace kbm
