// CPU kernels of Kbm>FlashAttention, Kbm>FlashAttentionGrad and
// Kbm>AttentionDropoutMask.
//
// float32 runs the SIMD tiles of the active variant (attention_simd.cc);
// half and bfloat16 are widened to float32 buffers first and narrowed at the
// end; float64 runs the same tiled algorithm with scalar math. Forward units
// (batch, query head, query tile) and backward units (batch, kv head, chunk
// of key tiles) are spread over the intra-op thread pool.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/attention/kernels/attention.h"
#include "cc/attention/kernels/attention_checks.h"
#include "cc/attention/kernels/attention_tiles.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "cc/common/philox.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const AttentionKernels& SimdKernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  if (ActiveIsa() == Isa::kAvx512Vnni) return avx512vnni::kAttentionKernels;
  return SelectIsa(avx::kAttentionKernels, avx2::kAttentionKernels);
#else
  return avx::kAttentionKernels;
#endif
}

// Validates the inputs and attributes (attention_checks.h, shared with the
// GPU kernels); fills the CPU kernel's shape.
absl::Status ReadShape(const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& key_mask, const Tensor& mask,
                       const Tensor& seed, float scale, bool causal,
                       bool top_left, float rate, AttentionShape* s) {
  ::kbm::gpu::AttentionParams p;
  TF_RETURN_IF_ERROR(ReadAttentionParams(q, k, v, key_mask, mask, seed, scale,
                                         causal, top_left, rate, &p));
  s->batch = p.batch;
  s->q_len = p.q_len;
  s->q_heads = p.q_heads;
  s->head_dim = p.head_dim;
  s->kv_len = p.kv_len;
  s->kv_heads = p.kv_heads;
  s->value_dim = p.value_dim;
  s->scale = p.scale;
  s->causal = p.causal;
  s->causal_offset = top_left ? 0 : s->kv_len - s->q_len;
  if (mask.NumElements() != 0) {
    s->mask_batch_stride = p.mask_batch == 1 ? 0 : s->q_len * s->kv_len;
  }
  if (rate > 0.f) {
    s->dropout = true;
    s->dropout_threshold = kbm_philox::DropoutThreshold(rate);
    s->dropout_scale = 1.0 / (1.0 - static_cast<double>(rate));
    s->seed0 = p.seed0;
    s->seed1 = p.seed1;
  }
  return absl::OkStatus();
}

const bool* MaskData(const Tensor& mask) {
  return mask.NumElements() ? mask.flat<bool>().data() : nullptr;
}

// Classifies the blocks of the dense mask (see kMaskAll); nullptr without
// a mask.
absl::Status ClassifyMask(OpKernelContext* ctx, const AttentionShape& s,
                          const Tensor& mask, Tensor* tiles_t,
                          const uint8_t** tiles) {
  *tiles = nullptr;
  if (mask.NumElements() == 0) return absl::OkStatus();
  const int64_t units =
      mask.dim_size(0) * AttnNumQueryTiles(s) * AttnNumKeyTiles(s);
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(DT_UINT8, TensorShape({units}), tiles_t));
  uint8_t* out = tiles_t->flat<uint8_t>().data();
  const bool* data = mask.flat<bool>().data();
  ParallelFor(ctx, units, kAttnQueryTile * kAttnKeyTile,
              [&](int64_t begin, int64_t end) {
                for (int64_t u = begin; u < end; ++u) {
                  ClassifyMaskTile(s, data, out, u);
                }
              });
  *tiles = out;
  return absl::OkStatus();
}

// The element type the tiles compute in.
template <typename T>
using ComputeT = std::conditional_t<std::is_same_v<T, double>, double, float>;

// A float view of a T tensor: the tensor itself for float/double, else a
// widened copy.
template <typename T>
class Widened {
 public:
  using F = ComputeT<T>;
  absl::Status Init(OpKernelContext* ctx, const Tensor& t) {
    if constexpr (std::is_same_v<T, F>) {
      data_ = t.flat<F>().data();
      return absl::OkStatus();
    } else {
      TF_RETURN_IF_ERROR(
          ctx->allocate_temp(DataTypeToEnum<F>::value, t.shape(), &copy_));
      copy_.flat<F>() = t.flat<T>().template cast<F>();
      data_ = copy_.flat<F>().data();
      return absl::OkStatus();
    }
  }
  const F* data() const { return data_; }

