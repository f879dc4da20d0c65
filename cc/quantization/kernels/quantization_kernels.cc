// CPU kernels of Kbm>QuantizedMatMul (W8A8) and Kbm>WeightOnlyMatMul.
//
// W8A8: the rows of x are widened to float32 and quantized per row into a
// temporary int8 matrix (one pass over x, threaded over rows), then tiles of
// rows x column panels run the exact int32 micro-kernel with the fused
// epilogue (threaded over tiles; a thread's consecutive tiles share their
// column panels, so those weights stay in cache). Weight-only: x is widened
// and zero padded once (int4: also reordered, see WeightOnlyProblem::xd),
// then the weight panels run on the calling thread, or split over threads
// when the work is large enough to pay for the hand-off.
// Outputs in half/bfloat16 go through a float32 buffer.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/common/cpu_isa.h"
#include "cc/common/kernel_utils.h"
#include "cc/quantization/kernels/quantization.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace kbm {
namespace {

const QuantizationKernels& Kernels() {
#ifdef KBM_HAVE_AVX2_VARIANT
  if (ActiveIsa() == Isa::kAvx512Vnni) {
    return avx512vnni::kQuantizationKernels;
  }
  return SelectIsa(avx::kQuantizationKernels, avx2::kQuantizationKernels);
#else
  return avx::kQuantizationKernels;
#endif
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

absl::Status ParseActivation(const std::string& name, QuantActivation* act) {
  if (name == "linear") {
    *act = QuantActivation::kLinear;
  } else if (name == "relu") {
    *act = QuantActivation::kRelu;
  } else if (name == "gelu") {
    *act = QuantActivation::kGelu;
  } else if (name == "gelu_tanh") {
    *act = QuantActivation::kGeluTanh;
  } else {
    return errors::InvalidArgument(
        "activation must be one of linear, relu, gelu, gelu_tanh, got '", name,
        "'");
  }
  return absl::OkStatus();
}

// The fused epilogue's attributes, shared by both ops: `activation`, and
// `output_dtype` (float32 or x's dtype, `x_dtype`).
absl::Status GetEpilogueAttrs(OpKernelConstruction* ctx, DataType x_dtype,
                              QuantActivation* act, DataType* out_dtype) {
  std::string name;
  TF_RETURN_IF_ERROR(ctx->GetAttr("activation", &name));
  TF_RETURN_IF_ERROR(ParseActivation(name, act));
  TF_RETURN_IF_ERROR(ctx->GetAttr("output_dtype", out_dtype));
  if (*out_dtype != DT_FLOAT && *out_dtype != x_dtype) {
    return errors::InvalidArgument(
        "output_dtype must be float32 or the dtype of x (",
        DataTypeString(x_dtype), "), got ", DataTypeString(*out_dtype));
  }
  return absl::OkStatus();
}

// Checks shared by both ops. Sets k, n and rows (the product of x's leading
// dimensions).
absl::Status CheckCommon(const Tensor& x, const Tensor& packed,
                         const Tensor& scale, const Tensor& bias,
                         int64_t k_bytes_per_k_num, int64_t k_bytes_per_k_den,
                         int64_t* k, int64_t* n, int64_t* rows) {
  if (x.dims() < 1) {
    return errors::InvalidArgument("x must have rank >= 1, got shape ",
                                   ShapeString(x));
  }
  if (scale.dims() < 1 || scale.dims() > 2) {
    return errors::InvalidArgument(
        "kernel_scale must have shape [N] or [groups, N], got shape ",
        ShapeString(scale));
  }
  *k = x.dim_size(x.dims() - 1);
  *n = scale.dim_size(scale.dims() - 1);
  *rows = 1;
  for (int i = 0; i + 1 < x.dims(); ++i) *rows *= x.dim_size(i);
  const int64_t k_bytes = *k * k_bytes_per_k_num / k_bytes_per_k_den;
  if (packed.dims() != 4 || packed.dim_size(0) != CeilDiv(*n, kQuantPanelN) ||
      packed.dim_size(1) != CeilDiv(k_bytes, kQuantPanelK) ||
      packed.dim_size(2) != kQuantPanelN ||
      packed.dim_size(3) != kQuantPanelK) {
    return errors::InvalidArgument(
        "kernel_q must have shape [", CeilDiv(*n, kQuantPanelN), ", ",
        CeilDiv(k_bytes, kQuantPanelK), ", ", kQuantPanelN, ", ", kQuantPanelK,
        "] for K=", *k, " (the last dimension of x) and N=", *n,
        " (the last dimension of kernel_scale), got shape ",
        ShapeString(packed));
  }
  if (bias.NumElements() != 0 && (bias.dims() != 1 || bias.dim_size(0) != *n)) {
    return errors::InvalidArgument("bias must have shape [", *n,
                                   "] (N) or be empty, got shape ",
                                   ShapeString(bias));
  }
  return absl::OkStatus();
}

TensorShape OutputShape(const Tensor& x, int64_t n) {
  TensorShape s = x.shape();
  s.set_dim(s.dims() - 1, n);
  return s;
}

// `v` zero padded to `padded` values (for whole-panel vector loads).
std::vector<float> Padded(const float* v, int64_t len, int64_t padded) {
  std::vector<float> out(padded, 0.f);
  std::copy(v, v + len, out.begin());
  return out;
}

// Copies the float32 result into an output of type O (no-op for float).
template <typename O>
void Narrow(OpKernelContext* ctx, const float* src, O* dst, int64_t count) {
  if constexpr (!std::is_same_v<O, float>) {
    ParallelFor(ctx, count, 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = static_cast<O>(src[i]);
    });
  }
}

template <typename T>
class QuantizedMatMulOp : public OpKernel {
 public:
  explicit QuantizedMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(
        ctx, GetEpilogueAttrs(ctx, DataTypeToEnum<T>::v(), &act_, &out_dtype_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& packed = ctx->input(1);
    const Tensor& scale = ctx->input(2);
    const Tensor& bias = ctx->input(3);
    OP_REQUIRES(ctx, scale.dims() == 1,
                errors::InvalidArgument(
                    "kernel_scale must have shape [N] (one scale per output "
                    "channel), got shape ",
                    ShapeString(scale)));
    int64_t k = 0, n = 0, rows = 0;
    OP_REQUIRES_OK(ctx,
                   CheckCommon(x, packed, scale, bias, 1, 1, &k, &n, &rows));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, OutputShape(x, n), &y));
    if (rows == 0 || n == 0) return;
    const int64_t kb = packed.dim_size(1);
    const int64_t kp = kb * kQuantPanelK;
    const int64_t panels = packed.dim_size(0);

