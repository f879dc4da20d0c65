// Helpers shared by the CPU OpKernels of every op family.
#ifndef KERAS_BIGMODELS_CC_COMMON_KERNEL_UTILS_H_
#define KERAS_BIGMODELS_CC_COMMON_KERNEL_UTILS_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {
namespace kbm {

// Runs fn(begin, end) over [0, total) on the op's intra-op thread pool.
// `cost_per_unit` is an estimate of the cycles one unit takes; small inputs
// run inline on the calling thread.
inline void ParallelFor(OpKernelContext* ctx, int64_t total,
                        int64_t cost_per_unit,
                        const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(total, cost_per_unit, fn);
}

// Outputs at least this large are written with streaming stores: they do
// not fit in cache, so reading their lines before writing them is wasted.
inline bool UseStreamingStores(int64_t output_bytes) {
  return output_bytes >= (int64_t{16} << 20);
}

// Orders this thread's streaming stores before the kernel returns.
inline void StreamingStoreFence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

inline int NumThreads(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
}

// Splits `rows` into blocks for kernels that reduce over rows (e.g. the
// gradient of a per-column parameter): at least a few blocks per thread so
// the pool can balance them, and at most `max_rows_per_block` rows per block
// so float partial sums stay short.
inline int64_t NumRowBlocks(OpKernelContext* ctx, int64_t rows,
                            int64_t max_rows_per_block = 256) {
  if (rows <= 0) return 0;
  const int64_t by_threads = 4 * static_cast<int64_t>(NumThreads(ctx));
  const int64_t by_size = (rows + max_rows_per_block - 1) / max_rows_per_block;
  return std::min(rows, std::max(by_threads, by_size));
}

inline std::string ShapeString(const Tensor& t) {
  return t.shape().DebugString();
}

// The `rate` attribute of a dropout op (Kbm>Dropout, the attention-dropout
// mask): in [0, 1).
inline absl::Status CheckDropoutRate(float rate) {
  if (rate >= 0.f && rate < 1.f) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("rate must be in [0, 1), got ", rate));
}

// A dropout op's int64 [2] `seed` input (host memory), read as the key and
// counter words of the Philox stream (cc/common/philox.h).
inline absl::Status ReadDropoutSeed(const Tensor& seed, uint64_t* seed0,
                                    uint64_t* seed1) {
  if (seed.dims() != 1 || seed.NumElements() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("seed must have shape [2], got ", ShapeString(seed)));
  }
  *seed0 = static_cast<uint64_t>(seed.flat<int64_t>()(0));
  *seed1 = static_cast<uint64_t>(seed.flat<int64_t>()(1));
  return absl::OkStatus();
}

// The shape of `x` without its last dimension: per-row statistics.
inline TensorShape LeadingShape(const Tensor& x) {
  TensorShape s = x.shape();
  s.RemoveLastDims(1);
  return s;
}

// Widens rows of half/bfloat16 into a float buffer and back; a no-op view for
// float rows. One per thread-pool shard.
template <typename T>
class FloatRows {
 public:
  explicit FloatRows(int64_t c, int n_buffers) {
    if constexpr (!std::is_same_v<T, float>) buf_.resize(c * n_buffers);
    c_ = c;
  }
  // Returns a float view of `row`, copied into buffer `i` when T != float.
  const float* In(const T* row, int i) {
    if constexpr (std::is_same_v<T, float>) {
      return row;
    } else {
      float* b = buf_.data() + i * c_;
      for (int64_t j = 0; j < c_; ++j) b[j] = static_cast<float>(row[j]);
      return b;
    }
  }
  // Where to write a float result destined for `row`.
  float* Out(T* row, int i) {
    if constexpr (std::is_same_v<T, float>) {
      return row;
    } else {
      return buf_.data() + i * c_;
    }
  }
  // Narrows buffer `i` into `row` (no-op for float).
  void Commit(T* row, int i) {
    if constexpr (!std::is_same_v<T, float>) {
      const float* b = buf_.data() + i * c_;
      for (int64_t j = 0; j < c_; ++j) row[j] = static_cast<T>(b[j]);
    }
  }

 private:
  std::vector<float> buf_;
  int64_t c_;
};

// Sums the per-block partials [blocks, k, c] over blocks into k outputs of
// length c, accumulating in double.
template <typename P, typename O>
void ReducePartials(OpKernelContext* ctx, const P* partials, int64_t blocks,
                    int64_t k, int64_t c, const std::vector<O*>& outs) {
  ParallelFor(ctx, c, blocks * k * 2, [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = begin; j < end; ++j) {
        double s = 0;
        for (int64_t b = 0; b < blocks; ++b) {
          s += static_cast<double>(partials[(b * k + i) * c + j]);
        }
        outs[i][j] = static_cast<O>(s);
      }
    }
  });
}

// Rows [begin, end) of block b when `rows` rows are cut into `blocks` blocks.
inline std::pair<int64_t, int64_t> BlockRows(int64_t b, int64_t blocks,
                                             int64_t rows) {
  return {b * rows / blocks, (b + 1) * rows / blocks};
}

}  // namespace kbm
}  // namespace tensorflow

#endif  // KERAS_BIGMODELS_CC_COMMON_KERNEL_UTILS_H_