 private:
  Tensor copy_;
  const F* data_ = nullptr;
};

// An output of type T written through an F buffer (itself when T == F).
template <typename T>
class Narrowed {
 public:
  using F = ComputeT<T>;
  absl::Status Init(OpKernelContext* ctx, Tensor* out) {
    out_ = out;
    if constexpr (std::is_same_v<T, F>) {
      data_ = out->flat<F>().data();
      return absl::OkStatus();
    } else {
      TF_RETURN_IF_ERROR(
          ctx->allocate_temp(DataTypeToEnum<F>::value, out->shape(), &buf_));
      data_ = buf_.flat<F>().data();
      return absl::OkStatus();
    }
  }
  F* data() { return data_; }
  void Commit() {
    if constexpr (!std::is_same_v<T, F>) {
      out_->flat<T>() = buf_.flat<F>().template cast<T>();
    }
  }

 private:
  Tensor* out_ = nullptr;
  Tensor buf_;
  F* data_ = nullptr;
};

// A temp buffer of n elements of F.
template <typename F>
absl::Status TempBuffer(OpKernelContext* ctx, int64_t n, Tensor* t, F** p) {
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(DataTypeToEnum<F>::value, TensorShape({n}), t));
  *p = t->flat<F>().data();
  return absl::OkStatus();
}

// Packs the key/value tiles (in parallel). `kt`, `k`, `v`, `vt` say which
// layouts to build.
template <typename F>
struct KVPacker {
  Tensor kt_t, k_t, v_t, vt_t, bias_t, flags_t;
  PackedKV<F> kv;

  absl::Status Run(OpKernelContext* ctx, const AttentionShape& s, const F* kin,
                   const F* vin, const bool* key_mask, bool want_kt,
                   bool want_k, bool want_v, bool want_vt) {
    const AttnDims d(s);
    const int64_t tiles = s.batch * s.kv_heads * d.n_kt;
    if (want_kt)
      TF_RETURN_IF_ERROR(TempBuffer(ctx, tiles * d.KtSize(), &kt_t, &kv.kt));
    if (want_k)
      TF_RETURN_IF_ERROR(TempBuffer(ctx, tiles * d.KSize(), &k_t, &kv.k));
    if (want_v)
      TF_RETURN_IF_ERROR(TempBuffer(ctx, tiles * d.VSize(), &v_t, &kv.v));
    if (want_vt)
      TF_RETURN_IF_ERROR(TempBuffer(ctx, tiles * d.VtSize(), &vt_t, &kv.vt));
    TF_RETURN_IF_ERROR(
        TempBuffer(ctx, s.batch * d.n_kt * kKT, &bias_t, &kv.key_bias));
    TF_RETURN_IF_ERROR(TempBuffer(ctx, std::max<int64_t>(1, s.batch * d.n_kt),
                                  &flags_t, &kv.has_masked_key));
    ParallelFor(ctx, tiles, kKT * (d.D + d.Dv) * 4,
                [&](int64_t begin, int64_t end) {
                  for (int64_t u = begin; u < end; ++u) {
                    PackKeyTile<F>(s, kin, vin, key_mask, kv, u);
                  }
                });
    return absl::OkStatus();
  }
};

// Approximate cycles of one unit, for the thread pool.
int64_t UnitCost(const AttentionShape& s, int64_t rows, int64_t keys) {
  return std::max<int64_t>(1, rows * keys * (s.head_dim + s.value_dim) / 4);
}

// One forward unit (batch, query head, query tile): SIMD for float, scalar
// for double.
template <typename F>
void ForwardUnit(const AttentionShape& s, const PackedKV<F>& kv,
                 const AttentionForwardIO<F>& io, int64_t unit) {
  if constexpr (std::is_same_v<F, double>) {
    AttentionForwardUnit<double, ScalarAttentionMath<double>>(s, kv, io, unit);
  } else {
    SimdKernels().forward_unit(s, kv, io, unit);
  }
}