    Tensor qx_t, sx_t, finite_t, out_t;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_temp(DT_INT8, TensorShape({rows, kp}), &qx_t));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_temp(DT_FLOAT, TensorShape({rows}), &sx_t));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_temp(DT_UINT8, TensorShape({rows}), &finite_t));
    int8_t* qx = qx_t.flat<int8_t>().data();
    float* sx = sx_t.flat<float>().data();
    uint8_t* finite = finite_t.flat<uint8_t>().data();
    const QuantizationKernels& kern = Kernels();

    const T* px = x.flat<T>().data();
    const auto quantize = [&](int64_t begin, int64_t end) {
      FloatRows<T> io(k, 1);
      for (int64_t r = begin; r < end; ++r) {
        finite[r] =
            kern.quantize_row(io.In(px + r * k, 0), k, kp, qx + r * kp, sx + r);
      }
    };
    // Up to 2^18 values (tens of microseconds) the hand-off to the pool
    // costs more than it saves.
    if (rows * k <= (int64_t{1} << 18)) {
      quantize(0, rows);
    } else {
      ParallelFor(ctx, rows, 6 * k + 16, quantize);
    }

    const std::vector<float> scale_p =
        Padded(scale.flat<float>().data(), n, panels * kQuantPanelN);
    std::vector<float> bias_p;
    if (bias.NumElements() > 0) {
      bias_p = Padded(bias.flat<float>().data(), n, panels * kQuantPanelN);
    }
    float* out = nullptr;
    if (out_dtype_ == DT_FLOAT) {
      out = y->flat<float>().data();
    } else {
      OP_REQUIRES_OK(
          ctx, ctx->allocate_temp(DT_FLOAT, TensorShape({rows, n}), &out_t));
      out = out_t.flat<float>().data();
    }
    W8A8Problem p{qx,
                  sx,
                  finite,
                  packed.flat<int8_t>().data(),
                  scale_p.data(),
                  bias_p.empty() ? nullptr : bias_p.data(),
                  kb,
                  n,
                  act_,
                  out,
                  n};
    // Tiles of up to 64 rows x 8 panels (64 channels); tile index =
    // column tile * row tiles + row tile.
    constexpr int64_t kTileRows = 64, kTilePanels = 8;
    const int64_t row_tiles = CeilDiv(rows, kTileRows);
    const int64_t col_tiles = CeilDiv(panels, kTilePanels);
    const int64_t tile_cost =
        std::min(rows, kTileRows) * kTilePanels * kQuantPanelN * (kp / 8 + 8);
    ParallelFor(ctx, row_tiles * col_tiles, tile_cost,
                [&](int64_t begin, int64_t end) {
                  for (int64_t t = begin; t < end; ++t) {
                    const int64_t ct = t / row_tiles, rt = t % row_tiles;
                    const int64_t r0 = rt * kTileRows;
                    const int64_t p0 = ct * kTilePanels;
                    kern.w8a8(p, r0, std::min(rows, r0 + kTileRows), p0,
                              std::min(panels, p0 + kTilePanels));
                  }
                });
    if (out_dtype_ != DT_FLOAT) {
      Narrow<T>(ctx, out, y->flat<T>().data(), rows * n);
    }
  }

 private:
  QuantActivation act_;
  DataType out_dtype_;
};

