// Tensor-core flash-attention kernels for bfloat16 (see attention_gpu_mma.cuh).
#include "cc/attention/kernels/attention_gpu_mma_fast.cuh"

namespace kbm {
namespace gpu {
namespace attn {

int LaunchMmaBf16(int kind, int pad, int variant, const KParams<uint16_t>& p,
                  const VecFlags& vf, cudaStream_t stream) {
  return LaunchMma<true>(kind, pad, variant, p, vf, stream);
}

}  // namespace attn
}  // namespace gpu
}  // namespace kbm