// The backward pass's P = exp(S - shift) * inv_sum (AttentionBackwardIO).
// shift is lse and inv_sum null, except for rows whose |lse| is beyond
// kLseExactLimit: their max m and sum l are recomputed by statistics-only
// forward units (stats holds the forward inputs), and shift = m, inv_sum =
// 1 / l there. Ordinary rows cost one scan of lse and no memory.
template <typename F>
struct ExactRows {
  Tensor shift_t, inv_t, max_t, sum_t;

  absl::Status Run(OpKernelContext* ctx, const AttentionShape& s,
                   const PackedKV<F>& kv, AttentionForwardIO<F> stats,
                   AttentionBackwardIO<F>* io) {
    io->shift = io->lse;
    io->inv_sum = nullptr;
    const int64_t n = s.batch * s.q_heads * s.q_len;
    const int64_t n_qt = AttnNumQueryTiles(s);
    const F* lse = io->lse;
    auto inexact = [lse](int64_t i) {
      return std::isfinite(lse[i]) && std::abs(lse[i]) > kLseExactLimit<F>;
    };
    std::vector<int64_t> units;  // (b, h, query tile), as forward units.
    for (int64_t i = 0; i < n; ++i) {
      if (!inexact(i)) continue;
      const int64_t u = i / s.q_len * n_qt + i % s.q_len / kAttnQueryTile;
      if (units.empty() || units.back() != u) units.push_back(u);
    }
    if (units.empty()) return absl::OkStatus();
    F *shift, *inv;
    TF_RETURN_IF_ERROR(TempBuffer(ctx, n, &shift_t, &shift));
    TF_RETURN_IF_ERROR(TempBuffer(ctx, n, &inv_t, &inv));
    TF_RETURN_IF_ERROR(TempBuffer(ctx, n, &max_t, &stats.row_max));
    TF_RETURN_IF_ERROR(TempBuffer(ctx, n, &sum_t, &stats.row_sum));
    stats.o = nullptr;
    stats.lse = nullptr;
    ParallelFor(ctx, static_cast<int64_t>(units.size()),
                UnitCost(s, kAttnQueryTile, s.kv_len),
                [&](int64_t begin, int64_t end) {
                  for (int64_t i = begin; i < end; ++i) {
                    ForwardUnit<F>(s, kv, stats, units[i]);
                  }
                });
    for (int64_t i = 0; i < n; ++i) {
      const bool redo = inexact(i);
      shift[i] = redo ? stats.row_max[i] : lse[i];
      inv[i] = redo ? F(1) / stats.row_sum[i] : F(1);
    }
    io->shift = shift;
    io->inv_sum = inv;
    return absl::OkStatus();
  }
};

template <typename T, typename U>
class FlashAttentionOp : public OpKernel {
 public:
  using F = ComputeT<T>;
  static_assert(std::is_same_v<U, F>, "lse has the compute type");

  explicit FlashAttentionOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal", &causal_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal_top_left", &top_left_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dropout_rate", &rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& k = ctx->input(1);
    const Tensor& v = ctx->input(2);
    const Tensor& key_mask = ctx->input(3);
    const Tensor& dense_mask = ctx->input(4);
    const Tensor& seed = ctx->input(5);
    AttentionShape s;
    OP_REQUIRES_OK(ctx, ReadShape(q, k, v, key_mask, dense_mask, seed, scale_,
                                  causal_, top_left_, rate_, &s));
    Tensor* o = nullptr;
    Tensor* lse = nullptr;
    OP_REQUIRES_OK(
        ctx,
        ctx->allocate_output(
            0, TensorShape({s.batch, s.q_len, s.q_heads, s.value_dim}), &o));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(1, TensorShape({s.batch, s.q_heads, s.q_len}),
                                  &lse));
    if (o->NumElements() == 0 && lse->NumElements() == 0) return;
    Widened<T> wq, wk, wv;
    OP_REQUIRES_OK(ctx, wq.Init(ctx, q));
    OP_REQUIRES_OK(ctx, wk.Init(ctx, k));
    OP_REQUIRES_OK(ctx, wv.Init(ctx, v));
    Narrowed<T> out;
    OP_REQUIRES_OK(ctx, out.Init(ctx, o));
    const bool* mask =
        key_mask.NumElements() ? key_mask.flat<bool>().data() : nullptr;
    KVPacker<F> packer;
    OP_REQUIRES_OK(ctx, packer.Run(ctx, s, wk.data(), wv.data(), mask, true,
                                   false, true, false));
    Tensor tiles_t;
    const uint8_t* tiles = nullptr;
    OP_REQUIRES_OK(ctx, ClassifyMask(ctx, s, dense_mask, &tiles_t, &tiles));
    AttentionForwardIO<F> io{wq.data(),
                             wk.data(),
                             wv.data(),
                             mask,
                             MaskData(dense_mask),
                             tiles,
                             out.data(),
                             lse->flat<F>().data()};
    const int64_t units = s.batch * s.q_heads * AttnNumQueryTiles(s);
    ParallelFor(ctx, units, UnitCost(s, kAttnQueryTile, s.kv_len),
                [&](int64_t begin, int64_t end) {
                  for (int64_t u = begin; u < end; ++u) {
                    ForwardUnit<F>(s, packer.kv, io, u);
                  }
                });
    out.Commit();
  }

 private:
  float scale_;
  bool causal_;
  bool top_left_;
  float rate_;
};