template <typename T>
class WeightOnlyMatMulOp : public OpKernel {
 public:
  explicit WeightOnlyMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(
        ctx, GetEpilogueAttrs(ctx, DataTypeToEnum<T>::v(), &act_, &out_dtype_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("group_size", &group_size_));
    OP_REQUIRES(ctx, bits_ == 8 || bits_ == 4,
                errors::InvalidArgument("bits must be 8 or 4, got ", bits_));
    OP_REQUIRES(ctx, group_size_ >= 0,
                errors::InvalidArgument(
                    "group_size must be >= 0 (0: one scale per channel), got ",
                    group_size_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& packed = ctx->input(1);
    const Tensor& scale = ctx->input(2);
    const Tensor& bias = ctx->input(3);
    const int64_t k_in = x.dims() >= 1 ? x.dim_size(x.dims() - 1) : 0;
    OP_REQUIRES(ctx, bits_ == 8 || k_in % 2 == 0,
                errors::InvalidArgument(
                    "int4 weights need an even K (the last dimension of x), "
                    "got K=",
                    k_in));
    int64_t k = 0, n = 0, rows = 0;
    OP_REQUIRES_OK(ctx, CheckCommon(x, packed, scale, bias, bits_ == 8 ? 1 : 1,
                                    bits_ == 8 ? 1 : 2, &k, &n, &rows));
    int64_t groups = 1, group_size = std::max<int64_t>(k, 1);
    if (scale.dims() == 2) {
      OP_REQUIRES(
          ctx, group_size_ > 0,
          errors::InvalidArgument("kernel_scale is grouped (shape ",
                                  ShapeString(scale), ") but group_size is 0"));
      OP_REQUIRES(ctx, k % group_size_ == 0,
                  errors::InvalidArgument("group_size must divide K=", k,
                                          ", got group_size=", group_size_));
      OP_REQUIRES(ctx, scale.dim_size(0) * group_size_ == k,
                  errors::InvalidArgument("kernel_scale must have shape [",
                                          k / group_size_, ", ", n,
                                          "] (K / group_size, N), got shape ",
                                          ShapeString(scale)));
      groups = scale.dim_size(0);
      group_size = group_size_;
    } else {
      OP_REQUIRES(ctx, group_size_ == 0,
                  errors::InvalidArgument(
                      "kernel_scale has one scale per channel (shape ",
                      ShapeString(scale), ") but group_size=", group_size_));
      OP_REQUIRES(ctx, bits_ == 8,
                  errors::InvalidArgument(
                      "int4 weights need grouped scales [K / group_size, N], "
                      "got kernel_scale shape ",
                      ShapeString(scale)));
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, OutputShape(x, n), &y));
    if (rows == 0 || n == 0) return;
    const int64_t kb = packed.dim_size(1);
    const int64_t panels = packed.dim_size(0);
    const int64_t np = panels * kQuantPanelN;
    const int64_t ldx = kb * kQuantPanelK * (bits_ == 8 ? 1 : 2);

    // Widened, zero padded rows of x; the scale row of every K value.
    // int4 also gets the rows with each 8 values along K (one packed block)
    // reordered as the 4 even then the 4 odd ones (WeightOnlyProblem::xd).
    const int64_t copies = bits_ == 4 ? 2 : 1;
    Tensor x_t, out_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(
                            DT_FLOAT, TensorShape({copies, rows, ldx}), &x_t));
    float* xf = x_t.flat<float>().data();
    float* xd = bits_ == 4 ? xf + rows * ldx : nullptr;
    const T* px = x.flat<T>().data();
    ParallelFor(ctx, rows, copies * ldx + 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* row = xf + r * ldx;
        for (int64_t j = 0; j < k; ++j) {
          row[j] = static_cast<float>(px[r * k + j]);
        }
        std::fill(row + k, row + ldx, 0.f);
        if (xd == nullptr) continue;
        float* d = xd + r * ldx;
        for (int64_t j = 0; j < ldx; j += 8) {
          for (int64_t i = 0; i < 4; ++i) {
            d[j + i] = row[j + 2 * i];
            d[j + 4 + i] = row[j + 2 * i + 1];
          }
        }
      }
    });
    std::vector<int64_t> scale_row(ldx);
    for (int64_t j = 0; j < ldx; ++j) {
      scale_row[j] = std::min(j / group_size, groups - 1) * np;
    }
    // Scales and bias padded to whole panels (copies only when N is not a
    // multiple of the panel width).
    const float* ps = scale.flat<float>().data();
    std::vector<float> scale_p;
    if (np != n) {
      scale_p.assign(groups * np, 0.f);
      for (int64_t g = 0; g < groups; ++g) {
        std::copy(ps + g * n, ps + (g + 1) * n, scale_p.begin() + g * np);
      }
      ps = scale_p.data();
    }
    const float* pb = nullptr;
    std::vector<float> bias_p;
    if (bias.NumElements() > 0) {
      pb = bias.flat<float>().data();
      if (np != n) {
        bias_p = Padded(pb, n, np);
        pb = bias_p.data();
      }
    }
    float* out = nullptr;
    if (out_dtype_ == DT_FLOAT) {
      out = y->flat<float>().data();
    } else {
      OP_REQUIRES_OK(
          ctx, ctx->allocate_temp(DT_FLOAT, TensorShape({rows, n}), &out_t));
      out = out_t.flat<float>().data();
    }
    WeightOnlyProblem p{xf,
                        rows,
                        ldx,
                        packed.flat<int8_t>().data(),
                        kb,
                        bits_,
                        ps,
                        scale_row.data(),
                        pb,
                        n,
                        act_,
                        out,
                        n,
                        /*group_blocks=*/0,
                        xd};
    const int64_t values_per_block = kQuantPanelK * (bits_ == 8 ? 1 : 2);
    if (scale.dims() == 1) {
      p.group_blocks = kb;
    } else if (group_size % values_per_block == 0) {
      p.group_blocks = group_size / values_per_block;
    }
    const QuantizationKernels& kern = Kernels();
    // Units of 4 panels (the kernels' panel chunk). Work = weights x
    // (rows + 4). At K x N = 768 x 3072, one thread of the avx512vnni
    // variant takes 36 us for 1 row (12M work) and 190 us for 8 rows (28M),
    // and handing half of the panels to the pool costs 15-25 us on a quiet
    // machine (more, and erratically, on a loaded one). Up to 2^24 work the
    // calling thread runs everything; above, the panels are split over the
    // pool (8 rows: about 130 us on two threads).
    constexpr int64_t kUnitPanels = 4;
    constexpr int64_t kInlineWork = int64_t{1} << 24;
    const int64_t units = CeilDiv(panels, kUnitPanels);
    const int64_t unit_work = ldx * kUnitPanels * kQuantPanelN * (rows + 4);
    if (units * unit_work <= kInlineWork) {
      kern.weight_only(p, 0, panels);
    } else {
      ParallelFor(ctx, units, unit_work, [&](int64_t begin, int64_t end) {
        kern.weight_only(p, begin * kUnitPanels,
                         std::min(panels, end * kUnitPanels));
      });
    }
    if (out_dtype_ != DT_FLOAT) {
      Narrow<T>(ctx, out, y->flat<T>().data(), rows * n);
    }
  }

 private:
  QuantActivation act_;
  DataType out_dtype_;
  int bits_;
  int group_size_;
};

#define KBM_REGISTER_QUANTIZATION(T)                                          \
  REGISTER_KERNEL_BUILDER(                                                    \
      Name("Kbm>QuantizedMatMul").Device(DEVICE_CPU).TypeConstraint<T>("T"),  \
      QuantizedMatMulOp<T>);                                                  \
  REGISTER_KERNEL_BUILDER(                                                    \
      Name("Kbm>WeightOnlyMatMul").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      WeightOnlyMatMulOp<T>);

KBM_REGISTER_QUANTIZATION(Eigen::half)
KBM_REGISTER_QUANTIZATION(Eigen::bfloat16)
KBM_REGISTER_QUANTIZATION(float)

#undef KBM_REGISTER_QUANTIZATION

}  // namespace
}  // namespace kbm
}  // namespace tensorflow
