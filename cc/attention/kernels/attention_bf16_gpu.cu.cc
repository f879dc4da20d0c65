// Tensor-core flash-attention kernels for bfloat16 (see attention_gpu_mma.cuh).
#include "cc/attention/kernels/attention_gpu_mma.cuh"

namespace kbm {
namespace gpu {
namespace attn {

int LaunchMmaBf16(int kind, int pad, const KParams<uint16_t>& p,
                 const VecFlags& vf, cudaStream_t stream) {
  return LaunchMma<true>(kind, pad, p, vf, stream);
}

}  // namespace attn
}  // namespace gpu
}  // namespace kbm