template <typename T, typename U>
class FlashAttentionGradOp : public OpKernel {
 public:
  using F = ComputeT<T>;
  static_assert(std::is_same_v<U, F>, "lse has the compute type");

  explicit FlashAttentionGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal", &causal_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("causal_top_left", &top_left_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dropout_rate", &rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& d_o = ctx->input(0);
    const Tensor& q = ctx->input(1);
    const Tensor& k = ctx->input(2);
    const Tensor& v = ctx->input(3);
    const Tensor& key_mask = ctx->input(4);
    const Tensor& dense_mask = ctx->input(5);
    const Tensor& seed = ctx->input(6);
    const Tensor& o = ctx->input(7);
    const Tensor& lse = ctx->input(8);
    AttentionShape s;
    OP_REQUIRES_OK(ctx, ReadShape(q, k, v, key_mask, dense_mask, seed, scale_,
                                  causal_, top_left_, rate_, &s));
    OP_REQUIRES_OK(ctx, CheckGradShapes(d_o, o, lse, s.batch, s.q_len,
                                        s.q_heads, s.value_dim));
    Tensor* dq = nullptr;
    Tensor* dk = nullptr;
    Tensor* dv = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, q.shape(), &dq));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, k.shape(), &dk));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, v.shape(), &dv));
    if (dq->NumElements() == 0 && dk->NumElements() == 0 &&
        dv->NumElements() == 0) {
      return;
    }
    Widened<T> wq, wk, wv, wdo, wo;
    OP_REQUIRES_OK(ctx, wq.Init(ctx, q));
    OP_REQUIRES_OK(ctx, wk.Init(ctx, k));
    OP_REQUIRES_OK(ctx, wv.Init(ctx, v));
    OP_REQUIRES_OK(ctx, wdo.Init(ctx, d_o));
    OP_REQUIRES_OK(ctx, wo.Init(ctx, o));
    Narrowed<T> out_dk, out_dv;
    OP_REQUIRES_OK(ctx, out_dk.Init(ctx, dk));
    OP_REQUIRES_OK(ctx, out_dv.Init(ctx, dv));
    // Keys with no query (Tq == 0) get zero gradients from the units below,
    // which still run over every key tile.

    // delta = rowsum(dO * O), [B, Hq, Tq].
    Tensor delta;
    OP_REQUIRES_OK(
        ctx,
        ctx->allocate_temp(DataTypeToEnum<F>::value,
                           TensorShape({s.batch, s.q_heads, s.q_len}), &delta));
    F* pdelta = delta.flat<F>().data();
    const F* pdo = wdo.data();
    const F* po = wo.data();
    const int64_t rows = s.batch * s.q_len * s.q_heads;
    ParallelFor(ctx, rows, s.value_dim * 2, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t h = r % s.q_heads;
        const int64_t i = (r / s.q_heads) % s.q_len;
        const int64_t b = r / s.q_heads / s.q_len;
        F sum = 0;
        for (int64_t e = 0; e < s.value_dim; ++e) {
          sum += pdo[r * s.value_dim + e] * po[r * s.value_dim + e];
        }
        pdelta[(b * s.q_heads + h) * s.q_len + i] = sum;
      }
    });

    // Split the key tiles into chunks so that there are a few units per
    // thread even for one batch element and one kv head.
    const int64_t n_kt = AttnNumKeyTiles(s);
    const int64_t base_units = s.batch * s.kv_heads;
    const int64_t want = 2 * NumThreads(ctx);
    s.kv_chunks = std::max<int64_t>(
        1, std::min<int64_t>(n_kt, (want + base_units - 1) / base_units));
    const int64_t dp = AttnRoundUp(s.head_dim, kAttnCols);
    Tensor dq_partial;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_temp(
                 DataTypeToEnum<F>::value,
                 TensorShape({s.kv_chunks, s.batch, s.q_heads, s.q_len, dp}),
                 &dq_partial));
    dq_partial.flat<F>().setZero();
    F* pdq_part = dq_partial.flat<F>().data();
    const bool* mask =
        key_mask.NumElements() ? key_mask.flat<bool>().data() : nullptr;
    KVPacker<F> packer;
    OP_REQUIRES_OK(ctx, packer.Run(ctx, s, wk.data(), wv.data(), mask, true,
                                   true, false, true));
    const AttnDims d(s);
    const int64_t q_tiles = s.batch * s.q_heads * d.n_qt;
    Tensor qs_t, qst_t, do_t, dot_t;
    PackedQ<F> pq;
    OP_REQUIRES_OK(ctx, TempBuffer(ctx, q_tiles * d.QsSize(), &qs_t, &pq.qs));
    OP_REQUIRES_OK(ctx,
                   TempBuffer(ctx, q_tiles * d.QstSize(), &qst_t, &pq.qst));
    OP_REQUIRES_OK(ctx, TempBuffer(ctx, q_tiles * d.DoSize(), &do_t, &pq.d_o));
    OP_REQUIRES_OK(ctx,
                   TempBuffer(ctx, q_tiles * d.DotSize(), &dot_t, &pq.d_ot));
    ParallelFor(ctx, q_tiles, kQT * (d.D + d.Dv) * 4,
                [&](int64_t begin, int64_t end) {
                  for (int64_t u = begin; u < end; ++u) {
                    PackQueryTile<F>(s, wq.data(), pdo, pq, u);
                  }
                });
    Tensor tiles_t;
    const uint8_t* tiles = nullptr;
    OP_REQUIRES_OK(ctx, ClassifyMask(ctx, s, dense_mask, &tiles_t, &tiles));
    AttentionBackwardIO<F> io{wq.data(),
                              wk.data(),
                              wv.data(),
                              mask,
                              MaskData(dense_mask),
                              tiles,
                              pdo,
                              lse.flat<F>().data(),
                              nullptr,
                              nullptr,
                              pdelta,
                              pdq_part,
                              out_dk.data(),
                              out_dv.data()};
    ExactRows<F> exact;
    OP_REQUIRES_OK(ctx,
                   exact.Run(ctx, s, packer.kv,
                             {wq.data(), wk.data(), wv.data(), mask,
                              MaskData(dense_mask), tiles, nullptr, nullptr},
                             &io));
    const int64_t units = base_units * s.kv_chunks;
    const int64_t unit_keys =
        (n_kt + s.kv_chunks - 1) / s.kv_chunks * kAttnKeyTile;
    ParallelFor(
        ctx, units,
        3 * UnitCost(s, s.q_len * (s.q_heads / s.kv_heads), unit_keys),
        [&](int64_t begin, int64_t end) {
          for (int64_t u = begin; u < end; ++u) {
            if constexpr (std::is_same_v<F, double>) {
              AttentionBackwardUnit<double, ScalarAttentionMath<double>>(
                  s, packer.kv, pq, io, u);
            } else {
              SimdKernels().backward_unit(s, packer.kv, pq, io, u);
            }
          }
        });
    out_dk.Commit();
    out_dv.Commit();

    // dq = scale * sum over chunks, back to [B, Tq, Hq, D].
    Narrowed<T> out_dq;
    OP_REQUIRES_OK(ctx, out_dq.Init(ctx, dq));
    F* pdq = out_dq.data();
    const int64_t chunk_stride = s.batch * s.q_heads * s.q_len * dp;
    const F scale = s.scale;
    ParallelFor(
        ctx, rows, s.head_dim * s.kv_chunks, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const int64_t h = r % s.q_heads;
            const int64_t i = (r / s.q_heads) % s.q_len;
            const int64_t b = r / s.q_heads / s.q_len;
            const F* src = pdq_part + ((b * s.q_heads + h) * s.q_len + i) * dp;
            F* dst = pdq + r * s.head_dim;
            for (int64_t d = 0; d < s.head_dim; ++d) {
              F sum = 0;
              for (int64_t c = 0; c < s.kv_chunks; ++c) {
                sum += src[c * chunk_stride + d];
              }
              dst[d] = scale * sum;
            }
          }
        });
    out_dq.Commit();
  }

 private:
  float scale_;
  bool causal_;
  bool top_left_;
  float rate_;
};

// keep [B, H, Tq, Tk]: the dropout mask the attention kernels draw.
class AttentionDropoutMaskOp : public OpKernel {
 public:
  explicit AttentionDropoutMaskOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rate", &rate_));
    OP_REQUIRES_OK(ctx, CheckDropoutRate(rate_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seed = ctx->input(0);
    const Tensor& shape_t = ctx->input(1);
    uint64_t seed0 = 0, seed1 = 0;
    OP_REQUIRES_OK(ctx, ReadDropoutSeed(seed, &seed0, &seed1));
    OP_REQUIRES(ctx, shape_t.dims() == 1 && shape_t.NumElements() == 4,
                absl::InvalidArgumentError(absl::StrCat(
                    "shape must have shape [4] ([B, H, Tq, Tk]), got ",
                    ShapeString(shape_t))));
    TensorShape shape;
    for (int i = 0; i < 4; ++i) {
      const int64_t d = shape_t.flat<int64_t>()(i);
      OP_REQUIRES(ctx, d >= 0,
                  absl::InvalidArgumentError(absl::StrCat(
                      "shape must be non-negative, got ", d, " at ", i)));
      OP_REQUIRES_OK(ctx, shape.AddDimWithStatus(d));
    }
    Tensor* keep = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &keep));
    const uint32_t threshold = kbm_philox::DropoutThreshold(rate_);
    bool* out = keep->flat<bool>().data();
    const int64_t groups = (keep->NumElements() + 3) / 4;
    const int64_t n = keep->NumElements();
    ParallelFor(ctx, groups, 100, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const kbm_philox::Uint4 r = kbm_philox::DropoutGroup(seed0, seed1, g);
        for (int64_t c = 0; c < 4 && 4 * g + c < n; ++c) {
          out[4 * g + c] = kbm_philox::Pick(r, c) >= threshold;
        }
      }
    });
  }

 private:
  float rate_;
};

REGISTER_KERNEL_BUILDER(Name("Kbm>AttentionDropoutMask")
                            .Device(DEVICE_CPU)
                            .HostMemory("seed")
                            .HostMemory("shape"),
                        AttentionDropoutMaskOp);

#define KBM_REGISTER_ATTENTION(T, U)                     \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FlashAttention")     \
                              .Device(DEVICE_CPU)        \
                              .TypeConstraint<T>("T")    \
                              .TypeConstraint<U>("U"),   \
                          FlashAttentionOp<T, U>);       \
  REGISTER_KERNEL_BUILDER(Name("Kbm>FlashAttentionGrad") \
                              .Device(DEVICE_CPU)        \
                              .TypeConstraint<T>("T")    \
                              .TypeConstraint<U>("U"),   \
                          FlashAttentionGradOp<T, U>);

KBM_REGISTER_ATTENTION(Eigen::half, float)
KBM_REGISTER_ATTENTION(Eigen::bfloat16, float)
KBM_REGISTER_ATTENTION(float, float)
KBM_REGISTER_ATTENTION(double, double)

#undef KBM_REGISTER_ATTENTION

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
